-- failover.lua: noticing that a bucket is served by another Redis server than
-- the one that last wrote it, shared by every script that changes a resource
-- and by bucket.lua, the daemon's pass over all buckets.
--
-- Replication is asynchronous: a promoted replica, or a server restarted from
-- its last fsync, may lack the latest grants and token floors. Each bucket
-- records in S (field n) which server last wrote it: its run_id (new at every
-- start) and its master_replid (new at every promotion, so a server demoted and
-- promoted again without a restart counts as changed too). A script that finds
-- another server there (or no record at all, when the daemon knows the bucket
-- was recorded before) starts the bucket's quarantine (field q, ms on this
-- server's clock), during which nothing in the bucket is granted, and lifts
-- its token floor (field f) above anything the previous server may have
-- handed out (field l: this server's clock at the lift, in µs). Because
-- this runs in the same atomic script as any grant, no grant on a new server
-- comes before its quarantine, whichever daemon makes it and whatever the
-- daemons noticed themselves.

-- Tokens stay above those of a lost primary whose clock was at most this far ahead.
local FAILOVER_TOKEN_JUMP_US = 3600000000

-- The floor after a change of server. A lost server that took over from the
-- same state may have lifted the floor itself and handed out tokens above it:
-- while an earlier lift is still ahead of the clock, the new lift grows with
-- the time since that lift, so that it clears the lost server's lift (made
-- earlier, from the same floor) and the tokens it handed out one by one since,
-- as long as this server's clock is not further behind than that time.
local function lifted_floor(floor, last_lift, now_us)
  local base = now_us
  if floor > now_us then
    base = floor + math.max(0, now_us - (last_lift or now_us))
  end
  return math.max(base, floor) + FAILOVER_TOKEN_JUMP_US
end

-- Returns the bucket's quarantine end (ms), its token floor, and whether this
-- call found the server changed. `known`: the bucket was recorded before, so a
-- missing record means lost data rather than a new deployment.
local function check_server(S, now, now_us, quarantine_ms, known)
  local info = redis.call('INFO', 'server', 'replication')
  local server = (string.match(info, 'run_id:(%x+)') or '?') .. '/' .. (string.match(info, 'master_replid:(%x+)') or '?')
  local fields = redis.call('HMGET', S, 'n', 'q', 'f')
  local seen, quarantine_end, floor = fields[1], tonumber(fields[2] or '0'), tonumber(fields[3] or '0')
  if seen == server then
    return quarantine_end, floor, false
  end
  if seen or known then
    quarantine_end = math.max(quarantine_end, now + quarantine_ms)
    floor = lifted_floor(floor, tonumber(redis.call('HGET', S, 'l') or ''), now_us)
    redis.call('HSET', S, 'n', server, 'q', string.format('%d', quarantine_end), 'f', string.format('%d', floor),
      'l', string.format('%d', now_us))
    return quarantine_end, floor, true
  end
  redis.call('HSET', S, 'n', server)
  return quarantine_end, floor, false
end
