-- Append message-trail events, many trails in one call (wsnode/trace_redis.py).
-- KEYS: pairs (trail LIST of one (user, id), users SET of that id), all in one
-- hash slot (the trail bucket of the ids).
-- ARGV[1] ttl ms, ARGV[2] events kept per trail; then per pair: user, n, n events.
-- A key of the wrong type (corrupt) is skipped, not fatal to the others: the
-- reply lists the indexes (1-based) of the pairs that were not written.
local ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local a, failed = 3, {}
for i = 1, #KEYS, 2 do
  local user, n = ARGV[a], tonumber(ARGV[a + 1])
  local first = a + 2
  a = first + n
  -- One RPUSH of the pair's events; LTRIM only past the cap (RPUSH says the length).
  local len = redis.pcall('RPUSH', KEYS[i], unpack(ARGV, first, a - 1))
  local ok = type(len) ~= 'table'
  -- The user joins the id's set when its trail starts. A trail that already
  -- had events was listed then, and the set has lived as long as the list
  -- since (both are given the same expiry at every write, in this call).
  if ok and len == n and type(redis.pcall('SADD', KEYS[i + 1], user)) == 'table' then
    ok = false
  end
  if ok then
    if len > cap then redis.call('LTRIM', KEYS[i], -cap, -1) end
    redis.call('PEXPIRE', KEYS[i], ttl)
    redis.call('PEXPIRE', KEYS[i + 1], ttl)
  else
    failed[#failed + 1] = (i + 1) / 2
  end
end
return failed
