-- Make Redis hold exactly this node's connections (after a Redis restart or
-- outage, and now and then): entries of connections the node no longer has
-- go, the ones it has are written again (also those it counted alone while
-- Redis was unavailable).
-- KEYS[1]  dk:conn:node:<node>
-- ARGV     node, ip key prefix, user key prefix, k, then k connection ids
--          whose reserve is still in flight (left as they are), then
--          (conn, ip, user) for every live connection
-- Returns  {removed, written}
local node, ip_prefix, user_prefix = ARGV[1], ARGV[2], ARGV[3]
local k = tonumber(ARGV[4])
local keep = {}
for i = 5, 4 + k do keep[ARGV[i]] = true end
local first = 5 + k
for i = first, #ARGV, 3 do keep[ARGV[i]] = true end
local removed = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local conn = entries[i]
  if not keep[conn] then
    local cut = string.find(entries[i + 1], '\n', 1, true)
    local field = node .. '|' .. conn
    redis.call('HDEL', ip_prefix .. string.sub(entries[i + 1], 1, cut - 1), field)
    redis.call('HDEL', user_prefix .. string.sub(entries[i + 1], cut + 1), field)
    redis.call('HDEL', KEYS[1], conn)
    removed = removed + 1
  end
end
local written = 0
for i = first, #ARGV, 3 do
  local field = node .. '|' .. ARGV[i]
  redis.call('HSET', ip_prefix .. ARGV[i + 1], field, 1)
  redis.call('HSET', user_prefix .. ARGV[i + 2], field, 1)
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. '\n' .. ARGV[i + 2])
  written = written + 1
end
return {removed, written}
