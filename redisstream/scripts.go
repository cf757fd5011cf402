package redisstream

import "github.com/redis/go-redis/v9"

// touchScript re-claims, for ARGV[2], the entries ARGV[4..] of stream
// KEYS[1] and group ARGV[1] that ARGV[2] still owns, setting their idle
// time to ARGV[3] ms without counting a delivery. Entries another consumer
// claimed meanwhile are left alone and returned; acknowledged ones are
// skipped. Atomic, so a live consumer never takes back an entry that was
// claimed from it.
//
// The XCLAIM arguments are built in one table and unpacked last: Lua
// expands a call's last argument only, so unpack(ids) followed by more
// arguments would pass the first ID alone (and keep one entry alive of
// all those held).
var touchScript = redis.NewScript(`
local lost = {}
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
local base = #args
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] then
    if p[1][2] == ARGV[2] then
      args[#args + 1] = ARGV[i]
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
end
if #args > base then
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[3]
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return lost
`)

// leaveScript deletes consumer ARGV[2] of group ARGV[1] on stream KEYS[1]
// only if it has no pending entries, so nothing pending is ever dropped.
var leaveScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
`)

// renewScript extends the leases KEYS that ARGV[1] holds to ARGV[2] ms and
// returns, per key, 1 if it was renewed and 0 if it is held by another
// member or expired.
var renewScript = redis.NewScript(`
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
`)

// releaseScript deletes the leases KEYS that ARGV[1] holds.
var releaseScript = redis.NewScript(`
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
`)

// acquireScript takes the lease KEYS[1] for ARGV[1] for ARGV[2] ms if it
// is free, or extends it if ARGV[1] holds it already (a lease this member
// gave up by its own clock while Redis still kept it, or whose SET
// succeeded without the reply arriving). It returns 1 if ARGV[1] holds the
// lease now, else 0.
var acquireScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)
