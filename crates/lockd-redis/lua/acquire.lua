-- acquire.lua: grant at once, queue, or report busy.
-- ARGV: secret, mode, ttl_ms, max_renewals, client_id, wait_ms, daemon_id, liveness_ms, max_queue
local secret, mode, ttl, maxr, client = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local wait, me, liveness, max_queue = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])

sweep()
promote()
-- Granted at once only when nobody is queued ahead: no barging.
if qlen == 0 and admits(mode) then
  local h = grant(secret, mode, ttl, maxr, client)
  return finish(me, 'granted', fmt_holder(h))
end
if wait == 0 then
  return finish(me, 'busy')
end
if max_queue > 0 and qlen >= max_queue then
  return finish(me, 'full', qlen)
end
local last = redis.call('ZRANGE', Q, -1, -1, 'WITHSCORES')
local seq = 1
if last[2] then
  seq = tonumber(last[2]) + 1
end
redis.call('ZADD', Q, seq, secret)
qlen = qlen + 1
redis.call('HSET', W, secret, fmt_waiter({ mode = mode, ttl = ttl, maxr = maxr, enq = now,
  deadline = now + wait + WAIT_GRACE_MS, daemon = me, client = client }))
set_daemon_alive(me, liveness)
events[#events + 1] = 'q+'
return finish(me, 'queued', { qlen - 1, qlen })
