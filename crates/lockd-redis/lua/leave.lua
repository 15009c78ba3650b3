-- leave.lua: take a waiter out of line; if it was granted but never handed
-- over, release that lease. ARGV: secret, daemon_id
local secret, me = ARGV[1], ARGV[2]

sweep()
if redis.call('ZREM', Q, secret) == 1 then
  qlen = qlen - 1
  redis.call('HDEL', W, secret)
  events[#events + 1] = 'q-'
  return finish(me, 'left')
end
local h = holders[secret]
if h then
  end_hold(secret, 'a', now - h.acq)
  return finish(me, 'released')
end
return finish(me, 'none')
