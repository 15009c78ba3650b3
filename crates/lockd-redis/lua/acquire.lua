-- acquire.lua: grant at once, queue, or report busy.
-- ARGV from A: secret, mode, ttl_ms, max_renewals, client_id, wait_ms, daemon_id, liveness_ms, max_queue
local secret, mode, ttl, maxr, client = ARGV[A], tonumber(ARGV[A + 1]), tonumber(ARGV[A + 2]),
  tonumber(ARGV[A + 3]), ARGV[A + 4]
local wait, me, liveness, max_queue = tonumber(ARGV[A + 5]), ARGV[A + 6], tonumber(ARGV[A + 7]),
  tonumber(ARGV[A + 8])

sweep()
-- The daemon gave up on this request before its reply came, and its leave
-- ran first: the request must not take effect now.
local cancelled_at = redis.call('ZSCORE', K, secret)
if cancelled_at then
  redis.call('ZREM', K, secret)
  if tonumber(cancelled_at) > now - CANCEL_KEEP_MS then
    return finish(me, 'cancelled')
  end
end
promote()
-- The same request run again (a client retrying an Acquire that failed
-- UNAVAILABLE after it ran) answers as its first run did.
if nholders > 0 then
  local h = live_holder(secret)
  if h and h.client == client then
    return finish(me, 'granted', fmt_holder(h))
  end
end
if qlen > 0 then
  local rank = redis.call('ZRANK', Q, secret)
  if rank then
    return finish(me, 'queued', { rank, qlen })
  end
end
-- Granted at once only when nobody is queued ahead: no barging.
local free = qlen == 0 and admits(mode)
if free and not quarantined then
  local h = grant(secret, mode, ttl, maxr, client)
  return finish(me, 'granted', fmt_holder(h))
end
if wait == 0 then
  if free then
    return finish(me, 'quarantined', quarantine_end - now)
  end
  return finish(me, 'busy')
end
if max_queue > 0 and qlen >= max_queue then
  return finish(me, 'full', qlen)
end
redis.call('ZADD', Q, next_seq(), secret)
qlen = qlen + 1
redis.call('HSET', W, secret, fmt_waiter({ mode = mode, ttl = ttl, maxr = maxr, enq = now,
  deadline = now + wait + WAIT_GRACE_MS, daemon = me, client = client }))
set_daemon_alive(me, liveness)
add_waiting(me, 1)
return finish(me, 'queued', { qlen - 1, qlen })
