-- Presence scripts. Every call touches the keys of ONE hash slot: either one
-- pod's keys ({p:<pod>}) or one user's ({u:<user>}). ARGV[1] names the op.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The epoch counter of a pod id outlives its lives by a week, then goes: pod ids
-- that come and go (Kubernetes pod names) must not leave a key each forever.
local EPOCH_TTL_MS = 7 * 86400 * 1000

local op = ARGV[1]

if op == 'join' then
  -- KEYS: epoch, lease, info. ARGV: op, lease_ms, state, admin url ('' if none).
  -- A new life: a fresh epoch, so nothing of an earlier life with the same pod id counts.
  local epoch = redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], EPOCH_TTL_MS)
  local now = now_ms()
  redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'epoch', epoch, 'state', ARGV[3], 'heartbeat', now, 'started', now)
  if ARGV[4] and ARGV[4] ~= '' then redis.call('HSET', KEYS[3], 'admin', ARGV[4]) end
  return {epoch, now}

elseif op == 'heartbeat' then
  -- KEYS: lease, info, epoch. ARGV: op, epoch, lease_ms, state.
  -- Renews only our own life; 0 tells the caller its lease lapsed (join again).
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then
    return 0
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], EPOCH_TTL_MS)
  redis.call('HSET', KEYS[2], 'state', ARGV[4], 'heartbeat', now_ms())
  return 1

elseif op == 'unlink' then
  -- KEYS: user_conns. ARGV: op, conn, "<pod> <epoch> ".
  -- Removes the entry only if it still belongs to that life of that pod, so a late
  -- removal by an old life never erases the entry of a newer one.
  local v = redis.call('HGET', KEYS[1], ARGV[2])
  if v and string.sub(v, 1, #ARGV[3]) == ARGV[3] then
    redis.call('HDEL', KEYS[1], ARGV[2])
    return 1
  end
  return 0

elseif op == 'forget_life' then
  -- KEYS: index, info, lease. ARGV: op, epoch.
  -- Drops what is left of a dead life once its entries are unlinked.
  redis.call('DEL', KEYS[1])
  if redis.call('HGET', KEYS[2], 'epoch') == ARGV[2] then
    redis.call('DEL', KEYS[2])
  end
  if redis.call('GET', KEYS[3]) == ARGV[2] then
    redis.call('DEL', KEYS[3])
  end
  return 1
end
return redis.error_reply('presence.lua: unknown op ' .. tostring(op))
