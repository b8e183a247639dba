"""
The Lua scripts that keep the cluster directory in Redis.

Every change to the directory is one script, so it is atomic: two nodes
that join the last free place of a room, or register one userId, at the same
moment cannot both succeed, as they could with a read and then a write.
ARGV[1] of every script is the key prefix and ARGV[2] the
calling node's id; the keys are built from it inside
the scripts, so the directory must live on one Redis server (not a Redis
Cluster).

Keys, after the prefix::

    nodes                    zset  node id -> last heartbeat (Redis TIME, ms)
    peers                    hash  peer id -> node id
    node:<node>:peers        set   the peers a node holds
    peer:<peer>:rooms        set   the rooms a peer is in
    peer:<peer>:user         str   the userId a peer holds (directory dialect)
    room:<room>              hash  peer id -> member blob
    roominfo:<room>          hash  created_at, verified_only, metadata
    rooms                    set   every room with a member
    user:<userId>            hash  node, peer, key, proven, at ('' node and
                                   peer while held for a reconnect)
    held                     zset  userId -> end of its hold (ms)
"""

from __future__ import annotations

_COMMON = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function members_of(room)
  local flat = redis.call('HGETALL', P .. 'room:' .. room)
  local out = {}
  for i = 1, #flat, 2 do
    local node = redis.call('HGET', P .. 'peers', flat[i]) or ''
    table.insert(out, {node, flat[i + 1]})
  end
  return out
end
local function leave_room(peer, room)
  local key = P .. 'room:' .. room
  local blob = redis.call('HGET', key, peer)
  redis.call('SREM', P .. 'peer:' .. peer .. ':rooms', room)
  if not blob then return false end
  redis.call('HDEL', key, peer)
  if redis.call('HLEN', key) == 0 then
    redis.call('DEL', key, P .. 'roominfo:' .. room)
    redis.call('SREM', P .. 'rooms', room)
  end
  return blob
end
local function release_user(peer, hold_ms, max_held, now)
  local link = P .. 'peer:' .. peer .. ':user'
  local user = redis.call('GET', link)
  if not user then return false end
  redis.call('DEL', link)
  local key = P .. 'user:' .. user
  if redis.call('HGET', key, 'peer') ~= peer then return false end
  redis.call('ZREMRANGEBYSCORE', P .. 'held', '-inf', now)
  if hold_ms > 0 and redis.call('HGET', key, 'proven') == '1'
      and redis.call('ZCARD', P .. 'held') < max_held then
    redis.call('HSET', key, 'node', '', 'peer', '')
    redis.call('PEXPIRE', key, hold_ms)
    redis.call('ZADD', P .. 'held', now + hold_ms, user)
  else
    redis.call('DEL', key)
  end
  return user
end
local function release_peer(peer, node, hold_ms, max_held, now)
  local left = {}
  redis.call('SREM', P .. 'node:' .. node .. ':peers', peer)
  local owner = redis.call('HGET', P .. 'peers', peer)
  if owner and owner ~= node then
    -- A late release of an id another node has claimed since: its rooms
    -- and userId are that node's now.
    return left, false
  end
  for _, room in ipairs(redis.call('SMEMBERS', P .. 'peer:' .. peer .. ':rooms')) do
    local blob = leave_room(peer, room)
    if blob then table.insert(left, {room, blob}) end
  end
  redis.call('DEL', P .. 'peer:' .. peer .. ':rooms')
  redis.call('HDEL', P .. 'peers', peer)
  return left, release_user(peer, hold_ms, max_held, now)
end
"""

#: ARGV: prefix, node. Scores the node with Redis's own clock, so the nodes'
#: clocks need not agree. Returns {was the node known (0/1), now in ms}: an
#: unknown node re-registers what it holds (Redis restarted empty, or the
#: node was reaped while it stalled).
HEARTBEAT = (
    _COMMON
    + """
local node = ARGV[2]
local now = now_ms()
local known = redis.call('ZSCORE', P .. 'nodes', node)
redis.call('ZADD', P .. 'nodes', now, node)
if known then return {1, now} end
return {0, now}
"""
)

#: ARGV: prefix, node, timeout ms, hold ms, max held. Removes every node not heard
#: from for the timeout with all it held. Returns one entry per dead node:
#: {node, {peer ids}, {{room, member blob}...}, {userIds gone offline}}.
#: Atomic, so when several nodes run it, each dead node is reported once.
REAP = (
    _COMMON
    + """
