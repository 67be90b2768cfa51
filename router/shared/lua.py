"""The Lua scripts that keep lanes in Redis: each capacity decision is one script, so one round trip and
atomic across replicas.

A lane's hash (``P:lane:{key}``) holds its buckets as ``<b>`` (level), ``<b>_t`` (when it was last
brought up to date), ``<b>_r`` (the rate per minute it counts by) and ``<b>_s`` (its size), for ``rq``
(requests), ``tk`` (tokens) and ``im`` (images; those two absent while not limited); ``blocked`` (the
429 back-off's end), ``taken`` (requests ever admitted: the sequence a reply's headers are compared by),
``reserved``/``reserved_im`` (the estimates of the leases in flight) and one ``L:<lease id>`` field per
lease ("tokens images", its estimates). The lane's ZSET (``P:lane:{key}:leases``) holds its leases,
scored by their expiry. A provider's hold-off (``P:provider:{id}``) is the time it ends, expiring with it.

The arithmetic is ``MemoryCapacity``'s (``router/pool/capacity.py``) line by line: buckets that refill up
to their size and may be overdrawn, a resize that keeps the level (at most the new size), a bucket newly
limited that starts full, admission on live leases, back-off, hold-off, a request token and token/image
levels above zero, post-consume. Every time is Redis ``TIME``; numbers leave as strings because Redis
truncates a Lua number it returns to an integer.
"""

from __future__ import annotations

# Shared by every lane script. Per-lane limits come as seven ARGV values from ``base``: the request rate
# (per minute, margin applied) and size, the concurrency cap, the token rate and size and the image rate
# and size (rate "0": not limited).
_LANE = """
local FIELDS = {'rq', 'rq_t', 'rq_r', 'rq_s', 'tk', 'tk_t', 'tk_r', 'tk_s', 'im', 'im_t', 'im_r', 'im_s',
  'blocked', 'taken', 'reserved', 'reserved_im'}
local BUCKETS = {'rq', 'tk', 'im'}

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function load(key)
  local values = redis.call('HMGET', key, unpack(FIELDS))
  local s = {key = key}
  for i, field in ipairs(FIELDS) do
    if field == 'rq_r' or field == 'tk_r' or field == 'im_r' then s[field] = values[i] or nil
    else s[field] = tonumber(values[i]) end
  end
  s.blocked = s.blocked or 0
  s.taken = s.taken or 0
  s.reserved = s.reserved or 0
  s.reserved_im = s.reserved_im or 0
  return s
end

-- The level of bucket b now, refilled at the rate it counted by (Bucket.level).
local function advance(s, b, now)
  local level = s[b]
  if level == nil then return end
  if now > s[b .. '_t'] then
    s[b] = math.min(s[b .. '_s'], level + (now - s[b .. '_t']) * tonumber(s[b .. '_r']) / 60)
    s[b .. '_t'] = now
  end
end

-- Bucket b counted at ``rate`` per minute (a string, compared as given) and ``size`` from now: the
-- level kept, at most the new size; a bucket newly limited starts full; rate "0" drops it.
local function limit(s, b, rate, size, now)
  if tonumber(rate) == 0 then
    s[b], s[b .. '_t'], s[b .. '_r'], s[b .. '_s'] = nil, nil, nil, nil
    return
  end
  if s[b] == nil then
    s[b] = size
    s[b .. '_t'] = now
  else
    advance(s, b, now)
    if s[b .. '_r'] ~= rate or s[b .. '_s'] ~= size then s[b] = math.min(s[b], size) end
  end
  s[b .. '_r'] = rate
  s[b .. '_s'] = size
end

local function take(s, b, amount, now)
  advance(s, b, now)
  s[b] = math.min(s[b .. '_s'], s[b] - amount)
end

local function lower_to(s, b, level, now)
  advance(s, b, now)
  if level < s[b] then s[b] = level end
end

-- Seconds until bucket b reaches ``level`` (Bucket.seconds_until); -1 for never.
local function seconds_until(s, b, level)
  local missing = level - s[b]
  if missing <= 0 then return 0 end
  if level > s[b .. '_s'] then return -1 end
  return missing / (tonumber(s[b .. '_r']) / 60)
end

local function limits(s, base, now)
  limit(s, 'rq', ARGV[base], tonumber(ARGV[base + 1]), now)
  limit(s, 'tk', ARGV[base + 3], tonumber(ARGV[base + 4]), now)
  limit(s, 'im', ARGV[base + 5], tonumber(ARGV[base + 6]), now)
end

local function save(s)
  local set, drop = {}, {}
  for _, field in ipairs(FIELDS) do
    local value = s[field]
    if value == nil then drop[#drop + 1] = field
    else
      set[#set + 1] = field
      set[#set + 1] = type(value) == 'number' and string.format('%.17g', value) or value
    end
  end
  redis.call('HSET', s.key, unpack(set))
  if #drop > 0 then redis.call('HDEL', s.key, unpack(drop)) end
end

local function estimates(s, id)
  local held = redis.call('HGET', s.key, 'L:' .. id)
  if not held then return nil end
  local tokens, images = string.match(held, '^(%S+) (%S+)$')
  return tonumber(tokens), tonumber(images)
end

-- Leases past their expiry (a replica that died, or lost Redis longer than the TTL) stop counting.
local function purge(s, leases, now)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', '(' .. string.format('%.17g', now))
  for _, id in ipairs(expired) do
    local tokens, images = estimates(s, id)
    if tokens ~= nil then
      s.reserved = s.reserved - tokens
      s.reserved_im = s.reserved_im - images
      redis.call('HDEL', s.key, 'L:' .. id)
    end
  end
  if #expired > 0 then redis.call('ZREM', leases, unpack(expired)) end
end

local function str(x)
  if x == nil then return '' end
  return string.format('%.17g', x)
end
"""

