#!lua flags=no-writes
-- queue.lua: live holders and live waiters of a resource, in order; at most
-- ARGV[1] of each, looking at no more than ARGV[2] queue entries.
-- KEYS: holders, queue, waiters, daemons, expiries.
-- Reply: {now_ms, {holder records}, {waiter records}}
local refused = refuse_unless_primary()
if refused then
  return refused
end
local H, Q, W, D, E = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local limit, scan = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local holders = {}
for _, secret in ipairs(redis.call('ZRANGE', E, '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, limit)) do
  local v = redis.call('HGET', H, secret)
  if v then
    holders[#holders + 1] = v
  end
end

-- The ledger as common.lua keeps it: l:<id> deadline, x:<id> tomb.
local deadline, tomb = {}, {}
local flat_d = redis.call('HGETALL', D)
for i = 1, #flat_d, 2 do
  local kind, id = string.sub(flat_d[i], 1, 1), string.sub(flat_d[i], 3)
  if kind == 'l' then
    deadline[id] = tonumber(flat_d[i + 1])
  elseif kind == 'x' then
    tomb[id] = tonumber(flat_d[i + 1])
  end
end
local waiters = {}
local entries = redis.call('ZRANGE', Q, 0, scan - 1, 'WITHSCORES')
for i = 1, #entries, 2 do
  if #waiters >= limit then
    break
  end
  local v = redis.call('HGET', W, entries[i])
  if v then
    local w = parse_waiter(v)
    local seq = tonumber(entries[i + 1])
    if w.deadline > now and (deadline[w.daemon] or 0) > now and seq > (tomb[w.daemon] or 0) then
      waiters[#waiters + 1] = v
    end
  end
end
return { now, holders, waiters }