local timeout, hold, max_held = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local report = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', now - timeout)) do
  redis.call('ZREM', P .. 'nodes', node)
  local peers = redis.call('SMEMBERS', P .. 'node:' .. node .. ':peers')
  local left_all, users = {}, {}
  for _, peer in ipairs(peers) do
    local left, user = release_peer(peer, node, hold, max_held, now)
    for _, entry in ipairs(left) do table.insert(left_all, entry) end
    if user then table.insert(users, user) end
  end
  redis.call('DEL', P .. 'node:' .. node .. ':peers')
  table.insert(report, {node, peers, left_all, users})
end
return report
"""
)

#: ARGV: prefix, node, peer id. 1 if the id is now this node's, 0 if taken.
CLAIM = (
    _COMMON
    + """
local node, peer = ARGV[2], ARGV[3]
if redis.call('HSETNX', P .. 'peers', peer, node) == 0 then return 0 end
redis.call('SADD', P .. 'node:' .. node .. ':peers', peer)
return 1
"""
)

#: ARGV: prefix, node, peer id, hold ms, max held. The peer disconnected:
#: it leaves its rooms, its id is freed, its userId goes offline (held if
#: proven). Returns {{{room, member blob}...}, userId or ''}.
RELEASE = (
    _COMMON
    + """
local left, user = release_peer(ARGV[3], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5]), now_ms())
return {left, user or ''}
"""
)

#: ARGV: prefix, node, peer, room, member blob, max peers (0: no limit),
#: verified (0/1), room metadata blob. Capacity, verified-only rooms and
#: membership are checked and changed in one step. Returns {'ok',
#: {{node, member blob}...}} (the members, the joiner included) or
#: {'err', code}.
JOIN = (
    _COMMON
    + """
local node, peer, room, blob = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_peers, verified, meta = tonumber(ARGV[6]), ARGV[7], ARGV[8]
if redis.call('HGET', P .. 'peers', peer) ~= node then return {'err', 'peer-not-found'} end
local key, info = P .. 'room:' .. room, P .. 'roominfo:' .. room
if redis.call('HEXISTS', key, peer) == 1 then return {'err', 'already-in-room'} end
if redis.call('EXISTS', info) == 0 then
  redis.call('HSET', info, 'created_at', now_ms(), 'verified_only', verified, 'metadata', meta)
else
  if redis.call('HGET', info, 'verified_only') == '1' and verified ~= '1' then
    return {'err', 'forbidden'}
  end
  if max_peers > 0 and redis.call('HLEN', key) >= max_peers then
    return {'err', 'room-full'}
  end
end
redis.call('HSET', key, peer, blob)
redis.call('SADD', P .. 'peer:' .. peer .. ':rooms', room)
redis.call('SADD', P .. 'rooms', room)
return {'ok', members_of(room)}
"""
)

#: ARGV: prefix, node, peer, room. Returns the member blob, or nil if the
#: peer was not in the room.
LEAVE = (
    _COMMON
    + """
if redis.call('HGET', P .. 'peers', ARGV[3]) ~= ARGV[2] then return false end
return leave_room(ARGV[3], ARGV[4])
"""
)

#: ARGV: prefix, node, room. Returns {{node, member blob}...}.
MEMBERS = (
    _COMMON
    + """
return members_of(ARGV[3])
"""
)

#: ARGV: prefix, node, peer, userId, key, proven (0/1), gone peer or ''.
#: The directory dialect's rules (signaling/directory.py, Directory.check)
#: in one step. Returns {'ok', went online (0/1), replaced node, replaced
#: peer, userId released by this peer or ''} or {'err', code, holder node,
#: holder peer}.
REGISTER = (
    _COMMON
    + """
local node, peer, user, key, proven, gone = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local ukey = P .. 'user:' .. user
local e = redis.call('HMGET', ukey, 'node', 'peer', 'key', 'proven')
local e_node, e_peer, e_key, e_proven = e[1], e[2], e[3], e[4]
local went_online, old_node, old_peer = 1, '', ''
local new_proven = proven
if e_peer then
  local held = e_peer == ''
  if e_peer == peer then
    if e_proven == '1' and proven ~= '1' and e_key ~= key then
      return {'err', 'proof-required', '', ''}
    end
    if e_proven == '1' then new_proven = '1' end
  elseif e_proven == '1' then
    if proven ~= '1' then return {'err', 'proof-required', '', ''} end
    if e_key ~= key then return {'err', 'key-mismatch', '', ''} end
  elseif not held and not (proven == '1' and e_key == key) then
    if gone == '' or e_peer ~= gone then return {'err', 'user-id-in-use', e_node, e_peer} end
  end
  if not held then
    went_online = 0
    if e_peer ~= peer then old_node, old_peer = e_node, e_peer end
  end
