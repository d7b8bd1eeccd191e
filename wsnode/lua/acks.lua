-- ACK store scripts: every call touches ONE user's keys ({u:<user>}). ARGV[1]
-- names the op. Message ids appear percent-encoded (ENCID) in zsets and keys.
-- A message is a hash: seq type body stored_at expires_at attempts next_due state
-- [dead_at reason]. Times are the Redis clock in ms.
local FIELDS = {'seq', 'type', 'body', 'stored_at', 'expires_at', 'attempts', 'next_due'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fields(key)
  return redis.call('HMGET', key, unpack(FIELDS))
end

local function backoff(retry, attempts)
  return retry * math.pow(2, math.min(math.max(attempts - 1, 0), 4))
end

-- Move a pending message to the user's dead letters; kept dead_ttl for operators.
local function kill(key, encid, pending, dlq, reason, now, dead_ttl)
  redis.call('HSET', key, 'state', 'dead', 'dead_at', now, 'reason', reason)
  redis.call('PEXPIREAT', key, now + dead_ttl)
  redis.call('ZREM', pending, encid)
  redis.call('ZADD', dlq, now, encid)
  redis.call('ZREMRANGEBYSCORE', dlq, '-inf', now - dead_ttl)
  redis.call('PEXPIRE', dlq, dead_ttl)
end

local function expiry_reason(key, ttl)
  local f = redis.call('HMGET', key, 'expires_at', 'stored_at')
  if tonumber(f[1]) < tonumber(f[2]) + ttl then return 'expired' end
  return 'ttl'
end

local op = ARGV[1]

if op == 'store' then
  -- KEYS: msg, seq, pending, dlq.
  -- ARGV: op, encid, type, body, ttl, retry, env_expires|'', max_pending, dead_ttl, msg_prefix.
  if redis.call('EXISTS', KEYS[1]) == 1 then
    local f = redis.call('HMGET', KEYS[1], 'seq', 'state')
    return {1, tonumber(f[1]), f[2]}
  end
  local now = now_ms()
  local ttl, retry, dead_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[9])
  local seq = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], 2 * ttl)
  local expires = now + ttl
  if ARGV[7] ~= '' then expires = math.min(expires, tonumber(ARGV[7])) end
  redis.call('HSET', KEYS[1], 'seq', seq, 'type', ARGV[3], 'body', ARGV[4], 'stored_at', now,
             'expires_at', expires, 'attempts', 1, 'next_due', now + retry, 'state', 'pending')
  redis.call('PEXPIREAT', KEYS[1], expires + dead_ttl)
  redis.call('ZADD', KEYS[3], seq, ARGV[2])
  local overflow = ''
  if redis.call('ZCARD', KEYS[3]) > tonumber(ARGV[8]) then
    overflow = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    kill(ARGV[10] .. overflow, overflow, KEYS[3], KEYS[4], 'overflow', now, dead_ttl)
  end
  return {0, seq, now, expires, now + retry, overflow}

elseif op == 'settle' then
  -- KEYS: msg, pending. ARGV: op, encid, ttl. Returns the state before.
  local f = redis.call('HMGET', KEYS[1], 'state', 'stored_at')
  if not f[1] then return '' end
  if f[1] == 'pending' then
    redis.call('HSET', KEYS[1], 'state', 'acked')
    -- What stays is the idempotency record (state, seq); the body is done with.
    redis.call('HDEL', KEYS[1], 'body', 'type')
    redis.call('ZREM', KEYS[2], ARGV[2])
    -- Keep the id for the rest of the idempotency window (ack_ttl from storing).
    redis.call('PEXPIREAT', KEYS[1], math.max(tonumber(f[2]) + tonumber(ARGV[3]), now_ms() + 1000))
  end
  return f[1]

