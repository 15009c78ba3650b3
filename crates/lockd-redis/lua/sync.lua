-- sync.lua: keep the caller's waiters alive, grant whoever is next, and say
-- where each of the caller's waiters stands: rank >= 0 queued, -1 granted, -2 gone.
-- ARGV from A: daemon_id, liveness_ms, secret...
local me, liveness = ARGV[A], tonumber(ARGV[A + 1])

-- The sweep first: a daemon whose liveness lapsed is settled as dead before
-- this sync revives it, so entries from before stay dead.
sweep()
set_daemon_alive(me, liveness)
promote()
-- Every secret is the caller's own waiter, so only its tomb decides whether
-- an entry still counts; with no tomb, a rank alone answers.
local tomb = daemon(me).x
local states = {}
for i = A + 2, #ARGV do
  local secret = ARGV[i]
  local rank = redis.call('ZRANK', Q, secret)
  if rank and tomb > 0 then
    local seq = tonumber(redis.call('ZSCORE', Q, secret))
    if seq <= tomb then
      local raw = redis.call('HGET', W, secret)
      remove_entry(secret, raw and parse_waiter(raw), seq)
      rank = nil
      states[#states + 1] = -2
    end
  end
  if rank then
    states[#states + 1] = rank
  elseif redis.call('ZSCORE', Q, secret) then
    -- removed just above as an entry from before this daemon's death
  elseif live_holder(secret) then
    states[#states + 1] = -1
  else
    states[#states + 1] = -2
  end
end
return finish(me, 'ok', states)