# KEYS: per candidate lane its hash, its leases and its provider's hold-off key. ARGV: lease id, TTL,
# demanded tokens, demanded images, then seven limit values per lane (see _LANE). Admits on the first
# lane that can take the request now; returns {admitted lane (1-based, 0: none), the lease's sequence
# number, Redis now, then six values per lane examined: in flight, wait (-1: only a release helps),
# request, token and image levels ('' when not limited), seconds blocked}.
ACQUIRE = (
    _LANE
    + """
local id, ttl = ARGV[1], tonumber(ARGV[2])
local want_tokens, want_images = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = clock()
local reply = {0, 0, str(now)}
for i = 1, #KEYS / 3 do
  local key, leases = KEYS[3 * i - 2], KEYS[3 * i - 1]
  local base = 5 + 7 * (i - 1)
  local s = load(key)
  limits(s, base, now)
  purge(s, leases, now)
  local in_flight = redis.call('ZCARD', leases)
  local cap = tonumber(ARGV[base + 2])
  local held = tonumber(redis.call('GET', KEYS[3 * i]) or '0') or 0
  local admits = in_flight < cap and now >= s.blocked and now >= held and s.rq >= 1
    and (s.tk == nil or s.tk > 0) and (s.im == nil or s.im > 0)
  local wait = -1
  if admits then
    s.taken = s.taken + 1
    take(s, 'rq', 1, now)
    local tokens = s.tk ~= nil and want_tokens or 0
    local images = s.im ~= nil and want_images or 0
    if tokens ~= 0 then
      take(s, 'tk', tokens, now)
      s.reserved = s.reserved + tokens
    end
    if images ~= 0 then
      take(s, 'im', images, now)
      s.reserved_im = s.reserved_im + images
    end
    redis.call('ZADD', leases, string.format('%.17g', now + ttl), id)
    redis.call('HSET', key, 'L:' .. id, tokens .. ' ' .. images)
    in_flight = in_flight + 1
    reply[1], reply[2] = i, s.taken
  elseif in_flight < cap then
    wait = math.max(s.blocked - now, held - now)
    local next_request = seconds_until(s, 'rq', 1)
    if next_request < 0 then wait = -1 else wait = math.max(wait, next_request) end
    for _, b in ipairs({'tk', 'im'}) do
      if wait >= 0 and s[b] ~= nil and s[b] <= 0 then
        -- Above zero, not at it: the broker admits while the level is positive.
        local until_positive = seconds_until(s, b, 1e-6)
        if until_positive < 0 then wait = -1 else wait = math.max(wait, until_positive) end
      end
    end
    if wait >= 0 then wait = math.max(0, wait) end
  end
  save(s)
  local seen = {in_flight, wait, s.rq, s.tk, s.im, math.max(0, s.blocked - now, held - now)}
  for k = 1, 6 do reply[#reply + 1] = str(seen[k]) end
  if admits then break end
end
return reply
"""
)

