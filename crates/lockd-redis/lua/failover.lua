-- failover.lua: noticing that a bucket is served by another Redis server than
-- the one that last wrote it, shared by every script that changes a resource
-- and by bucket.lua, the daemon's pass over all buckets.
--
-- Replication is asynchronous: a promoted replica, or a server restarted from
-- its last fsync, may lack the latest grants and token floors. Each bucket
-- records in S (field n) the run_id of the server that last wrote it. A script
-- that finds another run_id there (or no record at all, when the daemon knows
-- the bucket was recorded before) starts the bucket's quarantine (field q, ms
-- on this server's clock), during which nothing in the bucket is granted, and
-- lifts its token floor (field f) an hour above this server's clock. Because
-- this runs in the same atomic script as any grant, no grant on a new server
-- comes before its quarantine, whichever daemon makes it and whatever the
-- daemons noticed themselves.

-- Tokens stay above those of a lost primary whose clock was at most this far ahead.
local FAILOVER_TOKEN_JUMP_US = 3600000000

-- Returns the bucket's quarantine end (ms), its token floor, and whether this
-- call found the server changed. `known`: the bucket was recorded before, so a
-- missing record means lost data rather than a new deployment.
local function check_server(S, now, now_us, quarantine_ms, known)
  local server = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local fields = redis.call('HMGET', S, 'n', 'q', 'f')
  local seen, quarantine_end, floor = fields[1], tonumber(fields[2] or '0'), tonumber(fields[3] or '0')
  if seen == server then
    return quarantine_end, floor, false
  end
  if seen or known then
    quarantine_end = math.max(quarantine_end, now + quarantine_ms)
    floor = math.max(floor, now_us) + FAILOVER_TOKEN_JUMP_US
    redis.call('HSET', S, 'n', server, 'q', string.format('%d', quarantine_end), 'f', string.format('%d', floor))
    return quarantine_end, floor, true
  end
  redis.call('HSET', S, 'n', server)
  return quarantine_end, floor, false
end
