-- confirm.lua: the write a replica confirmation waits on. The daemon sends it
-- and WAIT together, on one connection: WAIT then covers this write, and so
-- every write the server made before it, the grant being confirmed included,
-- provided this is the server the grant ran on (a fresh connection, or one
-- to a new primary, would otherwise confirm nothing at once).
-- KEYS: S of the grant's bucket. ARGV: the server the grant's script ran on.
-- Reply: 1 if this is that server (and the write was made), else 0.
if server_identity() ~= ARGV[1] then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'c', 1)
return 1
