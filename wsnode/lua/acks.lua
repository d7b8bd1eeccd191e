-- ACK store scripts. ARGV[1] names the op. Every key a call touches is in KEYS,
-- and every call touches one hash slot: one user's keys ({u:<user>}) or one
-- bucket of the global indexes ({b:<n>}). Message ids appear percent-encoded
-- (ENCID) in zsets. Times are this server's clock, in ms.
--
-- A message is a hash: seq type body stored_at expires_at attempts next_due
-- state [dead_at reason] req [defers]. `req` is the token of the last request
-- that changed it: redis-py re-sends a request whose reply was lost, and the
-- repeat must get the first answer, not act twice.
--
-- Data that cannot be read (a key of the wrong type, a non-numeric field) fails
-- the call with "CORRUPT <key> <why>", so the caller can quarantine that key.
local FIELDS = {'seq', 'type', 'body', 'stored_at', 'expires_at', 'attempts', 'next_due'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function corrupt(key, why)
  error({err = 'CORRUPT ' .. key .. ' ' .. why})
end

-- redis.call on `key`, turning a type or value error into CORRUPT <key>.
local function kcall(cmd, key, ...)
  local ok, res = pcall(redis.call, cmd, key, ...)
  if ok then return res end
  local msg = type(res) == 'table' and res.err or tostring(res)
  if string.find(msg, 'WRONGTYPE', 1, true) or string.find(msg, 'not an integer', 1, true)
      or string.find(msg, 'not a valid float', 1, true) then
    corrupt(key, cmd .. ': ' .. msg)
  end
  error(res)
end

local function num(key, value)
  local n = tonumber(value)
  if n == nil then corrupt(key, 'has a non-numeric field') end
  return n
end

local function fields(key)
  return kcall('HMGET', key, unpack(FIELDS))
end

local function backoff(retry, attempts)
  return retry * math.pow(2, math.min(math.max(attempts - 1, 0), 4))
end

-- Move a pending message to the user's dead letters; kept dead_ttl for operators.
local function kill(key, encid, pending, due, dlq, relayed, reason, now, dead_ttl, token)
  redis.call('HSET', key, 'state', 'dead', 'dead_at', now, 'reason', reason, 'req', token)
  redis.call('PEXPIREAT', key, now + dead_ttl)
  kcall('ZREM', pending, encid)
  kcall('ZREM', due, encid)
  kcall('ZREM', relayed, encid)
  kcall('ZADD', dlq, now, encid)
  redis.call('ZREMRANGEBYSCORE', dlq, '-inf', now - dead_ttl)
  redis.call('PEXPIRE', dlq, dead_ttl)
end

local function expiry_reason(key, ttl)
  local f = kcall('HMGET', key, 'expires_at', 'stored_at')
  if num(key, f[1]) < num(key, f[2]) + ttl then return 'expired' end
  return 'ttl'
end

local function dead_reply(key)
  local f = kcall('HMGET', key, 'reason', 'dead_at')
  return {'dead', f[1], f[2], fields(key)}
end

-- The earliest next_due of the user, or '' when nothing is pending.
local function next_due(due)
  local first = kcall('ZRANGE', due, 0, 0, 'WITHSCORES')
  if #first == 0 then return '' end
  return first[2]
end

-- Take a place in a client's budget (zset "<recipient> <encid>" -> until) for
-- `member` until `untilms` (again: a repeat moves its until); false when all
-- `cap` places are taken. Places whose time is up are dropped only when the
-- budget looks full: below the cap they cannot refuse anyone (3 calls, not 5,
-- on every relayed message stored).
local function reserve(budget, member, untilms, cap, now)
  if kcall('ZCARD', budget) >= cap then
    kcall('ZREMRANGEBYSCORE', budget, '-inf', now)
    if not kcall('ZSCORE', budget, member) and kcall('ZCARD', budget) >= cap then
      return false
    end
  end
  kcall('ZADD', budget, untilms, member)
  redis.call('PEXPIREAT', budget, untilms)
  return true
end

local op = ARGV[1]
local token = ARGV[2]

if op == 'store' then
  -- KEYS: msg, seq, pending, due, relayed[, expiry index, due index[, budget]].
  -- ARGV: op, token, encid, type, body, ttl, retry, env_expires|'', max_pending,
  -- dead_ttl, from|'', relayed_cap[, index member, user, expiry slack, budget cap].
  -- Returns {0, seq, now, expires, next_due, overflow ids...} for a new message
  -- (or a repeat of this request), {1, seq, state} for a duplicate, {2, 'full'}
  -- when `from` (a client the message is relayed from) is set and the user
  -- already has relayed_cap pending messages relayed from clients, {3, 'budget'}
  -- when every place in that client's budget is taken.
  -- With the index keys (one server: no slot rule), this call also writes the
  -- message's expiry and due index entries, and takes its place in the budget
  -- of `from` (the reserve op), which the pods do beside it on a cluster.
  local max_pending = tonumber(ARGV[9])
  local folded = KEYS[6] ~= nil
  if redis.call('EXISTS', KEYS[1]) == 1 then
    local f = kcall('HMGET', KEYS[1], 'seq', 'state', 'req', 'stored_at', 'expires_at',
                    'next_due')
    if not f[2] then corrupt(KEYS[1], 'has no state') end
    if f[3] ~= token then return {1, num(KEYS[1], f[1]), f[2]} end
    local out = {0, num(KEYS[1], f[1]), f[4], f[5], f[6]}
    local over = kcall('ZCARD', KEYS[3]) - max_pending
    if over > 0 then
      for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, over - 1)) do table.insert(out, id) end
    end
    return out
  end
  if ARGV[11] ~= '' and kcall('ZCARD', KEYS[5]) >= tonumber(ARGV[12]) then
    return {2, 'full'}
  end
  local now = now_ms()
  local ttl, retry, dead_ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[10])
  if KEYS[8] and not reserve(KEYS[8], ARGV[13], now + ttl + dead_ttl, tonumber(ARGV[16]),
                             now) then
    return {3, 'budget'}
  end
  local expires = now + ttl
  if ARGV[8] ~= '' then expires = math.min(expires, tonumber(ARGV[8])) end
  local due = now + retry
  if folded then
    -- Before the message (a script that fails half-way keeps what it wrote): an
    -- entry without a message is dropped by the sweeper, a message without its
    -- entries would neither expire nor be resent.
    kcall('ZADD', KEYS[6], 'LT', expires + tonumber(ARGV[15]), ARGV[13])
    kcall('ZADD', KEYS[7], 'LT', due, ARGV[14])
  end
  local seq = kcall('INCR', KEYS[2])
  if seq == 1 then
    -- A new counter, or a lost one (expired, or quarantined): it restarts above
    -- every pending seq.
    local top = kcall('ZRANGE', KEYS[3], 0, 0, 'REV', 'WITHSCORES')
    if #top > 0 then
      seq = num(KEYS[3], top[2]) + 1
      redis.call('SET', KEYS[2], seq)
    end
  end
  redis.call('PEXPIRE', KEYS[2], 2 * ttl)
  kcall('ZADD', KEYS[3], seq, ARGV[3])
  kcall('ZADD', KEYS[4], due, ARGV[3])
  local record = {'seq', seq, 'type', ARGV[4], 'body', ARGV[5], 'stored_at', now,
                  'expires_at', expires, 'attempts', 1, 'next_due', due, 'state', 'pending',
                  'req', token}
  if ARGV[11] ~= '' then
    record[#record + 1] = 'from'
    record[#record + 1] = ARGV[11]
  end
  redis.call('HSET', KEYS[1], unpack(record))
  redis.call('PEXPIREAT', KEYS[1], expires + dead_ttl)
  if ARGV[11] ~= '' then
    kcall('ZADD', KEYS[5], seq, ARGV[3])
    redis.call('PEXPIRE', KEYS[5], 2 * ttl)
  end
  local out = {0, seq, now, expires, due}
  local over = redis.call('ZCARD', KEYS[3]) - max_pending
  if over > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, over - 1)) do table.insert(out, id) end
  end
  return out

