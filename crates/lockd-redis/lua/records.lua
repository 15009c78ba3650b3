-- records.lua: the one parser and formatter of each record lockd keeps in
-- Redis, shared by every script (crates/lockd-redis/src/reply.rs reads the
-- same formats on the daemon's side).

-- holder record: mode|token-acquired*1000|acquired|expires-acquired|ttl|renewals|max_renewals|client
-- Times are relative to `acquired` so that a record with a short client id
-- stays within Redis' 64-byte listpack limit.
local function parse_holder(v)
  local m, tok, acq, held, ttl, ren, maxr, client =
    string.match(v, '^(%d)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(.*)$')
  acq = tonumber(acq)
  return { mode = tonumber(m), token = acq * 1000 + tonumber(tok), acq = acq, exp = acq + tonumber(held),
           ttl = tonumber(ttl), ren = tonumber(ren), maxr = tonumber(maxr), client = client, rec = v }
end

-- The record of `h`, formatted once per change (`put_holder` clears it).
local function fmt_holder(h)
  if h.rec then
    return h.rec
  end
  h.rec = string.format('%d|%d|%d|%d|%d|%d|%d|%s', h.mode, h.token - h.acq * 1000, h.acq, h.exp - h.acq,
    h.ttl, h.ren, h.maxr, h.client)
  return h.rec
end

-- waiter record: mode|ttl|max_renewals|enqueued|deadline|daemon|client
local function parse_waiter(v)
  local m, ttl, maxr, enq, dl, d, client =
    string.match(v, '^(%d)|(%d+)|(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$')
  return { mode = tonumber(m), ttl = tonumber(ttl), maxr = tonumber(maxr), enq = tonumber(enq),
           deadline = tonumber(dl), daemon = d, client = client }
end

local function fmt_waiter(w)
  return string.format('%d|%d|%d|%d|%d|%s|%s', w.mode, w.ttl, w.maxr, w.enq, w.deadline, w.daemon, w.client)
end

-- When a holder record's lease ends (ms).
local function holder_expiry(v)
  local acq, held = string.match(v, '^%d|%d+|(%d+)|(%d+)|')
  return tonumber(acq) + tonumber(held)
end

-- Reads answer from the primary only, like writes: a node demoted since (a
-- failover the daemon has not followed yet) may lack the latest grants. The
-- READONLY code makes the daemon replace the connection and answer UNAVAILABLE.
local function refuse_unless_primary()
  if not string.find(redis.call('INFO', 'replication'), 'role:master', 1, true) then
    return redis.error_reply('READONLY lockd reads lock state from the primary only')
  end
  return nil
end
