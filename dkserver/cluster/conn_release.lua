-- Remove one connection's entries (idempotent: releasing twice is harmless).
-- KEYS and ARGV[1..2] as in conn_reserve.lua.  An emptied hash is deleted
-- by Redis itself.
local field = ARGV[1] .. '|' .. ARGV[2]
redis.call('HDEL', KEYS[1], field)
redis.call('HDEL', KEYS[2], field)
return redis.call('HDEL', KEYS[3], ARGV[2])
