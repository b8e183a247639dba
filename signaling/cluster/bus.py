"""
The Redis bus: how the hubs of several processes or hosts reach each other.

Each node (a process) has one Redis channel, C{<prefix>node:<node id>}, and
subscribes to it alone. A message for a peer on another node is published
to that node's channel on the one connection this node publishes relayed
messages on, so that messages between two peers keep their order (a pool
of connections reorders them). C{PUBLISH} answers how many subscribers got
the message: 0 means the node is gone, and the sender is told "dropped".

Who is where (peer -> node, room -> members, userId -> holder) is kept in
Redis by the Lua scripts of L{signaling.cluster.scripts}, each one atomic,
run on a small pool of connections. Nodes prove they are alive with a
heartbeat; any node reaps the ones that stopped and announces what they
held. The bus remembers what its own node registered, so that when Redis
comes back empty it puts it all back.

Nothing here knows a dialect or a transport: it moves L{Envelope}s and
keeps the directory; the glue that turns hub events into envelopes and back
comes on top of it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
import orjson
import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from ..errors import AlreadyInRoom, HubError, PeerNotFound, RoomFull, VerifiedOnly
from ..hub import Member
from ..ids import IdShape, IdSource
from ..logs import Logger
from . import scripts
from .address import RedisAddress
from .envelope import (
    Envelope,
    InvalidEnvelope,
    decode_envelope,
    decode_member,
    encode_envelope,
    encode_member,
)
from .results import (
    BusUnavailable,
    ClusterStats,
    DirectoryRefused,
    NodeDeath,
    Registered,
    Released,
    RemoteMember,
    UserBinding,
    death_from_payload,
    death_to_payload,
)

#: Seconds between two heartbeats of a node.
HEARTBEAT_INTERVAL = 0.5
#: Seconds without a heartbeat after which a node is reaped as dead.
NODE_TIMEOUT = 2.0
#: Connections for directory commands (the Lua scripts).
POOL_SIZE = 4
#: Every key and channel of the bus starts with this, so that several
#: clusters may share one Redis.
KEY_PREFIX = "signaling:"
#: Seconds to wait for Redis to answer a command before giving up on it.
REPLY_TIMEOUT = 5.0
#: Longest wait, in seconds, between two attempts to reconnect to Redis.
RECONNECT_MAX_DELAY = 2.0
#: How many fresh ids L{RedisBus.allocate_id} tries before giving up.
ALLOCATE_ATTEMPTS = 16
#: The envelope kind of the announcement of a reaped node, sent to every
#: other node; never a dialect's kind.
NODE_DEAD = "bus:node-dead"
#: The envelope kind of the latency probe a node sends itself at every
#: heartbeat; it never leaves the node's own channel.
PROBE = "bus:probe"

_ERRORS: dict[str, type[HubError]] = {
    "room-full": RoomFull,
    "forbidden": VerifiedOnly,
    "already-in-room": AlreadyInRoom,
    "peer-not-found": PeerNotFound,
}


@attrs.frozen
class BusSettings:
    """
    The bus's tunables; each is meant to become a twistd option.

    :ivar hold_seconds: How long a userId registered with proof stays bound
        after its peer (or its peer's node) went away.
    :ivar max_held: How many offline userIds the cluster holds at once.
    """

    heartbeat_interval: float = HEARTBEAT_INTERVAL
    node_timeout: float = NODE_TIMEOUT
    pool_size: int = POOL_SIZE
    key_prefix: str = KEY_PREFIX
    reply_timeout: float = REPLY_TIMEOUT
    reconnect_max_delay: float = RECONNECT_MAX_DELAY
    hold_seconds: float = 60.0
    max_held: int = 10_000


@attrs.define(eq=False)
class _Holding:
    """
    What this node registered for one peer, to put back after Redis lost it.
    """

    rooms: dict[str, tuple[bytes, bool, bytes]] = attrs.Factory(dict)
    user: tuple[str, str, bool] | None = None


class _Handshake:
    """
    A connection's AUTH and SELECT, done before txredisapi's own
    C{connectionMade} marks it ready.

    txredisapi stops reconnecting for good when either fails, even when
    the connection was merely lost meanwhile (Redis restarting); here only
    a refusal stops it, and a lost connection is retried. A PING when
    there is nothing to send waits for TLS's handshake, so a connection is
    ready only once it works.
    """

    def connectionMade(self):
        return defer.ensureDeferred(self._handshake())

    async def _handshake(self) -> None:
        password, dbid = self.password, self.dbid
        # Done here; txredisapi's connectionMade then only marks it ready.
        self.password = self.dbid = None
        bus = self.factory.bus
        try:
            if password is not None:
                await self.auth(password, self.username)
            if dbid:
                await self.select(dbid)
            if password is None and not dbid:
                await self.ping()
        except txredisapi.ConnectionError:
            return
        except txredisapi.ResponseError as error:
            bus._log.error(
                "redis at {address} refused this node: {error}",
                address=bus.address.describe(),
                error=str(error),
            )
            self.factory.stopTrying()
            self.transport.loseConnection()
            self.factory.connectionError(f"redis refused: {error}")
            return
        bus._connected()
        await super().connectionMade()

    def connectionLost(self, reason):
        if not self._ready:
            self.factory.bus._connection_failed(reason)
        super().connectionLost(reason)


class _Command(_Handshake, txredisapi.RedisProtocol):
    """
    A connection for commands and publishing.
    """


class _Subscriber(_Handshake, txredisapi.SubscriberProtocol):
    """
    The connection this node receives its channel on. Redis forgets
    subscriptions when it restarts, so every (re)connection subscribes.
    """

    def connectionMade(self):
        ready = super().connectionMade()
        ready.addCallback(self._subscribe)
        return ready

    def _subscribe(self, _):
        if not self._ready:
            return None
        bus = self.factory.bus
        subscribed = self.subscribe(bus.channel(bus.node_id))
        subscribed.addCallbacks(lambda _: bus._subscribed(), lambda f: None)
        return subscribed

    def messageReceived(self, pattern, channel, message):
        self.factory.bus._received(message)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


@attrs.define(eq=False)
class RedisBus:
    """
    One node's link to the cluster.

    :ivar address: The Redis server.
    :ivar node_id: This node's id, unique in the cluster (host name + pid
        by default in the options to come).
    :ivar reactor: Makes the connections (an C{IReactorTCP} and
        C{IReactorUNIX}) and keeps time for the heartbeat.
    """

    address: RedisAddress
    node_id: str
    reactor: IReactorTime
    settings: BusSettings = attrs.Factory(BusSettings)
    ids: IdSource = attrs.Factory(IdSource)
    _pool: Any = None
    _publisher: Any = None
    _subscriber: Any = None
    _next_conn: int = 0
    _envelope_callbacks: list = attrs.Factory(list)
    _dead_callbacks: list = attrs.Factory(list)
    _reconnected_callbacks: list = attrs.Factory(list)
    _restored_callbacks: list = attrs.Factory(list)
    _heartbeat: LoopingCall | None = None
    #: The heartbeat under way, if any; one at a time.
    _beating: defer.Deferred | None = None
    _connect_failure_logged: bool = False
    #: Whether Redis answered the last heartbeat.
    available: bool = True
    _ready: defer.Deferred | None = None
    _holdings: dict[str, _Holding] = attrs.Factory(dict)
    #: Peers released while Redis was away, released again by the heartbeat.
    _unreleased: set[str] = attrs.Factory(set)
    #: For /metrics, integer counts only: envelopes published, those no
    #: node got (gone, or Redis away), reconnections to Redis, and the live
    #: nodes at the last heartbeat.
    published: int = 0
    publish_dropped: int = 0
    reconnects: int = 0
    nodes_alive: int = 0
    #: Called with each probe's seconds through Redis, if set.
    probe_observer: Callable[[float], None] | None = None
    _log = Logger()

    # lifetime

    def channel(self, node_id: str) -> str:
        return self.settings.key_prefix + "node:" + node_id

    def start(self) -> defer.Deferred:
        """
        Connect, subscribe to this node's channel, heartbeat once, and keep
        heartbeating.

        :return: Fires once the bus can be used. While Redis cannot be
            reached it keeps trying; a refusal (a wrong password or
            database) fails it with L{BusUnavailable}.
        """
        self._pool = self._factory(txredisapi.RedisFactory, self.settings.pool_size)
        self._publisher = self._factory(txredisapi.RedisFactory, 1)
        self._subscriber = self._factory(txredisapi.SubscriberFactory, 1)
        self._pool.protocol = self._publisher.protocol = _Command
        self._subscriber.protocol = _Subscriber
        self._ready = defer.Deferred()
        for factory in (self._pool, self._publisher, self._subscriber):
            factory.startConnecting(self.address.endpoint(self.reactor))
        factories = (self._pool, self._publisher, self._subscriber)
        waits = [factory.deferred for factory in factories] + [self._ready]
        started = defer.gatherResults(waits, consumeErrors=True)
        started.addErrback(_refused)
        started.addCallback(lambda _: self._beat())
        started.addCallback(lambda _: self._start_heartbeat())
        return started

    def _factory(self, kind, size: int):
        address = self.address
        if kind is txredisapi.SubscriberFactory:
            factory = kind()
        else:
            factory = kind(
                address.describe(),
                # Database 0 needs no SELECT.
                address.db or None,
                size,
                charset=None,
                password=address.password,
                username=address.username,
                replyTimeout=self.settings.reply_timeout,
                convertNumbers=False,
            )
        # Raw bytes in and out: envelopes and member blobs are ours to
        # decode, and numbers must not be guessed from strings.
        factory.charset = None
        factory.convertNumbers = False
        factory.password = address.password
        factory.username = address.username
        factory.bus = self
        factory.initialDelay = min(0.1, self.settings.reconnect_max_delay)
        factory.maxDelay = self.settings.reconnect_max_delay
        return factory

    def _start_heartbeat(self) -> None:
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.settings.heartbeat_interval, now=False)

    def stop_heartbeat(self) -> None:
        """
        Stop heartbeating (and so reaping), as a node does when it dies;
        the other nodes reap it after L{BusSettings.node_timeout}.
        """
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None

    @defer.inlineCallbacks
    def stop(self):
        """
        Leave the cluster and disconnect. This node is marked as long dead,
        so the next heartbeat of any other node reaps it and announces
        whatever peers it still held gone.
        """
        self.stop_heartbeat()
        if self._beating is not None:
            # Its score must not land after the one that marks us dead.
            yield self._beating
        connection = self._connection(self._pool)
        if connection is not None:
            try:
                yield connection.zadd(
                    self.settings.key_prefix + "nodes", 0, self.node_id
                )
            except txredisapi.RedisError:
                pass
        for factory in (self._subscriber, self._publisher, self._pool):
            if factory is not None:
                yield factory.disconnect()

    # envelopes

    def on_envelope(self, callback: Callable[[Envelope], None]) -> None:
        """
        Call C{callback} with every envelope that arrives for this node, in
        the order each sender sent them.
        """
        self._envelope_callbacks.append(callback)

    def on_node_dead(self, callback: Callable[[NodeDeath], None]) -> None:
        """
        Call C{callback} when a node was reaped, with what it held, so that
        its peers can be announced gone. Every live node is called once per
        dead node.
        """
        self._dead_callbacks.append(callback)

    def on_reconnected(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} each time this node's channel is subscribed again
        after Redis was lost: what was published meanwhile was dropped, and
        what this node caches of the directory may be out of date.
        """
        self._reconnected_callbacks.append(callback)

    def on_restored(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} each time this node put back what it registered
        because Redis had lost it (Redis restarted empty, or this node was
        reaped while it stalled): the other nodes may have announced its
        peers gone meanwhile.
        """
        self._restored_callbacks.append(callback)

    def send(self, node_id: str, envelope: Envelope) -> defer.Deferred:
        """
        Publish C{envelope} to C{node_id}'s channel.

        Envelopes sent by one node keep their order. Nothing is queued
        while Redis is away: they are dropped at once.

        :return: Fires with C{True} if the node got it, C{False} if it was
            dropped (the node is gone, or Redis cannot be reached).
        :raises TypeError: The payload or extra holds what JSON cannot
            carry (a bug of the caller, raised at once).
        """
        return self.send_bytes(node_id, encode_envelope(envelope))

    def can_publish(self) -> bool:
        """
        Whether L{send} can reach Redis now (else it drops at once).
        """
        return self._connection(self._publisher) is not None

    def send_bytes(self, node_id: str, data: bytes) -> defer.Deferred:
        """
        Like L{send}, for an envelope encoded once for several nodes.
        """
        connection = self._connection(self._publisher)
        self.published += 1
        if connection is None:
            self.publish_dropped += 1
            return defer.succeed(False)
        published = connection.publish(self.channel(node_id), data)
        return published.addCallbacks(self._delivered, self._not_delivered)

    def _delivered(self, receivers: int) -> bool:
        if receivers > 0:
            return True
        self.publish_dropped += 1
        return False

    def _not_delivered(self, failure: Failure) -> bool:
        self.publish_dropped += 1
        return False

    def _received(self, data: bytes) -> None:
        try:
            envelope = decode_envelope(data)
        except InvalidEnvelope as error:
            self._log.warn("dropped a message from the bus: {error}", error=str(error))
            return
        if envelope.kind == NODE_DEAD:
            try:
                death = death_from_payload(envelope.payload)
            except (InvalidEnvelope, KeyError, TypeError, ValueError) as error:
                self._log.warn(
                    "dropped a malformed node death: {error}", error=str(error)
                )
                return
            self._tell_dead(death)
            return
        if envelope.kind == PROBE:
            if self.probe_observer is not None and isinstance(
                envelope.payload, (int, float)
            ):
                self.probe_observer(max(0.0, self.reactor.seconds() - envelope.payload))
            return
        for callback in self._envelope_callbacks:
            try:
                callback(envelope)
            except Exception:
                self._log.failure("handling an envelope from the bus failed")

    # heartbeat and reaping

    def _beat(self) -> defer.Deferred:
        if self._beating is None:
            self._beating = self._beat_once()
            self._beating.addBoth(self._beat_done)
        return self._beating

    def _beat_done(self, _) -> None:
        self._beating = None

    @defer.inlineCallbacks
    def _beat_once(self):
        try:
            known, _now = yield self._eval(scripts.HEARTBEAT)
            if not known and self._holdings:
                yield self._restore()
                for callback in self._restored_callbacks:
                    try:
                        callback()
                    except Exception:
                        self._log.failure("handling a re-registration failed")
            for peer_id in list(self._unreleased):
                yield self._release(peer_id)
            deaths = yield self._reap()
            self.nodes_alive = len((yield self.nodes()))
            if self.probe_observer is not None:
                self._probe()
            if not self.available:
                self.available = True
                self._log.info(
                    "redis is reachable again at {address}",
                    address=self.address.describe(),
                )
            for death in deaths:
                yield self._announce_death(death)
        except (BusUnavailable, txredisapi.RedisError) as error:
            # Lost, timed out, or refused by Redis itself (out of memory,
            # a read-only replica, ...): said once, tried again next beat.
            if self.available:
                self.available = False
                self._log.warn(
                    "redis unreachable at {address} ({error}); retrying",
                    address=self.address.describe(),
                    error=str(error) or type(error).__name__,
                )
        except Exception:
            self._log.failure("heartbeat failed")

    def _probe(self) -> None:
        """
        Time one envelope through Redis, from this node's publishing
        connection to its own subscription: the path, and the one clock,
        of a message between two nodes, without a timestamp in every
        relayed envelope.
        """
        probe = encode_envelope(Envelope(PROBE, None, None, (), self.reactor.seconds()))
        connection = self._connection(self._publisher)
        if connection is not None:
            connection.publish(self.channel(self.node_id), probe).addErrback(
                lambda _: None
            )

    @defer.inlineCallbacks
    def _reap(self):
        settings = self.settings
        report = yield self._eval(
            scripts.REAP,
            int(settings.node_timeout * 1000),
            int(settings.hold_seconds * 1000),
            settings.max_held,
        )
        deaths = []
        for node, peers, left, users in report:
            deaths.append(
                NodeDeath(
                    node=_decode(node),
                    peers=tuple(_decode(peer) for peer in peers),
                    left=self._left(left),
                    user_ids=tuple(_decode(user) for user in users),
                )
            )
        return deaths

    @defer.inlineCallbacks
    def _announce_death(self, death: NodeDeath):
        self._log.info(
            "node {node} stopped heartbeating; {count} peers gone",
            node=death.node,
            count=len(death.peers),
        )
        self._tell_dead(death)
        announcement = encode_envelope(
            Envelope(NODE_DEAD, None, None, (), death_to_payload(death))
        )
        for node in (yield self.nodes()):
            if node != self.node_id:
                yield self.send_bytes(node, announcement)

    def _tell_dead(self, death: NodeDeath) -> None:
        for callback in self._dead_callbacks:
            try:
                callback(death)
            except Exception:
                self._log.failure(
                    "handling the death of node {node} failed", node=death.node
                )

    def _connected(self) -> None:
        self._connect_failure_logged = False

    def _connection_failed(self, reason: Failure) -> None:
        """
        A connection was lost before it became usable: say why once, not
        at every retry (a certificate Redis's name does not match, ...).
        """
        if not self._connect_failure_logged:
            self._connect_failure_logged = True
            self._log.warn(
                "could not connect to redis at {address}: {error}; retrying",
                address=self.address.describe(),
                error=reason.getErrorMessage(),
            )

    def _subscribed(self) -> None:
        if self._ready is not None and not self._ready.called:
            self._ready.callback(None)
        elif self._heartbeat is not None:
            # A reconnect: Redis may have restarted empty; check at once
            # rather than at the next heartbeat.
            self.reconnects += 1
            self._beat()
            for callback in self._reconnected_callbacks:
                try:
                    callback()
                except Exception:
                    self._log.failure("handling a reconnection to redis failed")

    # re-registration

    @defer.inlineCallbacks
    def _restore(self):
        """
        Put back every peer this node holds, with its rooms and userId,
        after Redis lost them. The scripts go out at once, pipelined over
        the pool, rather than one round trip after another.
        """
        holdings = list(self._holdings.items())
        restores = []
        for peer_id, holding in holdings:
            user_id, key, proven = holding.user or ("", "", False)
            args: list[Any] = [peer_id, user_id, key, int(proven)]
            for room, (blob, verified, room_metadata) in holding.rooms.items():
                args += [room, blob, int(verified), room_metadata]
            restores.append(self._eval(scripts.RESTORE, *args))
        results = yield defer.gatherResults(restores, consumeErrors=True)
        for (peer_id, _), restored in zip(holdings, results, strict=True):
            if not restored:
                self._log.warn(
                    "peer {peer} was claimed by another node meanwhile", peer=peer_id
                )
        self._log.info("re-registered {count} peers with redis", count=sum(results))

    # directory

    def _connection(self, factory):
        if factory is None:
            return None
        pool = [connection for connection in factory.pool if connection.connected]
        if not pool:
            return None
        self._next_conn = (self._next_conn + 1) % len(pool)
        return pool[self._next_conn]

    def _eval(self, script: str, *args: Any) -> defer.Deferred:
        connection = self._connection(self._pool)
        if connection is None:
            return defer.fail(BusUnavailable("redis is not connected"))
        return connection.eval(
            script, [], [self.settings.key_prefix, self.node_id, *args]
        )

    @defer.inlineCallbacks
    def nodes(self):
        """
        The ids of the live nodes, this one included.
        """
        connection = self._connection(self._pool)
        if connection is None:
            raise BusUnavailable("redis is not connected")
        nodes = yield connection.zrange(self.settings.key_prefix + "nodes", 0, -1)
        return [_decode(node) for node in nodes]

    @defer.inlineCallbacks
    def stats(self):
        """
        Fires with the cluster's L{ClusterStats}.
        """
        nodes, peers, rooms = yield self._eval(scripts.STATS)
        return ClusterStats(nodes, peers, rooms)

    @defer.inlineCallbacks
    def claim_peer(self, peer_id: str):
        """
        Make C{peer_id} this node's, if no node has it.

        :return: Fires with whether it was free.
        """
        claimed = yield self._eval(scripts.CLAIM, peer_id)
        if claimed:
            self._holdings[peer_id] = _Holding()
        return bool(claimed)

    @defer.inlineCallbacks
    def allocate_id(self, shape: IdShape):
        """
        A fresh peer id of C{shape}, unique in the whole cluster and claimed
        for this node (the envelope dialect's 8-hex ids have only 32 bits).

        :raises BusUnavailable: Redis is away, or no free id was found in
            L{ALLOCATE_ATTEMPTS} tries.
        """
        for _ in range(ALLOCATE_ATTEMPTS):
            peer_id = self.ids.new_id(shape, self.reactor.seconds())
            if (yield self.claim_peer(peer_id)):
                return peer_id
        raise BusUnavailable(f"no free {shape.value} id in {ALLOCATE_ATTEMPTS} tries")

    @defer.inlineCallbacks
    def release_peer(self, peer_id: str):
        """
        C{peer_id} disconnected: out of its rooms, its id free, its userId
        offline (held if proven).

        While Redis is away this does not fail: the answer comes from what
        this node registered, and the release is carried out by a later
        heartbeat, so that no ghost of the peer stays in the directory.

        :return: Fires with L{Released}, so the rooms can be told.
        """
        holding = self._holdings.pop(peer_id, None) or _Holding()
        try:
            return (yield self._release(peer_id))
        except (BusUnavailable, txredisapi.ConnectionError):
            self._unreleased.add(peer_id)
            rooms = holding.rooms.items()
            return Released(
                left=tuple((room, decode_member(blob)) for room, (blob, _, _) in rooms),
                user_id=holding.user[0] if holding.user else None,
            )

    @defer.inlineCallbacks
    def _release(self, peer_id: str):
        settings = self.settings
        left, user = yield self._eval(
            scripts.RELEASE,
            peer_id,
            int(settings.hold_seconds * 1000),
            settings.max_held,
        )
        self._unreleased.discard(peer_id)
        return Released(left=self._left(left), user_id=_decode(user) or None)

    @defer.inlineCallbacks
    def join(
        self,
        room: str,
        member: Member,
        max_peers: int = 0,
        room_metadata: Mapping[str, Any] | None = None,
    ):
        """
        Put C{member} (a peer this node claimed) into C{room}, checking the
        room's capacity and verified-only rule atomically for the whole
        cluster.

        :param max_peers: The room's capacity; 0 for none.
        :param room_metadata: The room's metadata, if this join creates it.
        :return: Fires with the members (the joiner included) as
            L{RemoteMember}s.
        :raises RoomFull, VerifiedOnly, AlreadyInRoom, PeerNotFound: As the
            hub's join would.
        """
        blob = encode_member(member)
        verified = member.verified_user_id is not None
        meta = orjson.dumps(dict(room_metadata or {}))
        reply = yield self._eval(
            scripts.JOIN, member.peer_id, room, blob, max_peers, int(verified), meta
        )
        status, detail = reply
        if status == b"err":
            code = _decode(detail)
            raise _ERRORS[code](f"{code}: room {room!r}")
        holding = self._holdings.setdefault(member.peer_id, _Holding())
        holding.rooms[room] = (blob, verified, meta)
        return self._remote_members(detail)

    @defer.inlineCallbacks
    def leave(self, room: str, peer_id: str):
        """
        Take C{peer_id} out of C{room}.

        :return: Fires with its L{Member}, or L{None} if it was not there.
        """
        holding = self._holdings.get(peer_id)
        if holding is not None:
            holding.rooms.pop(room, None)
        blob = yield self._eval(scripts.LEAVE, peer_id, room)
        return None if blob is None else self._member(blob)

    @defer.inlineCallbacks
    def move_peer(self, peer_id: str, node_id: str):
        """
        Hand C{peer_id}, which this node holds, with its rooms, to
        C{node_id} (its session was resumed there).

        :return: Fires with whether the peer was this node's.
        """
        moved = yield self._eval(scripts.MOVE, peer_id, node_id)
        if moved:
            self._holdings.pop(peer_id, None)
        return bool(moved)

    def moved_in(
        self, peer_id: str, rooms: list[tuple[str, Member, bool, Mapping[str, Any]]]
    ) -> None:
        """
        Note that another node handed C{peer_id} to this one
        (L{move_peer}) in C{rooms} (name, member, verified-only, room
        metadata), to put back after Redis lost it.
        """
        holding = self._holdings.setdefault(peer_id, _Holding())
        for room, member, verified_only, metadata in rooms:
            holding.rooms[room] = (
                encode_member(member),
                verified_only,
                orjson.dumps(dict(metadata)),
            )

    def issue_resume(self, digest: str, ttl: float) -> defer.Deferred:
        """
        Name this node, for C{ttl} seconds, as the holder of the session
        whose resume token has C{digest} (hex).
        """
        return self._eval(scripts.RESUME_ISSUE, digest, int(ttl * 1000))

    @defer.inlineCallbacks
    def claim_resume(self, digest: str):
        """
        Take the resume token with C{digest} (hex), once in the cluster.

        :return: Fires with the node holding its session, or L{None}.
        """
        holder = yield self._eval(scripts.RESUME_CLAIM, digest)
        return _decode(holder) or None

    def forget_resume(self, digest: str) -> defer.Deferred:
        """
        Revoke the resume token with C{digest} (hex), if this node holds it.
        """
        return self._eval(scripts.RESUME_FORGET, digest)

    @defer.inlineCallbacks
    def members(self, room: str):
        """
        Fires with C{room}'s members in the whole cluster, as
        L{RemoteMember}s (an empty list for no such room).
        """
        reply = yield self._eval(scripts.MEMBERS, room)
        return self._remote_members(reply)

    def _member(self, blob: bytes) -> Member | None:
        try:
            return decode_member(blob)
        except InvalidEnvelope as error:
            # Written by a node of another release: left out, not fatal.
            self._log.warn("ignored a member blob: {error}", error=str(error))
            return None

    def _remote_members(self, pairs: list) -> list[RemoteMember]:
        members = [(node, self._member(blob)) for node, blob in pairs]
        return [
            RemoteMember(_decode(node), member) for node, member in members if member
        ]

    def _left(self, pairs: list) -> tuple[tuple[str, Member], ...]:
        left = [(room, self._member(blob)) for room, blob in pairs]
        return tuple((_decode(room), member) for room, member in left if member)

    @defer.inlineCallbacks
    def room_names(self):
        """
        Fires with the name of every room of the cluster that has a member.
        """
        connection = self._connection(self._pool)
        if connection is None:
            raise BusUnavailable("redis is not connected")
        names = yield connection.smembers(self.settings.key_prefix + "rooms")
        return sorted(_decode(name) for name in names)

    @defer.inlineCallbacks
    def room_info(self, room: str):
        """
        Fires with C{room}'s (metadata, verified only) as its first member's
        join set them; an empty metadata and L{False} for no such room.
        """
        connection = self._connection(self._pool)
        if connection is None:
            raise BusUnavailable("redis is not connected")
        metadata, verified_only = yield connection.hmget(
            self.settings.key_prefix + "roominfo:" + room, ["metadata", "verified_only"]
        )
        try:
            loaded = orjson.loads(metadata) if metadata else {}
        except orjson.JSONDecodeError:
            loaded = {}
        return (loaded if isinstance(loaded, dict) else {}, verified_only == b"1")

    @defer.inlineCallbacks
    def node_of(self, peer_id: str):
        """
        Fires with the id of the node holding C{peer_id}, or L{None}.
        """
        connection = self._connection(self._pool)
        if connection is None:
            raise BusUnavailable("redis is not connected")
        node = yield connection.hget(self.settings.key_prefix + "peers", peer_id)
        return _decode(node)

    @defer.inlineCallbacks
    def register_user(
        self,
        peer_id: str,
        user_id: str,
        public_key: str,
        proven: bool = False,
        gone: str | None = None,
    ):
        """
        Bind C{user_id} to C{public_key} with C{peer_id} (a peer of this
        node) as its holder, by the directory dialect's rules, for the
        whole cluster.

        :param proven: The peer proved possession of the key.
        :param gone: A holder's peer id that did not answer a liveness
            probe: if it still holds C{user_id}, C{peer_id} takes it over.
        :return: Fires with L{Registered}.
        :raises DirectoryRefused: With C{key-mismatch}, C{proof-required} or
            C{user-id-in-use} (and the holder to probe).
        """
        reply = yield self._eval(
            scripts.REGISTER, peer_id, user_id, public_key, int(proven), gone or ""
        )
        if reply[0] == b"err":
            code = _decode(reply[1])
            holder = (_decode(reply[2]), _decode(reply[3])) if reply[3] else None
            raise DirectoryRefused(code, holder)
        _, went_online, old_node, old_peer, released = reply
        holding = self._holdings.setdefault(peer_id, _Holding())
        holding.user = (user_id, public_key, proven)
        return Registered(
            went_online=bool(went_online),
            replaced=(_decode(old_node), _decode(old_peer)) if old_peer else None,
            released=_decode(released) or None,
        )

    @defer.inlineCallbacks
    def unregister_user(self, peer_id: str):
        """
        Give up the userId C{peer_id} holds, at once and without a hold.

        :return: Fires with the userId, or L{None}.
        """
        holding = self._holdings.get(peer_id)
        if holding is not None:
            holding.user = None
        user = yield self._eval(scripts.UNREGISTER, peer_id)
        return _decode(user) or None

    @defer.inlineCallbacks
    def lookup_user(self, user_id: str):
        """
        Fires with C{user_id}'s L{UserBinding}, online or held, or L{None}.
        """
        connection = self._connection(self._pool)
        if connection is None:
            raise BusUnavailable("redis is not connected")
        fields = yield connection.hmget(
            self.settings.key_prefix + "user:" + user_id,
            ["node", "peer", "key", "proven"],
        )
        node, peer, key, proven = fields
        if key is None:
            return None
        return UserBinding(
            user_id, _decode(node), _decode(peer), _decode(key), proven == b"1"
        )


def _refused(failure: Failure) -> None:
    failure.trap(defer.FirstError)
    raise BusUnavailable(failure.value.subFailure.getErrorMessage())