# KEYS: per lease its lane's hash and leases. ARGV: the release channel, then per lease its id, its lane's
# key (what the channel carries) and the actual tokens and images ('' when unknown: the estimate stands).
# A lease counts off once (ZREM says whether it still counted); the actual usage replaces its estimate.
# Returns each lane's leases in flight after.
RELEASE = (
    _LANE
    + """
local now = clock()
local reply = {}
for i = 1, #KEYS / 2 do
  local key, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 2 + 4 * (i - 1)
  local id = ARGV[base]
  if redis.call('ZREM', leases, id) == 1 then
    local s = load(key)
    local tokens, images = estimates(s, id)
    if tokens ~= nil then
      s.reserved = s.reserved - tokens
      s.reserved_im = s.reserved_im - images
      redis.call('HDEL', key, 'L:' .. id)
      local actual_tokens, actual_images = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
      if actual_tokens ~= nil and s.tk ~= nil then take(s, 'tk', actual_tokens - tokens, now) end
      if actual_images ~= nil and s.im ~= nil then take(s, 'im', actual_images - images, now) end
      save(s)
    end
    redis.call('PUBLISH', ARGV[1], ARGV[base + 1])
  end
  reply[i] = redis.call('ZCARD', leases)
end
return reply
"""
)

# KEYS: per reply its lane's hash. ARGV: per reply twelve values: the lane's seven limit values, the
# lease's sequence number and admission time (Redis seconds), then the reply's remaining requests, tokens
# and images ('' when absent). What the broker's levels (taken when it admitted that request, before it
# counted it) mean for ours now, as in _MemoryLease.observe; only ever lowered. One call takes every
# reply a flush has.
OBSERVE = (
    _LANE
    + """
local now = clock()
for i = 1, #KEYS do
  local base = 1 + 12 * (i - 1)
  local s = load(KEYS[i])
  limits(s, base, now)
  local seq, sent = tonumber(ARGV[base + 7]), tonumber(ARGV[base + 8])
  local since = now - sent
  local remaining = {tonumber(ARGV[base + 9]), tonumber(ARGV[base + 10]), tonumber(ARGV[base + 11])}
  if remaining[1] ~= nil then
    local rate = tonumber(s.rq_r) / 60
    lower_to(s, 'rq', remaining[1] + rate * since - 1 - (s.taken - seq), now)
  end
  for j, pair in ipairs({{'tk', s.reserved}, {'im', s.reserved_im}}) do
    local b, in_flight = pair[1], pair[2]
    if remaining[j + 1] ~= nil and s[b] ~= nil then
      lower_to(s, b, remaining[j + 1] + tonumber(s[b .. '_r']) / 60 * since - in_flight, now)
    end
  end
  save(s)
end
return str(now)
"""
)

# KEYS: the lane's hash. ARGV: seconds from now. The back-off ends at the later of its end and this one.
BACK_OFF = (
    _LANE
    + """
local now = clock()
local until_ = now + tonumber(ARGV[1])
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked') or '0') or 0
if until_ > blocked then redis.call('HSET', KEYS[1], 'blocked', string.format('%.17g', until_)) end
return str(now)
"""
)

