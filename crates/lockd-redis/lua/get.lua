#!lua flags=no-writes
-- get.lua: a live lease's record, or nothing. KEYS: holders. ARGV: secret
local refused = refuse_unless_primary()
if refused then
  return refused
end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then
  return false
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if holder_expiry(v) <= now then
  return false
end
return v
