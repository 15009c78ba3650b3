-- release.lua: end a lease held by the client. ARGV from A: secret, client_id, daemon_id
local secret, client, me = ARGV[A], ARGV[A + 1], ARGV[A + 2]

sweep()
local h, refused = owned(secret, client)
if not h then
  return finish(me, refused)
end
local record = fmt_holder(h)
end_hold(secret, 'r', held_since(h))
return finish(me, 'ok', record)
