-- renew.lua: move a lease's expiry to now + ttl and count the renewal.
-- ARGV from A: secret, client_id, ttl_ms (0 keeps the lease's), daemon_id
local secret, client, ttl, me = ARGV[A], ARGV[A + 1], tonumber(ARGV[A + 2]), ARGV[A + 3]

sweep()
local h, refused = owned(secret, client)
if not h then
  return finish(me, refused)
end
if h.maxr > 0 and h.ren >= h.maxr then
  return finish(me, 'limit', h.maxr)
end
if ttl == 0 then
  ttl = h.ttl
end
h.ttl = ttl
-- A lease granted on a server whose clock was ahead of this one's (a
-- failover onto a replica that is behind) was acquired "later than now"
-- here; the record stores expiry - acquired unsigned, so it is acquired now
-- on this server's clock. The token is stored relative to it and grows.
if h.acq > now then
  h.acq = now
end
h.exp = now + ttl
h.ren = h.ren + 1
put_holder(secret, h, false)
return finish(me, 'ok', fmt_holder(h))
