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
-- its tokens above anything the previous server may have handed out. Because
-- this runs in the same atomic script as any grant, no grant on a new server
-- comes before its quarantine, whichever daemon makes it and whatever the
-- daemons noticed themselves.

-- Tokens are the server's clock in µs plus the bucket's token offset (field o),
-- or one above the floor (field f, the last token), whichever is larger; each
-- change of server adds an hour to the offset. So tokens follow the clock at
-- its rate, and a server that takes over from a state a lost server also took
-- over from (and lifted, and granted from) lands above every token the lost one
-- handed out before this server's own first grant, as long as this server's
-- clock is not further behind than the time between the two; and above a lost
-- server that had not lifted as long as its clock is less than an hour behind.
-- Offsets only grow: 2^53 µs leaves room for about two million hours of them.
local FAILOVER_TOKEN_JUMP_US = 3600000000

-- The server this script runs on: run_id/master_replid.
local function server_identity()
  local info = redis.call('INFO', 'server', 'replication')
  return (string.match(info, 'run_id:(%x+)') or '?') .. '/' .. (string.match(info, 'master_replid:(%x+)') or '?')
end

-- Returns the bucket's quarantine end (ms), its token floor and offset,
-- whether this call found the server changed, and the server. `known`: the
-- bucket was recorded before, so a missing record means lost data rather
-- than a new deployment.
local function check_server(S, now, now_us, quarantine_ms, known)
  local server = server_identity()
  local fields = redis.call('HMGET', S, 'n', 'q', 'f', 'o')
  local seen, quarantine_end = fields[1], tonumber(fields[2] or '0')
  local floor, offset = tonumber(fields[3] or '0'), tonumber(fields[4] or '0')
  if seen == server then
    return quarantine_end, floor, offset, false, server
  end
  if seen or known then
    quarantine_end = math.max(quarantine_end, now + quarantine_ms)
    offset = math.max(offset, floor - now_us) + FAILOVER_TOKEN_JUMP_US
    redis.call('HSET', S, 'n', server, 'q', string.format('%d', quarantine_end), 'o', string.format('%d', offset))
    return quarantine_end, floor, offset, true, server
  end
  redis.call('HSET', S, 'n', server)
  return quarantine_end, floor, offset, false, server
end
