-- sync.lua: keep the caller's waiters alive, grant whoever is next, and say
-- where each of the caller's waiters stands: rank >= 0 queued, -1 granted, -2 gone.
-- ARGV from A: daemon_id, liveness_ms, secret...
local me, liveness = ARGV[A], tonumber(ARGV[A + 1])

-- The sweep first: a daemon whose liveness lapsed is settled as dead before
-- this sync revives it, so entries from before stay dead.
sweep()
set_daemon_alive(me, liveness)
promote()
local states = {}
for i = A + 2, #ARGV do
  local secret = ARGV[i]
  local seq = redis.call('ZSCORE', Q, secret)
  local raw = seq and redis.call('HGET', W, secret)
  local w = raw and parse_waiter(raw)
  if w and counted(w, tonumber(seq)) then
    states[#states + 1] = redis.call('ZRANK', Q, secret)
  elseif seq then
    remove_entry(secret, w, tonumber(seq))
    states[#states + 1] = -2
  elseif holders[secret] then
    states[#states + 1] = -1
  else
    states[#states + 1] = -2
  end
end
return finish(me, 'ok', states)
