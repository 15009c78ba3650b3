-- reaper.lua: claim or keep the reaper's turn, so that one daemon at a time
-- sweeps due resources. KEYS: the claim. ARGV: daemon_id, claim_ms.
-- Reply: the server's time in ms when the claim is this daemon's, else -1.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return -1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
local clock = redis.call('TIME')
return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