end
local link = P .. 'peer:' .. peer .. ':user'
local previous, released = redis.call('GET', link), ''
if previous and previous ~= user then
  local pkey = P .. 'user:' .. previous
  if redis.call('HGET', pkey, 'peer') == peer then
    redis.call('DEL', pkey)
    released = previous
  end
end
if old_peer ~= '' then redis.call('DEL', P .. 'peer:' .. old_peer .. ':user') end
redis.call('PERSIST', ukey)
redis.call('ZREM', P .. 'held', user)
redis.call('HSET', ukey, 'node', node, 'peer', peer, 'key', key,
  'proven', new_proven, 'at', now_ms())
redis.call('SET', link, user)
return {'ok', went_online, old_node, old_peer, released}
"""
)

#: ARGV: prefix, node. Returns {live nodes, peers, rooms}, one snapshot.
STATS = (
    _COMMON
    + """
return {redis.call('ZCARD', P .. 'nodes'), redis.call('HLEN', P .. 'peers'),
  redis.call('SCARD', P .. 'rooms')}
"""
)

#: ARGV: prefix, node, peer. Gives up the peer's userId at once, without a
#: hold. Returns the userId or ''.
UNREGISTER = (
    _COMMON
    + """
return release_user(ARGV[3], 0, 0, now_ms()) or ''
"""
)

#: ARGV: prefix, node, peer, userId or '', key, proven, then room, member
#: blob, verified_only, room metadata blob, repeated. Puts back what a node
#: holds after Redis lost it (restarted empty). Rooms are restored without
#: a capacity check: their members were admitted already. Returns 1, or 0
#: if another node took the peer id meanwhile.
RESTORE = (
    _COMMON
    + """
local node, peer, user, key, proven = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local owner = redis.call('HGET', P .. 'peers', peer)
if owner and owner ~= node then return 0 end
redis.call('HSET', P .. 'peers', peer, node)
redis.call('SADD', P .. 'node:' .. node .. ':peers', peer)
for i = 7, #ARGV, 4 do
  local room = ARGV[i]
  local info = P .. 'roominfo:' .. room
  if redis.call('EXISTS', info) == 0 then
    redis.call('HSET', info, 'created_at', now_ms(),
      'verified_only', ARGV[i + 2], 'metadata', ARGV[i + 3])
  end
  redis.call('HSET', P .. 'room:' .. room, peer, ARGV[i + 1])
  redis.call('SADD', P .. 'peer:' .. peer .. ':rooms', room)
  redis.call('SADD', P .. 'rooms', room)
end
if user ~= '' then
  local ukey = P .. 'user:' .. user
  local holder = redis.call('HGET', ukey, 'peer')
  if not holder or holder == '' or holder == peer then
    redis.call('PERSIST', ukey)
    redis.call('ZREM', P .. 'held', user)
    redis.call('HSET', ukey, 'node', node, 'peer', peer, 'key', key,
      'proven', proven, 'at', now_ms())
    redis.call('SET', P .. 'peer:' .. peer .. ':user', user)
  end
end
return 1
"""
)

#: ARGV: prefix, node, peer, new node. Hands a peer this node holds, with
#: its rooms, to another node (a session resumed there). Returns 1, or 0 if
#: the peer is not this node's.
MOVE = (
    _COMMON
    + """
local node, peer, to = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', P .. 'peers', peer) ~= node then return 0 end
redis.call('HSET', P .. 'peers', peer, to)
redis.call('SREM', P .. 'node:' .. node .. ':peers', peer)
redis.call('SADD', P .. 'node:' .. to .. ':peers', peer)
return 1
"""
)

#: ARGV: prefix, node, token digest (hex), ms to live. Names this node as
#: the holder of a resumable session.
RESUME_ISSUE = (
    _COMMON
    + """
redis.call('SET', P .. 'resume:' .. ARGV[3], ARGV[2], 'PX', ARGV[4])
return 1
"""
)

#: ARGV: prefix, node, token digest (hex). Single use: returns the node
#: holding the session and forgets the token, or '' for an unknown one.
RESUME_CLAIM = (
    _COMMON
    + """
local key = P .. 'resume:' .. ARGV[3]
local holder = redis.call('GET', key)
if not holder then return '' end
redis.call('DEL', key)
return holder
"""
)

#: ARGV: prefix, node, token digest (hex). Forgets a token this node holds.
RESUME_FORGET = (
    _COMMON
    + """
local key = P .. 'resume:' .. ARGV[3]
if redis.call('GET', key) == ARGV[2] then redis.call('DEL', key) end
return 1
"""
)
