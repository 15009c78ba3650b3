-- held.lua: a client's lease index, trimmed to entries whose bound has not
-- passed. The index holds candidates, each with an upper bound on when its
-- lease can end; every one is checked against its resource before it is
-- reported. KEYS: index. Reply: {lock ids}
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
