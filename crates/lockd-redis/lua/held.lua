-- held.lua: trim a client's lease index to entries not yet expired and list
-- them. The index is a hint kept beside the leases; every entry is checked
-- against its resource before it is reported. KEYS: index. Reply: {lock ids}
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