elseif op == 'claim' then
  -- KEYS: msg, pending, dlq. ARGV: op, encid, max_attempts, retry, ttl, dead_ttl.
  -- Atomic: of many pods asking at once, one gets 'resend' per attempt.
  local state = redis.call('HGET', KEYS[1], 'state')
  if state ~= 'pending' then return {'gone'} end
  local now = now_ms()
  local f = redis.call('HMGET', KEYS[1], 'expires_at', 'next_due', 'attempts')
  local expires, due, attempts = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
  if expires <= now then
    local reason = expiry_reason(KEYS[1], tonumber(ARGV[5]))
    kill(KEYS[1], ARGV[2], KEYS[2], KEYS[3], reason, now, tonumber(ARGV[6]))
    return {'dead', reason, now, fields(KEYS[1])}
  end
  if due > now then return {'wait', '', now, fields(KEYS[1])} end
  if attempts >= tonumber(ARGV[3]) then
    kill(KEYS[1], ARGV[2], KEYS[2], KEYS[3], 'max_attempts', now, tonumber(ARGV[6]))
    return {'dead', 'max_attempts', now, fields(KEYS[1])}
  end
  attempts = attempts + 1
  redis.call('HSET', KEYS[1], 'attempts', attempts,
             'next_due', now + backoff(tonumber(ARGV[4]), attempts))
  return {'resend', '', now, fields(KEYS[1])}

elseif op == 'expire' then
  -- KEYS: msg, pending, dlq. ARGV: op, encid, ttl, dead_ttl. For the sweeper.
  local f = redis.call('HMGET', KEYS[1], 'state', 'expires_at')
  if f[1] ~= 'pending' then return {'gone'} end
  local now = now_ms()
  if tonumber(f[2]) > now then return {'alive'} end
  local reason = expiry_reason(KEYS[1], tonumber(ARGV[3]))
  kill(KEYS[1], ARGV[2], KEYS[2], KEYS[3], reason, now, tonumber(ARGV[4]))
  return {'dead', reason, now, fields(KEYS[1])}

elseif op == 'revive' then
  -- KEYS: msg, seq, pending, dlq. ARGV: op, encid, body, ttl, retry, dead_ttl.
  -- A dead letter becomes pending again in one step, as a new message (new seq,
  -- first attempt, stored now): an operator's retry never loses it in between.
  if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return {} end
  local now = now_ms()
  local ttl, retry = tonumber(ARGV[4]), tonumber(ARGV[5])
  local seq = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], 2 * ttl)
  redis.call('HDEL', KEYS[1], 'dead_at', 'reason')
  redis.call('HSET', KEYS[1], 'seq', seq, 'body', ARGV[3], 'stored_at', now,
             'expires_at', now + ttl, 'attempts', 1, 'next_due', now + retry, 'state', 'pending')
  redis.call('PEXPIREAT', KEYS[1], now + ttl + tonumber(ARGV[6]))
  redis.call('ZREM', KEYS[4], ARGV[2])
  redis.call('ZADD', KEYS[3], seq, ARGV[2])
  return fields(KEYS[1])

elseif op == 'pending' then
  -- KEYS: pending. ARGV: op, msg_prefix, since|'', after_seq, limit (0: all).
  -- Pending, unexpired, seq > after_seq, in seq order: one page of a replay.
  local now = now_ms()
  local since = tonumber(ARGV[3] ~= '' and ARGV[3] or '0')
  local limit = tonumber(ARGV[5])
  local out = {}
  local after = '(' .. ARGV[4]
  while true do
    -- Read a little more than asked: expired entries are skipped, not returned.
    local ids = redis.call('ZRANGEBYSCORE', KEYS[1], after, '+inf', 'WITHSCORES', 'LIMIT', 0,
                           limit > 0 and limit or 1000)
    if #ids == 0 then break end
    for i = 1, #ids, 2 do
      local f = fields(ARGV[2] .. ids[i])
      if f[1] and tonumber(f[5]) > now and tonumber(f[4]) >= since then
        table.insert(out, {ids[i], f})
        if limit > 0 and #out >= limit then return out end
      end
      after = '(' .. ids[i + 1]
    end
  end
  return out
end
return redis.error_reply('acks.lua: unknown op ' .. tostring(op))