elseif op == 'evict' then
  -- KEYS: msg, pending, due, dlq, relayed. ARGV: op, token, encid, dead_ttl, max_pending.
  -- Dead-letters a message the user's pending cap pushed out (reason overflow),
  -- if it is still pending and the user still over the cap.
  local f = kcall('HMGET', KEYS[1], 'state', 'req')
  if f[1] == 'dead' and f[2] == token then return dead_reply(KEYS[1]) end
  if f[1] ~= 'pending' or kcall('ZCARD', KEYS[2]) <= tonumber(ARGV[5]) then return {'kept'} end
  kill(KEYS[1], ARGV[3], KEYS[2], KEYS[3], KEYS[4], KEYS[5], 'overflow', now_ms(),
       tonumber(ARGV[4]), token)
  return dead_reply(KEYS[1])

elseif op == 'settle' then
  -- KEYS: msg, pending, due, relayed[, expiry index]. ARGV: op, token, encid, ttl,
  -- relayed_keep[, index member].
  -- Returns {state before, from|''}: `from` names the client a settled message
  -- was relayed from (its budget is given back). With the expiry index (one
  -- server), its entry goes too: unconditionally, as the pods do it on a cluster
  -- (an entry only exists while the message is pending).
  if KEYS[5] then kcall('ZREM', KEYS[5], ARGV[6]) end
  local f = kcall('HMGET', KEYS[1], 'state', 'stored_at', 'req', 'from')
  if not f[1] then return {'', ''} end
  if f[1] == 'acked' and f[3] == token then return {'pending', f[4] or ''} end
  if f[1] == 'pending' then
    redis.call('HSET', KEYS[1], 'state', 'acked', 'req', token)
    -- What stays is the idempotency record (state, seq); the body is done with.
    redis.call('HDEL', KEYS[1], 'body', 'type')
    kcall('ZREM', KEYS[2], ARGV[3])
    kcall('ZREM', KEYS[3], ARGV[3])
    -- Only a message relayed from a client (it has `from`) is in `relayed`.
    if f[4] then kcall('ZREM', KEYS[4], ARGV[3]) end
    -- Keep the id for the rest of the idempotency window (ack_ttl from storing;
    -- shorter for messages relayed from clients, which anyone can make).
    local keep = tonumber(ARGV[4])
    if f[4] then keep = math.min(keep, tonumber(ARGV[5])) end
    redis.call('PEXPIREAT', KEYS[1], math.max(num(KEYS[1], f[2]) + keep, now_ms() + 1000))
    return {'pending', f[4] or ''}
  end
  return {f[1], ''}

