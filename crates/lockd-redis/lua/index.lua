-- index.lua: note a lease candidate in a client's lease index before the
-- lock script that may grant it runs, so that ListHeld sees every lease the
-- moment its grant is answered. KEYS: index. ARGV: lock_id, bound_ms (how
-- long the lease can live from now, at most).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local until_ms = now + tonumber(ARGV[2])
-- GT: a later bound replaces an earlier one, never the reverse.
redis.call('ZADD', KEYS[1], 'GT', until_ms, ARGV[1])
redis.call('PEXPIREAT', KEYS[1], until_ms, 'GT')
redis.call('PEXPIREAT', KEYS[1], until_ms, 'NX')
return 1
