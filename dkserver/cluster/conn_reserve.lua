-- Count a connection against its IP's and its user's cluster-wide caps.
-- KEYS[1]  dk:conn:ip:<ip>      hash: "<node>|<conn>" -> 1
-- KEYS[2]  dk:conn:user:<user>  hash: "<node>|<conn>" -> 1
-- KEYS[3]  dk:conn:node:<node>  hash: <conn> -> "<ip>\n<user>" (for release_node)
-- ARGV     node, conn, max per IP, max per user, ip, user
-- Returns  1 if reserved, 0 if a cap is full.  One entry per connection (not
-- a counter), so a release is idempotent and a dead node's entries can be
-- found and removed.
local field = ARGV[1] .. '|' .. ARGV[2]
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], field, 1)
redis.call('HSET', KEYS[2], field, 1)
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5] .. '\n' .. ARGV[6])
return 1
