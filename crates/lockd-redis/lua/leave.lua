-- leave.lua: take a waiter out of line; if it was granted but never handed
-- over, release that lease. ARGV from A: secret, daemon_id, outcome_unknown
-- (1 when the acquire's reply never came: if nothing is found, the acquire
-- may still be on its way, and is cancelled ahead of it).
local secret, me, unknown = ARGV[A], ARGV[A + 1], ARGV[A + 2]

sweep()
local seq = redis.call('ZSCORE', Q, secret)
if seq then
  local raw = redis.call('HGET', W, secret)
  remove_entry(secret, raw and parse_waiter(raw), tonumber(seq))
  return finish(me, 'left')
end
local h = live_holder(secret)
if h then
  end_hold(secret, 'a', held_since(h))
  return finish(me, 'released')
end
if unknown == '1' then
  -- Cancellations older than CANCEL_KEEP_MS no longer count; trimming them
  -- here keeps K to the cancellations of the last CANCEL_KEEP_MS, and the
  -- key's own expiry only frees memory once none is left.
  redis.call('ZREMRANGEBYSCORE', K, '-inf', now - CANCEL_KEEP_MS)
  redis.call('ZADD', K, now, secret)
  redis.call('PEXPIRE', K, CANCEL_KEEP_MS)
end
return finish(me, 'none')
