-- Remove every connection entry of one node (dead, or this node starting).
-- KEYS[1]  dk:conn:node:<node>
-- ARGV     node, the ip key prefix (dk:conn:ip:), the user key prefix
-- Returns  how many connections were removed.
-- The ip and user keys are built here from the node's index: fine on one
-- Redis (not Redis Cluster, where a script may touch only declared keys).
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local field = ARGV[1] .. '|' .. entries[i]
  local cut = string.find(entries[i + 1], '\n', 1, true)
  local ip = string.sub(entries[i + 1], 1, cut - 1)
  local user = string.sub(entries[i + 1], cut + 1)
  redis.call('HDEL', ARGV[2] .. ip, field)
  redis.call('HDEL', ARGV[3] .. user, field)
end
redis.call('DEL', KEYS[1])
return #entries / 2
