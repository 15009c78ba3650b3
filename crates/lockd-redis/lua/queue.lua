#!lua flags=no-writes
-- queue.lua: live holders and live waiters of a resource, in order.
-- KEYS: holders, queue, waiters, daemons. Reply: {now_ms, {holder records}, {waiter records}}
local H, Q, W, D = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local holders = {}
local flat = redis.call('HGETALL', H)
for i = 1, #flat, 2 do
  if flat[i] ~= '#t' then
    local acq, held = string.match(flat[i + 1], '^%d|%d+|(%d+)|(%d+)|')
    local exp = tonumber(acq) + tonumber(held)
    if exp > now then
      holders[#holders + 1] = flat[i + 1]
    end
  end
end

local daemons = {}
local flat_d = redis.call('HGETALL', D)
for i = 1, #flat_d, 2 do
  daemons[flat_d[i]] = tonumber(flat_d[i + 1])
end
local waiters = {}
for _, secret in ipairs(redis.call('ZRANGE', Q, 0, -1)) do
  local v = redis.call('HGET', W, secret)
  if v then
    local dl, d = string.match(v, '^%d|%d+|%d+|%d+|(%d+)|([^|]*)|')
    if tonumber(dl) > now and (daemons[d] or 0) > now then
      waiters[#waiters + 1] = v
    end
  end
end
return { now, holders, waiters }
