-- common.lua: shared by every lockd script that changes a resource. Each such
-- script is records.lua, this file and its own; together they follow
-- crates/lockd-core/src/engine.rs rule for rule: sweep what ended, do the
-- operation, grant whoever is next in line, account for it, report what changed.
--
-- KEYS (one slot: the resource's bucket, see crates/lockd-redis/src/keys.rs):
--   H  holders: secret -> holder record
--   Q  queue: zset of waiter secrets scored by arrival sequence
--   W  waiters: secret -> waiter record
--   D  daemons with waiters or undelivered grants here, and their ledger:
--        l:<id> liveness deadline (ms), present while the daemon counts as alive;
--        n:<id> how many of its queue entries count as waiting;
--        x:<id> entries with a sequence up to this were its before it was found dead;
--        s: the last arrival sequence handed out (D lives while the queue does).
--   G  inbox: secret -> daemon id, grants not yet taken over by that daemon
--   K  cancelled: zset of secrets whose leave ran before their acquire (outcome
--      unknown), scored by when; honoured for CANCEL_KEEP_MS
--   S  the bucket's statistics counters, fencing-token floor and offset (fields
--      f, o), and the server that last wrote it and its quarantine (fields n,
--      q: failover.lua)
--   T  the bucket's grants per resource
--   U  the bucket's due index: resource -> when it next needs a sweep (ms)
--   E  holders by when their leases end (ms): the only view of every holder a
--      script takes, so that no operation's work grows with the holders
-- ARGV (shared head, from crates/lockd-redis/src/scripts.rs):
--   resource, wait_grace_ms, cancel_keep_ms, purge_limit, grant_limit,
--   expire_limit, shared mode codes, top_keep, quarantine_ms, known (1 once
--   the daemon recorded every bucket's server); each script's own arguments
--   start at ARGV[11].
--
-- Nothing here relies on a key expiring: the due index brings every resource
-- back to a sweep when its next lease ends or a daemon's liveness lapses, so
-- the counters in S never drift from the records they count.
local H, Q, W, D, G, K, S, T, U, E =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local RESOURCE = ARGV[1]
local WAIT_GRACE_MS = tonumber(ARGV[2])
local CANCEL_KEEP_MS = tonumber(ARGV[3])
local PURGE_LIMIT = tonumber(ARGV[4])
local GRANT_LIMIT = tonumber(ARGV[5])
local EXPIRE_LIMIT = tonumber(ARGV[6])
local SHARED = {}
for code in string.gmatch(ARGV[7], '%d+') do
  SHARED[tonumber(code)] = true
end
local TOP_KEEP = tonumber(ARGV[8])
local QUARANTINE_MS = tonumber(ARGV[9])
local KNOWN = ARGV[10] == '1'
local A = 11

-- Time comes from the Redis server and is frozen for the whole script.
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = math.floor(now_us / 1000)

-- A bucket the previous server may have lost writes of grants nothing until
-- its quarantine ends; the token floor only grows and never expires, so
-- tokens increase whatever the clock does.
local quarantine_end, floor, token_offset, _, server = check_server(S, now, now_us, QUARANTINE_MS, KNOWN)
local quarantined = now < quarantine_end
local floor_moved = false

-- Events for the daemon's metrics: g<mode>, r|x|a<mode>:<held ms>, q+, q-<count>.
local events = {}
-- Counter changes for S, applied once in finish.
local stat = {}
local function count(field, n)
  stat[field] = (stat[field] or 0) + n
end

-- Holders are read one at a time, when a rule needs one: `holders` caches
-- what was read (false: known absent) and every change is mirrored into H
-- and E.
local holders = {}
local nholders = redis.call('ZCARD', E)
local function holder(secret)
  local h = holders[secret]
  if h == nil then
    local raw = redis.call('HGET', H, secret)
    h = raw and parse_holder(raw) or false
    holders[secret] = h
  end
  return h or nil
end

-- The queue length and the inbox, read once and kept in step with every write
-- below, so an uncontended operation reads each key once.
local qlen = redis.call('ZCARD', Q)
-- Every inbox entry is a holder's, so there is none without holders.
local inbox, inbox_found = {}, false
if nholders > 0 then
  local flat = redis.call('HGETALL', G)
  for i = 1, #flat, 2 do
    inbox[flat[i]] = flat[i + 1]
    inbox_found = true
  end
end
-- Whether this resource had any state when the script began.
local had_state = nholders > 0 or qlen > 0 or inbox_found
-- D exists only while there is a queue or an inbox: finish deletes it otherwise.
local d_exists = qlen > 0 or inbox_found

-- The daemon ledger, loaded on first use: id -> { dl = deadline or nil, n = count, x = tomb }.
local ledger, ledger_seq = nil, 0
local function daemons()
  if ledger then
    return ledger
  end
  ledger = {}
  if d_exists then
    local flat = redis.call('HGETALL', D)
    for i = 1, #flat, 2 do
      local kind, id = string.sub(flat[i], 1, 1), string.sub(flat[i], 3)
      local v = tonumber(flat[i + 1])
      if kind == 's' then
        ledger_seq = v
      else
        local d = ledger[id] or { n = 0, x = 0 }
        ledger[id] = d
        if kind == 'l' then
          d.dl = v
        elseif kind == 'n' then
          d.n = v
        elseif kind == 'x' then
          d.x = v
        end
      end
    end
  end
  return ledger
end

-- The next arrival sequence: increasing for as long as the queue has entries,
-- so that an entry is never mistaken for one from before a daemon's death.
local function next_seq()
  daemons()
  ledger_seq = ledger_seq + 1
  d_exists = true
  redis.call('HSET', D, 's:', ledger_seq)
  return ledger_seq
end

local function daemon(id)
  local all = daemons()
  local d = all[id]
  if not d then
    d = { n = 0, x = 0 }
    all[id] = d
  end
  return d
end

local function daemon_alive(id)
  local d = daemons()[id]
  return d ~= nil and d.dl ~= nil and d.dl > now
end

local function set_daemon_alive(id, liveness_ms)
  local d = daemon(id)
  d.dl = now + liveness_ms
  d_exists = true
  redis.call('HSET', D, 'l:' .. id, d.dl)
end

local function add_waiting(id, n)
  local d = daemon(id)
  d.n = d.n + n
  d_exists = true
  redis.call('HSET', D, 'n:' .. id, d.n)
  count('w', n)
  if n > 0 then
    events[#events + 1] = 'q+'
  else
    events[#events + 1] = 'q-' .. (-n)
  end
end

-- Whether a queue entry still counts as waiting: its daemon is alive and the
-- entry is not from before that daemon was last found dead.
local function counted(w, seq)
  local d = daemons()[w.daemon]
  return d ~= nil and d.dl ~= nil and seq > d.x
end

-- Takes an entry out of line, keeping the ledger in step.
local function remove_entry(secret, w, seq)
  redis.call('ZREM', Q, secret)
  redis.call('HDEL', W, secret)
  qlen = qlen - 1
  if w and counted(w, seq) then
    add_waiting(w.daemon, -1)
  end
end

local function end_hold(secret, how, held_ms)
  local h = holder(secret)
  holders[secret] = false
  nholders = nholders - 1
  redis.call('HDEL', H, secret)
  redis.call('ZREM', E, secret)
  if inbox[secret] then
    inbox[secret] = nil
    redis.call('HDEL', G, secret)
  end
  events[#events + 1] = how .. h.mode .. ':' .. held_ms
  -- One counter per way a hold ends and mode; live leases per mode are
  -- grants less ends, so ending a hold costs two increments.
  count(how .. h.mode, 1)
  count('hm', held_ms)
end

local function next_token()
  floor = math.max(floor + 1, now_us + token_offset)
  floor_moved = true
  return floor
end

-- Drops a member of E that has no holder record (an operator deleted the
-- record, say): left there, it would hold the resource, and keep it due, for ever.
local function forget_holder(secret)
  if redis.call('ZREM', E, secret) == 1 then
    nholders = nholders - 1
  end
  holders[secret] = false
end

-- How long `h` has been held; never negative, should the clock step back.
local function held_since(h)
  return math.max(0, now - h.acq)
end

-- The holder of `secret` if its lease is live. One that ended but was not
-- swept yet (the sweep ends at most EXPIRE_LIMIT per script) is ended now,
-- so that no rule serves an expired lease.
local function live_holder(secret)
  local h = holder(secret)
  if h and h.exp <= now then
    end_hold(secret, 'x', h.exp - h.acq)
    return nil
  end
  return h
end

-- Stores `h`; `new` says no holder of `secret` exists yet (a grant).
local function put_holder(secret, h, new)
  if new then
    nholders = nholders + 1
  end
  holders[secret] = h
  h.rec = nil
  redis.call('HSET', H, secret, fmt_holder(h))
  redis.call('ZADD', E, h.exp, secret)
end

-- Grants a new lease to `secret`.
local function grant(secret, mode, ttl, maxr, client)
  local h = { mode = mode, token = next_token(), acq = now, exp = now + ttl, ttl = ttl, ren = 0, maxr = maxr,
              client = client }
  put_holder(secret, h, true)
  events[#events + 1] = 'g' .. mode
  count('g' .. mode, 1)
  return h
end

-- The lease `secret` if `client` holds it; otherwise nil and the status to answer.
local function owned(secret, client)
  local h = live_holder(secret)
  if not h then
    return nil, 'not_found'
  end
  if h.client ~= client then
    return nil, 'not_owner'
  end
  return h
end

-- Whether a request in `mode` may join the current holders. A holder outside
-- the shared class is always alone, so at most one record is read.
local function admits(mode)
  if nholders == 0 then
    return true
  end
  if not SHARED[mode] then
    return false
  end
  if nholders > 1 then
    return true
  end
  local only = redis.call('ZRANGE', E, 0, 0)[1]
  local h = only and live_holder(only)
  if not h then
    if only and holders[only] == false and nholders == 1 then
      forget_holder(only)
    end
    -- It had ended (or had no record): look again without it.
    return nholders == 0 or admits(mode)
  end
  return SHARED[h.mode] == true
end

-- Work promote did in this script, across its calls, and whether a step
-- stopped at a limit with more to do: then the resource is due again at once.
local purged, promoted, promote_pending = 0, 0, false

-- Ends expired leases; settles daemons whose liveness lapsed (their entries
-- stop counting as waiting, their undelivered grants are released).
local function sweep()
  if nholders > 0 then
    local expired = redis.call('ZRANGEBYSCORE', E, '-inf', now, 'LIMIT', 0, EXPIRE_LIMIT + 1)
    for i = 1, math.min(#expired, EXPIRE_LIMIT) do
      local h = holder(expired[i])
      if h then
        end_hold(expired[i], 'x', h.exp - h.acq)
      else
        forget_holder(expired[i])
      end
    end
    if #expired > EXPIRE_LIMIT then
      promote_pending = true
    end
  end
  if qlen == 0 and not inbox_found then
    return
  end
  for id, d in pairs(daemons()) do
    if d.dl ~= nil and d.dl <= now then
      if d.n > 0 then
        add_waiting(id, -d.n)
      end
      d.dl = nil
      d.n = 0
      d.x = ledger_seq
      redis.call('HDEL', D, 'l:' .. id, 'n:' .. id)
      redis.call('HSET', D, 'x:' .. id, d.x)
    end
  end
  for secret, id in pairs(inbox) do
    if not daemon_alive(id) then
      inbox[secret] = nil
      redis.call('HDEL', G, secret)
      local h = holder(secret)
      if h then
        end_hold(secret, 'a', held_since(h))
      end
    end
  end
end

-- Grants the head of the queue while it is compatible with the holders,
-- dropping dead entries on the way; at most PURGE_LIMIT drops and
-- GRANT_LIMIT grants per script. Grants go to the waiter's daemon's inbox.
local function promote()
  while qlen > 0 do
    local top = redis.call('ZRANGE', Q, 0, 0, 'WITHSCORES')
    local head, seq = top[1], tonumber(top[2] or '0')
    if not head then
      qlen = 0
      break
    end
    local raw = redis.call('HGET', W, head)
    local w = raw and parse_waiter(raw)
    if not w or not counted(w, seq) or w.deadline <= now then
      if purged >= PURGE_LIMIT then
        promote_pending = true
        break
      end
      purged = purged + 1
      remove_entry(head, w, seq)
    elseif quarantined or not admits(w.mode) then
      break
    elseif promoted >= GRANT_LIMIT then
      promote_pending = true
      break
    else
      promoted = promoted + 1
      remove_entry(head, w, seq)
      grant(head, w.mode, w.ttl, w.maxr, w.client)
      inbox[head] = w.daemon
      inbox_found = true
      redis.call('HSET', G, head, w.daemon)
    end
  end
end

-- Grants the next in line, hands the caller its grants, writes the counters
-- and the due index, and builds the reply:
-- {status, payload, my grants (secret, record, ...), ms to the earliest expiry or -1, events, queue
-- length, the server (for a confirmation: confirm.lua)}.
local function finish(me, status, payload)
  promote()
  local mine, others = {}, 0
  for secret, id in pairs(inbox) do
    if id == me then
      inbox[secret] = nil
      redis.call('HDEL', G, secret)
      local h = live_holder(secret)
      if h then
        mine[#mine + 1] = secret
        mine[#mine + 1] = fmt_holder(h)
      end
    else
      others = others + 1
    end
  end
  local next_exp, due = -1, nil
  if nholders > 0 then
    due = tonumber(redis.call('ZRANGE', E, 0, 0, 'WITHSCORES')[2])
    if qlen > 0 then
      next_exp = math.max(due - now, 0)
    end
  end
  if qlen == 0 and others == 0 then
    if d_exists then
      redis.call('DEL', D)
    end
  else
    for _, d in pairs(daemons()) do
      if d.dl ~= nil and (due == nil or d.dl < due) then
        due = d.dl
      end
    end
  end
  if promote_pending then
    due = now
  end
  -- The queue's head is granted when the quarantine ends, by the reaper if
  -- nothing else comes by.
  if quarantined and qlen > 0 and (due == nil or quarantine_end < due) then
    due = quarantine_end
  end
  if due ~= nil then
    redis.call('ZADD', U, due, RESOURCE)
  elseif had_state then
    redis.call('ZREM', U, RESOURCE)
  end
  local granted = 0
  for field, n in pairs(stat) do
    if n ~= 0 then
      redis.call('HINCRBY', S, field, n)
    end
    if string.sub(field, 1, 1) == 'g' then
      granted = granted + n
    end
  end
  if floor_moved then
    redis.call('HSET', S, 'f', string.format('%d', floor))
  end
  if granted > 0 then
    -- Only a new member can take the list past its bound.
    local total = tonumber(redis.call('ZINCRBY', T, granted, RESOURCE))
    if total == granted and redis.call('ZCARD', T) > 2 * TOP_KEEP then
      redis.call('ZREMRANGEBYRANK', T, 0, -(TOP_KEEP + 1))
    end
  end
  return { status, payload or '', mine, next_exp, events, qlen, server }
end