elseif op == 'page' then
  -- KEYS: due, pending, relayed, msg1..msgN. ARGV: op, token, hold_ms, since|'',
  -- encid1..encidN.
  -- One page of a replay: the messages that are pending, unexpired and stored
  -- at or after `since`, as {encid, fields}. With hold_ms, none of them falls
  -- due sooner than hold_ms from now (the client is getting them right now).
  local now = now_ms()
  local hold = tonumber(ARGV[3])
  local since = tonumber(ARGV[4] ~= '' and ARGV[4] or '0')
  local out = {}
  for i = 4, #KEYS do
    local key, encid = KEYS[i], ARGV[i + 1]
    local f = fields(key)
    local state = redis.call('HGET', key, 'state')
    if not state then
      -- Its record expired or was quarantined: the id must not linger.
      kcall('ZREM', KEYS[2], encid)
      kcall('ZREM', KEYS[1], encid)
      kcall('ZREM', KEYS[3], encid)
    elseif state == 'pending' and num(key, f[5]) > now and num(key, f[4]) >= since then
      if hold > 0 and num(key, f[7]) < now + hold then
        f[7] = now + hold
        redis.call('HSET', key, 'next_due', f[7])
        kcall('ZADD', KEYS[1], f[7], encid)
      end
      table.insert(out, {encid, f})
    end
  end
  return out

