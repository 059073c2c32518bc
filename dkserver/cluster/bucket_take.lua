-- A token bucket shared by every node: take COST tokens if the bucket has them.
-- KEYS[1]  the bucket (a hash: t = tokens, u = when, in Redis TIME seconds)
-- ARGV     rate (tokens/s), burst (capacity), cost
-- Returns  {1, 0} if taken, else {0, ms}: no token before ms milliseconds
--          (rounded down, so a node may refuse locally until then, exactly).
-- One clock for all nodes: Redis TIME.  A bucket that has refilled to burst
-- is the same as no bucket, so the key expires when it would be full again.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local tokens = burst
local saved = redis.call('HMGET', KEYS[1], 't', 'u')
if saved[1] then
  tokens = tonumber(saved[1])
  local elapsed = now - tonumber(saved[2])
  if elapsed > 0 then
    tokens = math.min(burst, tokens + elapsed * rate)
  end
end
-- 1e-9 absorbs float rounding (as dkserver.ratelimit does).
if tokens + 1e-9 < cost then
  local wait = math.floor((cost - tokens) / rate * 1000)
  return {0, wait}
end
tokens = math.max(0, tokens - cost)
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1)
return {1, 0}
