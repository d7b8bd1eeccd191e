-- GCRA rate limit for one user: the same arithmetic as wsnode.limiter.gcra.
-- KEYS: the user's TAT key. ARGV: count, period_ms.
-- Returns {allowed (1/0), retry_after_ms}. Uses the Redis clock, so pods with
-- skewed clocks still share one limit.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local period = tonumber(ARGV[2])
local interval = period / tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new_tat = math.max(tat, now) + interval
local over = new_tat - now - period
if over > 0 then
  return {0, math.max(1, math.ceil(over))}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
return {1, 0}
