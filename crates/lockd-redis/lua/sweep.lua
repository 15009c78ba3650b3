-- sweep.lua: what the reaper runs on a resource whose due time came: end
-- expired leases, settle dead daemons, grant the next in line.
-- ARGV from A: daemon_id
sweep()
return finish(ARGV[A], 'ok')
