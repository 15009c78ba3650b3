-- common.lua: shared by every lockd script that changes a resource. Each such
-- script is this file followed by its own; together they follow
-- crates/lockd-core/src/engine.rs rule for rule: sweep what ended, do the
-- operation, grant whoever is next in line, report what changed.
--
-- KEYS (one hash tag, the resource's):
--   H  holders: secret -> holder record; '#t' = last fencing token when no holder carries it
--   Q  queue: zset of waiter secrets scored by arrival sequence
--   W  waiters: secret -> waiter record
--   D  daemons: daemon id -> liveness deadline (ms) of daemons with waiters or grants here
--   G  inbox: secret -> daemon id, grants not yet taken over by that daemon
local H, Q, W, D, G = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

-- Time comes from the Redis server and is frozen for the whole script.
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = math.floor(now_us / 1000)

-- A queue entry outlives its waiter's deadline by this much, so that the
-- waiter's own daemon times it out first (engine.rs WAIT_GRACE_MS).
local WAIT_GRACE_MS = 2000
-- Holder records outlive their leases by this much, so that the next script
-- on the resource still sees, and counts, a lease that expired meanwhile.
-- Expired records never count as holders: every rule compares with `now`.
local EXPIRED_GRACE_MS = 60000
-- Queue keys vanish this long after the last script touched them, should
-- every daemon with waiters here die.
local QUEUE_IDLE_MS = 60000

-- Statistics events for the daemon: g<mode>, r|x|a<mode>:<held ms>, q+, q-.
local events = {}
-- Every grant this script made (secret, record, ...), for the client lease index.
local granted = {}

local function shared(mode)
  return mode == 2 or mode == 3
end

-- holder record: mode|token-acquired*1000|acquired|expires-acquired|ttl|renewals|max_renewals|client
-- Times are relative to `acquired` so that a record with a short client id
-- stays within Redis' 64-byte listpack limit: a hash of small records takes
-- about half the memory of one Redis has converted to a hash table.
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

-- Load the holders once; every rule below works on this table and mirrors
-- each change into H.
local holders, nholders, last_token, token_field = {}, 0, 0, nil
do
  local flat = redis.call('HGETALL', H)
  for i = 1, #flat, 2 do
    if flat[i] == '#t' then
      token_field = tonumber(flat[i + 1])
      last_token = math.max(last_token, token_field)
    else
      local h = parse_holder(flat[i + 1])
      holders[flat[i]] = h
      nholders = nholders + 1
      last_token = math.max(last_token, h.token)
    end
  end
end

-- The queue length and the inbox, read once and kept in step with every write
-- below, so an uncontended operation reads each key once.
local qlen = redis.call('ZCARD', Q)
local inbox, inbox_found = {}, false
do
  local flat = redis.call('HGETALL', G)
  for i = 1, #flat, 2 do
    inbox[flat[i]] = flat[i + 1]
    inbox_found = true
  end
end
-- Whether D may exist and so may need deleting.
local daemons_key = qlen > 0 or inbox_found

local daemon_deadlines = {}
local function daemon_alive(d)
  local deadline = daemon_deadlines[d]
  if deadline == nil then
    deadline = tonumber(redis.call('HGET', D, d) or '0')
    daemon_deadlines[d] = deadline
  end
  return deadline > now
end

local function set_daemon_alive(d, liveness_ms)
  daemons_key = true
  daemon_deadlines[d] = now + liveness_ms
  redis.call('HSET', D, d, now + liveness_ms)
end

local function end_hold(secret, how, held_ms)
  local h = holders[secret]
  holders[secret] = nil
  nholders = nholders - 1
  redis.call('HDEL', H, secret)
  if inbox[secret] then
    inbox[secret] = nil
    redis.call('HDEL', G, secret)
  end
  events[#events + 1] = how .. h.mode .. ':' .. held_ms
end

local function new_holder(mode, ttl, maxr, client)
  last_token = math.max(last_token + 1, now_us)
  return { mode = mode, token = last_token, acq = now, exp = now + ttl, ttl = ttl, ren = 0, maxr = maxr, client = client }
end

local function put_holder(secret, h)
  if not holders[secret] then
    nholders = nholders + 1
  end
  holders[secret] = h
  h.rec = nil
  redis.call('HSET', H, secret, fmt_holder(h))
end

-- Grants a new lease to `secret`.
local function grant(secret, mode, ttl, maxr, client)
  local h = new_holder(mode, ttl, maxr, client)
  put_holder(secret, h)
  events[#events + 1] = 'g' .. mode
  granted[#granted + 1] = secret
  granted[#granted + 1] = fmt_holder(h)
  return h
end

-- The lease `secret` if `client` holds it; otherwise nil and the status to answer.
local function owned(secret, client)
  local h = holders[secret]
  if not h then
    return nil, 'not_found'
  end
  if h.client ~= client then
    return nil, 'not_owner'
  end
  return h
end

-- Whether a request in `mode` may join the current holders.
local function admits(mode)
  if not shared(mode) then
    return nholders == 0
  end
  for _, h in pairs(holders) do
    if not shared(h.mode) then
      return false
    end
  end
  return true
end

-- Ends expired leases, and grants whose waiter's daemon died before taking them over.
local function sweep()
  for secret, h in pairs(holders) do
    if h.exp <= now then
      end_hold(secret, 'x', h.exp - h.acq)
    end
  end
  for secret, daemon in pairs(inbox) do
    if not daemon_alive(daemon) then
      inbox[secret] = nil
      redis.call('HDEL', G, secret)
      local h = holders[secret]
      if h then
        end_hold(secret, 'a', now - h.acq)
      end
    end
  end
end

-- Grants the head of the queue while it is compatible with the holders,
-- dropping dead entries on the way; grants go to the waiter's daemon's inbox.
local function promote()
  while qlen > 0 do
    local head = redis.call('ZRANGE', Q, 0, 0)[1]
    if not head then
      qlen = 0
      break
    end
    local raw = redis.call('HGET', W, head)
    if not raw then
      redis.call('ZREM', Q, head)
      qlen = qlen - 1
    else
      local w = parse_waiter(raw)
      if w.deadline <= now or not daemon_alive(w.daemon) then
        redis.call('ZREM', Q, head)
        redis.call('HDEL', W, head)
        qlen = qlen - 1
        events[#events + 1] = 'q-'
      elseif not admits(w.mode) then
        break
      else
        redis.call('ZREM', Q, head)
        redis.call('HDEL', W, head)
        qlen = qlen - 1
        events[#events + 1] = 'q-'
        grant(head, w.mode, w.ttl, w.maxr, w.client)
        inbox[head] = w.daemon
        redis.call('HSET', G, head, w.daemon)
      end
    end
  end
end

-- When the holders key should vanish: a minute after its last lease ends, and
-- not before the clock has passed its last token; false when it can go now.
local function holders_key_expiry()
  if nholders == 0 and now_us > last_token then
    return false
  end
  local max_exp = 0
  for _, h in pairs(holders) do
    max_exp = math.max(max_exp, h.exp)
  end
  return math.max(max_exp + EXPIRED_GRACE_MS, math.floor(last_token / 1000) + 1)
end
-- What the previous script set, for holders as they were loaded.
local loaded_expiry = false
if next(holders) ~= nil or token_field then
  loaded_expiry = holders_key_expiry()
end

-- Grants the next in line, hands the caller its grants, sets key expiries and
-- builds the reply: {status, payload, my grants (secret, record, ...),
-- ms to the earliest expiry or -1, events, queue length, every grant made}.
local function finish(me, status, payload)
  promote()
  local mine, others = {}, 0
  for secret, daemon in pairs(inbox) do
    if daemon == me then
      inbox[secret] = nil
      redis.call('HDEL', G, secret)
      local h = holders[secret]
      if h then
        mine[#mine + 1] = secret
        mine[#mine + 1] = fmt_holder(h)
      end
    else
      others = others + 1
    end
  end
  local max_token, next_exp = 0, -1
  for _, h in pairs(holders) do
    max_token = math.max(max_token, h.token)
    if qlen > 0 and (next_exp < 0 or h.exp - now < next_exp) then
      next_exp = h.exp - now
    end
  end
  -- Writes happen only on change: each one notifies every daemon waiting here.
  local expiry = holders_key_expiry()
  if not expiry then
    if loaded_expiry then
      redis.call('DEL', H)
    end
  else
    if last_token > max_token then
      if token_field ~= last_token then
        redis.call('HSET', H, '#t', string.format('%d', last_token))
      end
    elseif token_field then
      redis.call('HDEL', H, '#t')
    end
    if expiry ~= loaded_expiry then
      redis.call('PEXPIREAT', H, expiry)
    end
  end
  if qlen == 0 and others == 0 then
    if daemons_key then
      redis.call('DEL', D)
    end
  else
    redis.call('PEXPIRE', D, QUEUE_IDLE_MS)
    if qlen > 0 then
      redis.call('PEXPIRE', Q, QUEUE_IDLE_MS)
      redis.call('PEXPIRE', W, QUEUE_IDLE_MS)
    end
    if others > 0 then
      redis.call('PEXPIRE', G, QUEUE_IDLE_MS)
    end
  end
  return { status, payload or '', mine, next_exp, events, qlen, granted }
end
