-- bucket.lua: the daemon's pass over one bucket, at startup and from the
-- reaper, so that a failover starts every bucket's quarantine when it is
-- noticed, not when the bucket is next used.
-- KEYS: S. ARGV: quarantine_ms, known (1 or 0).
-- Reply: {1 if the server changed, ms of quarantine left}.
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = math.floor(now_us / 1000)
local quarantine_end, _, _, changed = check_server(KEYS[1], now, now_us, tonumber(ARGV[1]), ARGV[2] == '1')
return { changed and 1 or 0, math.max(quarantine_end - now, 0) }
