-- sync.lua: keep the caller's waiters alive, grant whoever is next, and say
-- where each of the caller's waiters stands: rank >= 0 queued, -1 granted, -2 gone.
-- ARGV: daemon_id, liveness_ms, secret...
local me, liveness = ARGV[1], tonumber(ARGV[2])

sweep()
set_daemon_alive(me, liveness)
promote()
local states = {}
for i = 3, #ARGV do
  local rank = redis.call('ZRANK', Q, ARGV[i])
  if rank then
    states[#states + 1] = rank
  elseif holders[ARGV[i]] then
    states[#states + 1] = -1
  else
    states[#states + 1] = -2
  end
end
return finish(me, 'ok', states)