elseif op == 'claim' then
  -- KEYS: due, pending, dlq, claim, relayed, msg1..msgN. ARGV: op, token,
  -- max_attempts, retry, ttl, dead_ttl, encid1..encidN.
  -- Atomic per user: of many pods asking at once, one gets each due message per
  -- attempt. Returns {now, next_due|'', {'resend', encid, fields}... |
  -- {'dead', encid, reason, dead_at, fields}...}. A repeat of the same request
  -- gets what the first got (recorded in the claim hash for a minute).
  local now = now_ms()
  local rec = kcall('HMGET', KEYS[4], 'req', 'ids')
  local out = {now, ''}
  if rec[1] == token then
    for kind, encid in string.gmatch(rec[2] or '', '(%a):(%S+)') do
      local key = KEYS[5 + tonumber(string.match(encid, '^(%d+)/'))]
      local id = string.match(encid, '/(.*)$')
      if kind == 'r' then
        table.insert(out, {'resend', id, fields(key)})
      else
        local d = dead_reply(key)
        table.insert(out, {'dead', id, d[2], d[3], d[4]})
      end
    end
    out[2] = next_due(KEYS[1])
    return out
  end
  local max_attempts, retry = tonumber(ARGV[3]), tonumber(ARGV[4])
  local ttl, dead_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
  local done = {}
  for i = 6, #KEYS do
    local key, encid = KEYS[i], ARGV[i + 1]
    local f = kcall('HMGET', key, 'state', 'expires_at', 'next_due', 'attempts')
    if f[1] ~= 'pending' then
      kcall('ZREM', KEYS[1], encid)  -- settled or dead meanwhile: not due any more
      if not f[1] then  -- record gone: forget the id
        kcall('ZREM', KEYS[2], encid)
        kcall('ZREM', KEYS[5], encid)
      end
    elseif num(key, f[2]) <= now then
      local reason = expiry_reason(key, ttl)
      kill(key, encid, KEYS[2], KEYS[1], KEYS[3], KEYS[5], reason, now, dead_ttl, token)
      table.insert(out, {'dead', encid, reason, now, fields(key)})
      table.insert(done, 'd:' .. (i - 5) .. '/' .. encid)
    elseif num(key, f[3]) <= now then
      local attempts = num(key, f[4])
      if attempts >= max_attempts then
        kill(key, encid, KEYS[2], KEYS[1], KEYS[3], KEYS[5], 'max_attempts', now, dead_ttl,
             token)
        table.insert(out, {'dead', encid, 'max_attempts', now, fields(key)})
        table.insert(done, 'd:' .. (i - 5) .. '/' .. encid)
      else
        attempts = attempts + 1
        local due = now + backoff(retry, attempts)
        redis.call('HSET', key, 'attempts', attempts, 'next_due', due, 'req', token)
        kcall('ZADD', KEYS[1], due, encid)
        table.insert(out, {'resend', encid, fields(key)})
        table.insert(done, 'r:' .. (i - 5) .. '/' .. encid)
      end
    end
  end
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], 'req', token, 'ids', table.concat(done, ' '))
  redis.call('PEXPIRE', KEYS[4], 60000)
  out[2] = next_due(KEYS[1])
  return out

elseif op == 'defer' then
  -- KEYS: due, msg1..msgN. ARGV: op, token, first_ms, max_ms, encid1..encidN.
  -- Deliveries that reached no connection: due again soon (doubling per defer,
  -- capped), and the attempt they spent is given back. Returns next_due|''.
  local now = now_ms()
  local first, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
  for i = 2, #KEYS do
    local key, encid = KEYS[i], ARGV[i + 3]
    local f = kcall('HMGET', key, 'state', 'req', 'attempts', 'defers')
    if f[1] == 'pending' and f[2] ~= token then
      local defers = (tonumber(f[4]) or 0) + 1
      local due = now + math.min(cap, first * math.pow(2, math.min(defers - 1, 16)))
      redis.call('HSET', key, 'attempts', math.max(num(key, f[3]) - 1, 0), 'defers', defers,
                 'next_due', due, 'req', token)
      kcall('ZADD', KEYS[1], due, encid)
    end
  end
  return next_due(KEYS[1])

