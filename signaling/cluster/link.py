"""
The glue between one node's hub and the Redis bus: rooms that span nodes.

Every node's hub holds, beside its own peers, a *mirror* of every peer of
the other nodes that is in a room: a L{Peer} whose connection is a
L{RemotePeerConnection}. The dialects and the hub then work as in one
process: a join lists the remote members, a relay to a remote peer goes
through its L{RemotePeerConnection}, which publishes it to the peer's node.

What each node publishes, on its one publishing connection (so that it
arrives in order with the relays):

* C{hub:joined} and C{hub:left}, to every other node, when one of its own
  peers joins or leaves a room: each node keeps its mirror and tells its
  own peers;
* a signal, to the node of its target(s): one envelope per node for a
  broadcast;
* for a session resume that lands on another node, C{hub:handover} (the
  new node asks the holder for the session), C{hub:handed-over} (the
  session, back to it) and C{hub:moved} (to every other node: the peer is
  the new node's now); the peer stays in its rooms throughout, and nobody
  is told of a leave or a join.

Redis's Lua scripts are the arbiter of capacity, verified-only rooms and
ids: a join that lost a race with a join on another node is undone.
Deliveries between two peers of one node never touch Redis.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from ..errors import (
    AlreadyInRoom,
    DeliveryRefused,
    HubError,
    PeerNotFound,
    RoomFull,
    VerifiedOnly,
)
from ..hub import (
    CloseReason,
    Hub,
    HubStats,
    IPeerConnection,
    Member,
    Peer,
    PeerJoined,
    PeerLeft,
    Room,
    Signal,
)
from ..ids import IdShape
from ..logs import Logger
from .bus import RedisBus
from .envelope import (
    Envelope,
    InvalidEnvelope,
    encode_envelope,
    envelope_from_fields,
    envelope_to_fields,
    member_from_list,
    member_to_list,
)
from .results import BusUnavailable, NodeDeath

#: Envelope kinds of room events; no dialect's signal kind has a colon.
JOINED = "hub:joined"
LEFT = "hub:left"
#: A node that just joined the cluster, to be told of joins from now on.
HELLO = "hub:hello"
#: Several envelopes for one node in one message (their fields, in order).
BATCH = "hub:batch"
#: Session resume across nodes: the request, the session, the news.
HANDOVER = "hub:handover"
HANDED_OVER = "hub:handed-over"
MOVED = "hub:moved"
#: Seconds a node waits for another to hand a session over.
HANDOVER_TIMEOUT = 5.0


@implementer(IPeerConnection)
@attrs.define(eq=False)
class RemotePeerConnection:
    """
    A peer of another node, as this node's hub sees it.

    Room events (joins, leaves) are not forwarded: the node where they
    happen tells every node. Signals are published to the peer's node; a
    drop learnt only later (the node is gone) ends the mirror in the hub,
    as for a peer that left.
    """

    link: ClusterLink
    node: str
    peer_id: str
    #: Whether the peer was this node's and moved to C{node}: signals that
    #: other nodes still send here are passed on to it.
    forwarding: bool = False
    #: What /metrics counts it as (not a field).
    transport_name = "remote"

    def deliver(self, event: Any) -> None:
        if isinstance(event, Signal):
            self.link.forward(self, event)

    def close(self, reason: CloseReason) -> None:
        # Nothing to close here: the peer's own node owns its connection.
        pass


def is_remote(peer: Peer) -> bool:
    return isinstance(peer.connection, RemotePeerConnection)


@attrs.define(eq=False)
class ClusterHub(Hub):
    """
    A hub whose rooms span the nodes of a cluster, through a L{ClusterLink}
    (set once the link is built).
    """

    link: ClusterLink | None = None

    def connect(self, connection: IPeerConnection, *args: Any, **kwargs: Any) -> Peer:
        peer = super().connect(connection, *args, **kwargs)
        if self.link is not None and not is_remote(peer):
            self.link.connected(peer)
        return peer

    def disconnect(self, peer: Peer) -> None:
        if self.find(peer.id) is not peer:
            return
        super().disconnect(peer)
        if self.link is not None and not is_remote(peer):
            self.link.disconnected(peer)

    def join(self, peer: Peer, room_name: str, *args: Any, **kwargs: Any) -> Room:
        room = super().join(peer, room_name, *args, **kwargs)
        if self.link is not None and not is_remote(peer):
            self.link.joined(peer, room)
        return room

    def leave(self, peer: Peer, room_name: str) -> None:
        room = peer.rooms.get(room_name)
        member = room.members.get(peer.id) if room is not None else None
        super().leave(peer, room_name)
        if self.link is not None and member is not None and not is_remote(peer):
            self.link.left(peer, room_name, member)

    def broadcast(self, sender: Peer, room_name: str, signal: Signal) -> int:
        if self.link is None:
            return super().broadcast(sender, room_name, signal)
        self.link.begin_batch()
        try:
            return super().broadcast(sender, room_name, signal)
        finally:
            self.link.end_batch()

    def admit(
        self,
        peer: Peer,
        room_name: str,
        member: Member,
        room_metadata: Mapping[str, Any],
        verified_only: bool,
        tell: bool = True,
    ) -> None:
        """
        Put a mirror of a remote peer into C{room_name} as its node admitted
        it (Redis checked capacity and the rest), and tell the room.

        :param tell: Whether to tell the room: not for a peer that was a
            member all along, on another node (its session moved here).
        """
        if room_name in peer.rooms:
            return
        room = self._rooms.get(room_name)
        if room is None:
            room = Room(
                name=room_name,
                created_at=member.joined_at,
                max_peers=self.limits.max_peers_per_room,
                metadata=dict(room_metadata),
                verified_only=verified_only,
            )
            self._rooms[room_name] = room
        room.members[peer.id] = member
        room.emptied_at = None
        peer.rooms[room_name] = room
        self._log.debug(
            "{peer} of another node joined {room}", peer=peer.id, room=room_name
        )
        if tell:
            self._tell_room(
                room, PeerJoined(room=room_name, member=member), exclude=peer.id
            )

    def deliver_from_bus(self, peer: Peer, signal: Signal) -> None:
        """
        Hand a signal that came over the bus to a peer of this node. The
        sender is on another node and already went on: a refusal is not
        its to hear of.
        """
        try:
            if not self._deliver(peer, signal):
                self._remove_failed([peer])
        except DeliveryRefused:
            pass

    def is_local(self, peer_id: str) -> bool:
        peer = self._peers.get(peer_id)
        return peer is not None and not is_remote(peer)

    def local_peer_count(self) -> int:
        return sum(1 for peer in self._peers.values() if not is_remote(peer))

    def sweep(self) -> None:
        # Mirrors are never stale here: their own node sweeps its peers.
        now = self.clock.seconds()
        for peer in list(self._peers.values()):
            if is_remote(peer):
                peer.last_seen = now
        super().sweep()

    def stats(self) -> HubStats:
        stats = super().stats()
        if self.link is None:
            return stats
        # Remote peers in no room have no mirror: the cluster's count of
        # peers comes from Redis, as of the last refresh.
        total = max(self.link.cluster_peers, stats.peers_total)
        return HubStats(
            peers_total=total,
            peers_without_room=total - stats.peers_in_rooms,
            rooms_total=stats.rooms_total,
            peers_in_rooms=stats.peers_in_rooms,
        )


@attrs.define(eq=False)
class ClusterLink:
    """
    Keeps one node's L{ClusterHub} and the cluster in step over a
    L{RedisBus}.

    :ivar stats_interval: Seconds between two refreshes of the cluster's
        peer count for C{/api/stats}.
    """

    hub: ClusterHub
    bus: RedisBus
    stats_interval: float = 1.0
    cluster_peers: int = 0
    #: Per local peer, the tail of its Redis operations, run in order
    #: (a join must not reach Redis before the claim of the id).
    _chains: dict[str, defer.Deferred] = attrs.Factory(dict)
    _batch: dict[str, list[str]] | None = None
    _batch_signal: Signal | None = None
    _refresh: LoopingCall | None = None
    #: Signals waiting for the end of this reactor turn, by node.
    _outbox: dict[str, list[Envelope]] = attrs.Factory(dict)
    _flushing: Any = None
    #: This node's peers whose claim or joins Redis missed.
    _unsynced: set[str] = attrs.Factory(set)
    #: The live nodes, as of the last refresh, and any heard from since.
    _nodes: set[str] = attrs.Factory(set)
    #: The node's resumable sessions, when session resume is on.
    sessions: Any = None
    #: Handovers this node asked for, by request id.
    _handovers: dict[str, tuple[defer.Deferred, Any]] = attrs.Factory(dict)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        self.hub.link = self
        self.bus.on_envelope(self._received)
        self.bus.on_node_dead(self._node_dead)

    # lifetime

    @defer.inlineCallbacks
    def start(self):
        """
        Start the bus and fill this node's mirror from Redis.
        """
        yield self.bus.start()
        self.bus.on_reconnected(self._reconnected)
        self.bus.on_restored(self._announce_all)
        yield self._refresh_stats()
        # The others learn of this node at their next refresh; until then
        # they would not tell it of their joins.
        yield defer.gatherResults(
            [
                self.bus.send(node, Envelope(HELLO, None, None, (), self.bus.node_id))
                for node in self._other_nodes()
            ]
        )
        yield self.resync()
        self._refresh = LoopingCall(self._refresh_stats)
        self._refresh.clock = self.bus.reactor
        self._refresh.start(self.stats_interval, now=False)
        # A node that joined a room before it knew of this one did not
        # tell this one: read the directory again once every node has.
        self.bus.reactor.callLater(self.stats_interval * 1.5, self._resync_logged)

    @defer.inlineCallbacks
    def stop(self):
        self.flush()
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        yield self.bus.stop()

    @defer.inlineCallbacks
    def _refresh_stats(self):
        try:
            stats = yield self.bus.stats()
            nodes = yield self.bus.nodes()
        except Exception:
            # Redis is away: the bus says so; the figures wait.
            return
        self.cluster_peers = stats.peers
        self._nodes = set(nodes)

    def _reconnected(self) -> None:
        # The other nodes put their peers back at their next heartbeat
        # after a Redis restart: read the directory once they have.
        delay = 2 * self.bus.settings.heartbeat_interval
        self.bus.reactor.callLater(delay, self._resync_logged)
        self.bus.reactor.callLater(delay, self._register_again)
        # What others sent meanwhile was dropped, and they took this node's
        # peers for gone: tell them again.
        self.bus.reactor.callLater(delay, self._announce_all)

    def _resync_logged(self) -> defer.Deferred:
        return self.resync().addErrback(
            lambda failure: self._log.warn(
                "could not read the cluster's rooms: {error}",
                error=failure.getErrorMessage(),
            )
        )

    @defer.inlineCallbacks
    def resync(self):
        """
        Make the mirror match the directory: remote members this node
        missed (it was cut off from Redis) join, mirrors Redis no longer
        has leave, each announced to this node's peers.
        """
        bus = self.bus
        hub = self.hub
        present: dict[str, set[str]] = {}
        for room_name in (yield bus.room_names()):
            members = yield bus.members(room_name)
            info = yield bus.room_info(room_name)
            for remote in members:
                if remote.node == bus.node_id or not remote.node:
                    continue
                present.setdefault(remote.member.peer_id, set()).add(room_name)
                self._mirror_join(remote.node, room_name, remote.member, *info)
        for peer in list(hub._peers.values()):
            if not is_remote(peer):
                continue
            for room_name in list(peer.rooms):
                if room_name not in present.get(peer.id, ()):
                    self._mirror_leave(peer.id, room_name)

    # this node's peers

    def _then(self, peer_id: str, operation) -> None:
        """
        Run C{operation} (returning a Deferred) once the peer's earlier
        Redis operations are done.
        """
        tail = self._chains.get(peer_id)

        def run(_=None):
            return operation().addErrback(self._failed, peer_id)

        if tail is None:
            tail = run()
        else:
            tail = tail.addCallback(run)
        self._chains[peer_id] = tail

        def forget(result):
            if self._chains.get(peer_id) is tail:
                del self._chains[peer_id]
            return result

        tail.addBoth(forget)

    def _failed(self, failure, peer_id: str) -> None:
        if failure.check(BusUnavailable, PeerNotFound):
            # Redis is away (the bus said so once), or lost the peer's
            # claim while it was: the peer is registered again once Redis
            # is back.
            self._unsynced.add(peer_id)
            return None
        if failure.check(RoomFull, VerifiedOnly):
            return None
        self._log.failure(
            "a cluster operation for {peer} failed", failure, peer=peer_id
        )
        return None

    def _announce_all(self) -> None:
        """
        Tell every other node again of every room member of this node: it
        was reaped (it stalled) or Redis restarted, and the others may have
        announced its peers gone.
        """
        for peer in list(self.hub._peers.values()):
            if is_remote(peer):
                continue
            for room in list(peer.rooms.values()):
                member = room.members.get(peer.id)
                if member is not None:
                    self._publish_all(self._joined_envelope(room, member))

    def _register_again(self) -> None:
        """
        Put the peers whose claim or joins failed while Redis was away into
        the directory, with their rooms, as admitted then.
        """
        unsynced, self._unsynced = self._unsynced, set()
        for peer_id in unsynced:
            peer = self.hub.find(peer_id)
            if peer is not None and not is_remote(peer):
                self._then(peer_id, lambda peer=peer: self._reregister(peer))

    @defer.inlineCallbacks
    def _reregister(self, peer: Peer):
        free = yield self.bus.claim_peer(peer.id)
        if not free and (yield self.bus.node_of(peer.id)) != self.bus.node_id:
            self._claimed(False, peer)
            return
        for room in list(peer.rooms.values()):
            member = room.members.get(peer.id)
            if member is None:
                continue
            try:
                yield self.bus.join(room.name, member, 0, room.metadata)
            except AlreadyInRoom:
                pass
            # The other nodes missed its join too.
            self._publish_all(self._joined_envelope(room, member))

    def connected(self, peer: Peer) -> None:
        """
        Claim a new peer's id for this node in Redis, which keeps ids unique
        in the cluster. The hub made it unique among the peers this node
        knows (its own and every remote one in a room); another node's
        peer in no room may still have it (one chance in 2**32 per peer
        for the 8-hex ids, none in practice for the others): that peer is
        closed.
        """

        def claim():
            return self.bus.claim_peer(peer.id).addCallback(self._claimed, peer)

        self._then(peer.id, claim)

    def _claimed(self, free: bool, peer: Peer) -> None:
        if free or self.hub.find(peer.id) is not peer:
            return
        # Another node has this id: the peer cannot be reached by it.
        self._log.warn(
            "peer id {peer} is in use on another node; closing it", peer=peer.id
        )
        self.hub.disconnect(peer)
        peer.connection.close(CloseReason.FAILED)

    def disconnected(self, peer: Peer) -> None:
        self._then(peer.id, lambda: self.bus.release_peer(peer.id))

    def _joined_envelope(self, room: Room, member: Member) -> Envelope:
        extra = {
            "node": self.bus.node_id,
            "verified_only": room.verified_only,
            "room_metadata": dict(room.metadata),
        }
        return Envelope(JOINED, room.name, member, (), None, extra)

    def joined(self, peer: Peer, room: Room) -> None:
        member = room.members[peer.id]
        self._publish_all(self._joined_envelope(room, member))

        def join():
            joining = self.bus.join(room.name, member, room.max_peers, room.metadata)
            return joining.addErrback(self._join_refused, peer, room.name)

        self._then(peer.id, join)

    def _join_refused(self, failure, peer: Peer, room_name: str) -> None:
        failure.trap(RoomFull, VerifiedOnly)
        # A join on another node took the place (or made the room
        # verified-only) first: Redis decides, this node undoes its join.
        if self.hub.find(peer.id) is not peer or room_name not in peer.rooms:
            return
        member = peer.rooms[room_name].members[peer.id]
        self._log.info(
            "{peer} lost a race for {room}: {reason}",
            peer=peer.id,
            room=room_name,
            reason=failure.value.reason
            if hasattr(failure.value, "reason")
            else str(failure.value),
        )
        self.hub.leave(peer, room_name)
        try:
            peer.connection.deliver(PeerLeft(room=room_name, member=member))
        except HubError:
            pass

    def left(self, peer: Peer, room_name: str, member: Member) -> None:
        self._publish_all(Envelope(LEFT, room_name, member, (), None, None))
        if self.hub.find(peer.id) is peer:
            # A disconnect releases every room in one script.
            self._then(peer.id, lambda: self.bus.leave(room_name, peer.id))

    def _publish_all(self, envelope: Envelope) -> None:
        # After the signals queued before it, on the same connection.
        self.flush()
        data = encode_envelope(envelope)
        for node in self._other_nodes():
            self.bus.send_bytes(node, data)

    def _other_nodes(self) -> set[str]:
        return self._nodes - {self.bus.node_id}

    # signals to remote peers

    def begin_batch(self) -> None:
        self._batch = {}

    def end_batch(self) -> None:
        batch, signal = self._batch, self._batch_signal
        self._batch = self._batch_signal = None
        if not batch or signal is None:
            return
        for node, targets in batch.items():
            self._send(node, tuple(targets), signal)

    def forward(self, connection: RemotePeerConnection, signal: Signal) -> None:
        """
        Send C{signal} to a remote peer's node.

        :raises DeliveryRefused: Redis cannot be reached now (said at once);
            a drop learnt later ends the peer's mirror.
        """
        if self._batch is not None:
            self._batch_signal = signal
            self._batch.setdefault(connection.node, []).append(connection.peer_id)
            return
        if not self._send(connection.node, (connection.peer_id,), signal):
            raise DeliveryRefused("closed", "the bus to the peer's node is down")

    def _send(self, node: str, targets: tuple[str, ...], signal: Signal) -> bool:
        """
        Queue C{signal} for C{node}; what is queued for a node in one turn
        of the reactor goes out as one message (one C{PUBLISH}, one read on
        the other side), in order.

        :return: L{False} if Redis cannot be reached now.
        """
        if not self.bus.can_publish():
            return False
        envelope = Envelope(
            signal.kind,
            signal.room,
            signal.sender_member,
            targets,
            signal.payload,
            signal.extra,
        )
        self._outbox.setdefault(node, []).append(envelope)
        if self._flushing is None:
            self._flushing = self.bus.reactor.callLater(0, self.flush)
        return True

    def flush(self) -> None:
        """
        Publish what is queued, one message per node.
        """
        if self._flushing is not None and self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        outbox, self._outbox = self._outbox, {}
        for node, envelopes in outbox.items():
            if len(envelopes) == 1:
                message = envelopes[0]
            else:
                message = Envelope(
                    BATCH,
                    None,
                    None,
                    (),
                    [envelope_to_fields(e) for e in envelopes],
                    None,
                )
            targets = tuple(
                target for envelope in envelopes for target in envelope.targets
            )
            self.bus.send(node, message).addCallback(self._sent, targets)

    def _sent(self, delivered: bool, targets: tuple[str, ...]) -> None:
        if delivered:
            return
        for peer_id in targets:
            peer = self.hub.find(peer_id)
            if peer is not None and is_remote(peer):
                self._log.info(
                    "a message to {peer} was dropped: its node is gone", peer=peer_id
                )
                self.hub.disconnect(peer)

    # from the bus

    def _received(self, envelope: Envelope) -> None:
        kind = envelope.kind
        if kind == BATCH:
            for fields in (
                envelope.payload if isinstance(envelope.payload, list) else ()
            ):
                try:
                    self._received(envelope_from_fields(fields))
                except InvalidEnvelope as error:
                    self._log.warn(
                        "dropped a message from the bus: {error}", error=str(error)
                    )
        elif kind == HELLO:
            if isinstance(envelope.payload, str):
                self._nodes.add(envelope.payload)
        elif kind == JOINED:
            extra = envelope.extra or {}
            if envelope.sender is None or envelope.room is None:
                return
            self._mirror_join(
                str(extra.get("node", "")),
                envelope.room,
                envelope.sender,
                extra.get("room_metadata") or {},
                bool(extra.get("verified_only")),
            )
        elif kind == LEFT:
            if envelope.sender is not None and envelope.room is not None:
                self._mirror_leave(envelope.sender.peer_id, envelope.room)
        elif kind in (HANDOVER, HANDED_OVER, MOVED):
            payload = envelope.payload
            if not isinstance(payload, dict):
                self._log.warn("dropped a {kind} without its fields", kind=kind)
            elif kind == HANDOVER:
                self._hand_over(payload)
            elif kind == HANDED_OVER:
                self._handed_over(payload)
            else:
                self._moved(payload)
        elif envelope.sender is not None:
            signal = Signal(
                kind=kind,
                sender=envelope.sender.peer_id,
                room=envelope.room,
                payload=envelope.payload,
                extra=envelope.extra,
                sender_member=envelope.sender,
            )
            for target in envelope.targets:
                peer = self.hub.find(target)
                if peer is None:
                    continue
                if not is_remote(peer):
                    self.hub.deliver_from_bus(peer, signal)
                elif peer.connection.forwarding:
                    # Sent before its node heard that the peer moved.
                    self._send(peer.connection.node, (target,), signal)

    def _mirror_join(
        self,
        node: str,
        room_name: str,
        member: Member,
        room_metadata: Mapping[str, Any],
        verified_only: bool,
    ) -> None:
        if not node or node == self.bus.node_id:
            return
        self._nodes.add(node)
        peer = self.hub.find(member.peer_id)
        if peer is None:
            peer = self.hub.connect(
                RemotePeerConnection(self, node, member.peer_id),
                dialect=member.dialect,
                verified_user_id=member.verified_user_id,
                peer_id=member.peer_id,
            )
        elif not is_remote(peer):
            self._log.warn(
                "peer id {peer} is on two nodes; ignored", peer=member.peer_id
            )
            return
        self.hub.admit(peer, room_name, member, room_metadata, verified_only)

    def _mirror_leave(self, peer_id: str, room_name: str) -> None:
        peer = self.hub.find(peer_id)
        if peer is None or not is_remote(peer):
            return
        if room_name in peer.rooms:
            self.hub.leave(peer, room_name)
        if not peer.rooms:
            self.hub.disconnect(peer)

    def _node_dead(self, death: NodeDeath) -> None:
        self._nodes.discard(death.node)
        # Its peers Redis never heard of (joined while it was away) too.
        for peer in list(self.hub._peers.values()):
            if is_remote(peer) and peer.connection.node == death.node:
                self.hub.disconnect(peer)
        for peer_id in death.peers:
            peer = self.hub.find(peer_id)
            if peer is not None and is_remote(peer):
                self.hub.disconnect(peer)
        for room_name, member in death.left:
            self._mirror_leave(member.peer_id, room_name)

    # session resume across nodes

    def request_handover(self, node: str, digest: str) -> defer.Deferred:
        """
        Ask C{node} for the session whose resume token has C{digest} (hex).

        :return: Fires with what L{_hand_over} sends (the peer, its rooms,
            its session), or L{None}: the node has no such session, is gone,
            or did not answer within L{HANDOVER_TIMEOUT} seconds.
        """
        request = self.hub.ids.new_id(IdShape.TOKEN, self.bus.reactor.seconds())
        answer: defer.Deferred = defer.Deferred()
        timeout = self.bus.reactor.callLater(
            HANDOVER_TIMEOUT, self._handover_answered, request, None
        )
        self._handovers[request] = (answer, timeout)
        payload = {"request": request, "digest": digest, "node": self.bus.node_id}
        self.flush()
        sent = self.bus.send(node, Envelope(HANDOVER, None, None, (), payload, None))

        def sent_or_not(delivered: bool) -> None:
            if not delivered:
                # The node is gone: no answer will come.
                self._handover_answered(request, None)

        sent.addCallback(sent_or_not)
        return answer

    def _handover_answered(self, request: str, state: Any) -> None:
        waiting = self._handovers.pop(request, None)
        if waiting is not None:
            answer, timeout = waiting
            if timeout.active():
                timeout.cancel()
            answer.callback(state)
        elif state is not None:
            self._log.warn(
                "a session handed over too late was lost: {peer}",
                peer=state.get("peer", {}).get("id"),
            )

    def _hand_over(self, payload: dict) -> None:
        """
        Another node claimed the resume token of one of this node's
        sessions: once Redis names that node as the peer's, send it the
        session and tell the others that the peer moved.
        """
        request, digest, node = (
            payload.get("request"),
            payload.get("digest"),
            payload.get("node"),
        )
        if not all(isinstance(value, str) for value in (request, digest, node)):
            return
        session = None
        if self.sessions is not None:
            session = self.sessions.hand_over(digest)
        peer = session.peer if session is not None else None
        if peer is None or self.hub.find(peer.id) is not peer:
            self._answer_handover(node, request, None)
            return

        def moved(done: bool) -> None:
            if not done or session.ended or self.hub.find(peer.id) is not peer:
                self._answer_handover(node, request, None)
                return
            rooms = [
                [
                    room.name,
                    member_to_list(room.members[peer.id]),
                    dict(room.metadata),
                    room.verified_only,
                ]
                for room in peer.rooms.values()
            ]
            state = {
                "peer": {
                    "id": peer.id,
                    "dialect": peer.dialect,
                    "verified_user_id": peer.verified_user_id,
                    "room_grants": None
                    if peer.room_grants is None
                    else list(peer.room_grants),
                    "max_rooms": peer.max_rooms,
                },
                "rooms": rooms,
                "session": session.hand_over(),
            }
            # A mirror from now on, still in its rooms: this node's peers
            # see no leave, and their signals go to the new node.
            peer.connection = RemotePeerConnection(self, node, peer.id, forwarding=True)
            if not peer.rooms:
                Hub.disconnect(self.hub, peer)
            self._log.info("{peer} resumed on node {node}", peer=peer.id, node=node)
            self._answer_handover(node, request, state)
            self._publish_all(
                Envelope(MOVED, None, None, (), {"peer": peer.id, "node": node}, None)
            )

        self._then(
            peer.id, lambda: self.bus.move_peer(peer.id, node).addCallback(moved)
        )

    def _answer_handover(self, node: str, request: str, state: Any) -> None:
        self.flush()
        payload = {"request": request, "state": state}
        self.bus.send(node, Envelope(HANDED_OVER, None, None, (), payload, None))

    def _handed_over(self, payload: dict) -> None:
        request, state = payload.get("request"), payload.get("state")
        if isinstance(request, str):
            self._handover_answered(request, state if isinstance(state, dict) else None)

    def _moved(self, payload: dict) -> None:
        peer_id, node = payload.get("peer"), payload.get("node")
        if not isinstance(peer_id, str) or not isinstance(node, str):
            return
        peer = self.hub.find(peer_id)
        if peer is not None and is_remote(peer):
            peer.connection.node = node
            peer.connection.forwarding = False

    def adopt(self, state: dict, connection: IPeerConnection) -> Peer | None:
        """
        Make the peer of a session another node handed over this node's,
        on C{connection}, in its rooms, telling nobody: to every peer it
        was a member all along.

        :return: The peer, or L{None} if C{state} is not a handover's or
            the id is a peer of this node's.
        """
        try:
            info = state["peer"]
            peer_id = info["id"]
            grants = info.get("room_grants")
            rooms = [
                (
                    str(name),
                    member_from_list(member),
                    dict(metadata),
                    bool(verified_only),
                )
                for name, member, metadata, verified_only in state["rooms"]
            ]
        except (KeyError, TypeError, ValueError) as error:
            self._log.warn(
                "a handed-over session was not valid: {error}", error=str(error)
            )
            return None
        peer = self.hub.find(peer_id)
        if peer is not None and not is_remote(peer):
            self._log.warn("peer id {peer} is on two nodes; ignored", peer=peer_id)
            return None
        if peer is None:
            # Hub's own connect: the id is this node's in Redis already.
            peer = Hub.connect(
                self.hub,
                connection,
                dialect=info.get("dialect", "native"),
                verified_user_id=info.get("verified_user_id"),
                peer_id=peer_id,
            )
        peer.connection = connection
        peer.room_grants = None if grants is None else tuple(grants)
        peer.max_rooms = info.get("max_rooms")
        self.hub.touch(peer)
        for name, member, metadata, verified_only in rooms:
            self.hub.admit(peer, name, member, metadata, verified_only, tell=False)
        self.bus.moved_in(
            peer_id,
            [(name, member, verified, meta) for name, member, meta, verified in rooms],
        )
        return peer