# KEYS: the provider's hold-off key. ARGV: seconds from now. The later end wins; the key expires with it.
HOLD_OFF = (
    _LANE
    + """
local now = clock()
local seconds = tonumber(ARGV[1])
local held = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if now + seconds > held then
  local ms = math.max(1, math.ceil(seconds * 1000))
  redis.call('SET', KEYS[1], string.format('%.17g', now + seconds), 'PX', ms)
end
return str(now)
"""
)

# KEYS: per lane its leases. ARGV: the TTL, then per lane the number of its leases followed by their ids.
# Pushes the expiry of every lease that still counts (XX: one that expired stays gone; GT: never back).
# Returns each lane's leases in flight.
RENEW = (
    _LANE
    + """
local now = clock()
local expiry = string.format('%.17g', now + tonumber(ARGV[1]))
local reply, at = {}, 2
for i, leases in ipairs(KEYS) do
  local count = tonumber(ARGV[at])
  local args = {}
  for j = 1, count do
    args[#args + 1] = expiry
    args[#args + 1] = ARGV[at + j]
  end
  if count > 0 then redis.call('ZADD', leases, 'XX', 'GT', unpack(args)) end
  at = at + count + 1
  reply[i] = redis.call('ZCARD', leases)
end
return reply
"""
)

# KEYS: per lane its hash and leases. ARGV: the TTL, then per lane its seven limit values, the levels
# of the replica's own buckets while it counted alone (requests, tokens, images; "" where none), the
# number of its open leases and, for each, its id, its estimated tokens and images and 1 when Redis never
# saw it. Makes Redis count exactly these leases (a lease that expired meanwhile counts again, with its
# estimate) and lowers the lane's buckets to those levels (what the replicas sent alone drained the
# provider's). Returns Redis now, then per lane the sequence number its new
# leases take and its leases in flight.
ADOPT = (
    _LANE
    + """
local now = clock()
local expiry = string.format('%.17g', now + tonumber(ARGV[1]))
local reply, at = {str(now)}, 2
for i = 1, #KEYS / 2 do
  local key, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local s = load(key)
  limits(s, at, now)
  purge(s, leases, now)
  local alone = {tonumber(ARGV[at + 7]), tonumber(ARGV[at + 8]), tonumber(ARGV[at + 9])}
  for j, b in ipairs(BUCKETS) do
    if s[b] ~= nil and alone[j] ~= nil then lower_to(s, b, alone[j], now) end
  end
  local count = tonumber(ARGV[at + 10])
  at = at + 11
  for _ = 1, count do
    local id, tokens, images, fresh = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[at + 3]
    if fresh == '1' then s.taken = s.taken + 1 end
    if redis.call('ZSCORE', leases, id) == false then
      s.reserved = s.reserved + tokens
      s.reserved_im = s.reserved_im + images
      redis.call('HSET', key, 'L:' .. id, tokens .. ' ' .. images)
    end
    redis.call('ZADD', leases, 'GT', expiry, id)
    at = at + 4
  end
  save(s)
  reply[#reply + 1] = s.taken
  reply[#reply + 1] = redis.call('ZCARD', leases)
end
return reply
"""
)

# KEYS: the replicas ZSET. ARGV: this replica's id, the replica TTL and the channel that tells the others
# of a change. Marks this replica alive now and returns how many were alive in the last TTL (itself
# included); long-dead members are dropped. A replica new to the set says so, so that the others count
# again at once rather than at their next beat (a Redis lost meanwhile would leave them on a stale N).
PRESENCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
if redis.call('ZADD', KEYS[1], string.format('%.17g', now), ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[3], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now - 10 * ttl))
return redis.call('ZCOUNT', KEYS[1], string.format('%.17g', now - ttl), '+inf')
"""