elseif op == 'expire' then
  -- KEYS: msg, pending, due, dlq, relayed. ARGV: op, token, encid, ttl, dead_ttl.
  -- For the sweeper.
  local f = kcall('HMGET', KEYS[1], 'state', 'expires_at', 'req')
  if f[1] == 'dead' and f[3] == token then return dead_reply(KEYS[1]) end
  if f[1] ~= 'pending' then return {'gone'} end
  local now = now_ms()
  if num(KEYS[1], f[2]) > now then return {'alive', f[2]} end
  local reason = expiry_reason(KEYS[1], tonumber(ARGV[4]))
  kill(KEYS[1], ARGV[3], KEYS[2], KEYS[3], KEYS[4], KEYS[5], reason, now, tonumber(ARGV[5]),
       token)
  return dead_reply(KEYS[1])

elseif op == 'revive' then
  -- KEYS: msg, seq, pending, due, dlq. ARGV: op, token, encid, body, ttl, retry, dead_ttl.
  -- (An operator's retry is the server's: relayed limits do not apply to it.)
  -- A dead letter becomes pending again in one step, as a new message (new seq,
  -- first attempt, stored now): an operator's retry never loses it in between.
  local f = kcall('HMGET', KEYS[1], 'state', 'req')
  if f[1] == 'pending' and f[2] == token then return fields(KEYS[1]) end
  if f[1] ~= 'dead' then return {} end
  local now = now_ms()
  local ttl, retry = tonumber(ARGV[5]), tonumber(ARGV[6])
  local seq = kcall('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], 2 * ttl)
  redis.call('HDEL', KEYS[1], 'dead_at', 'reason', 'defers', 'from')
  redis.call('HSET', KEYS[1], 'seq', seq, 'body', ARGV[4], 'stored_at', now,
             'expires_at', now + ttl, 'attempts', 1, 'next_due', now + retry,
             'state', 'pending', 'req', token)
  redis.call('PEXPIREAT', KEYS[1], now + ttl + tonumber(ARGV[7]))
  kcall('ZREM', KEYS[5], ARGV[3])
  kcall('ZADD', KEYS[3], seq, ARGV[3])
  kcall('ZADD', KEYS[4], now + retry, ARGV[3])
  return fields(KEYS[1])

elseif op == 'due' then
  -- KEYS: due index bucket. ARGV: op, token, limit.
  -- {now, next|'', user, since, ...}: users due by this server's clock (the
  -- caller's clock may be skewed), and when the first one not yet due falls due.
  local now = now_ms()
  local rows = kcall('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                     tonumber(ARGV[3]))
  local later = kcall('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local out = {now, later[2] or ''}
  for i = 1, #rows do table.insert(out, rows[i]) end
  return out

elseif op == 'forget' then
  -- KEYS: due index bucket. ARGV: op, token, user, since.
  -- Drop the user only if still due since `since` (nobody rescheduled it).
  local score = kcall('ZSCORE', KEYS[1], ARGV[3])
  if score and tonumber(score) == tonumber(ARGV[4]) then
    redis.call('ZREM', KEYS[1], ARGV[3])
    return 1
  end
  return 0

elseif op == 'reserve' then
  -- KEYS: a client's budget (zset "<recipient> <encid>" -> until). ARGV: op, token,
  -- member, until, cap. A message relayed from this client takes a place until it
  -- is acked or its dead letter is forgotten; 0 when every place is taken.
  if reserve(KEYS[1], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), now_ms()) then
    return 1
  end
  return 0

elseif op == 'quarantine' then
  -- KEYS: a corrupt key, where it goes. ARGV: op, token, keep_ms.
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
  return 1
end
return redis.error_reply('acks.lua: unknown op ' .. tostring(op))
