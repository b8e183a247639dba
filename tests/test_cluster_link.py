"""
The hub's side of the cluster (signaling/cluster/link.py), on a bus double:
mirrors of remote peers, what is published and what is delivered.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from signaling.cluster.envelope import Envelope, decode_envelope, encode_envelope
from signaling.cluster.envelope import envelope_to_fields
from signaling.cluster.link import (
    BATCH,
    JOINED,
    LEFT,
    ClusterHub,
    ClusterLink,
    RemotePeerConnection,
)
from signaling.cluster.results import NodeDeath
from signaling.errors import DeliveryRefused
from signaling.hub import IPeerConnection, Member, PeerJoined, PeerLeft, Signal

from .support import RecordingConnection


class FakeBus:
    """
    The part of L{RedisBus} the link uses; sends are recorded and answered
    with C{reachable}.
    """

    node_id = "here"

    def __init__(self) -> None:
        self.reactor = Clock()
        self.sent: list[tuple[str, Envelope]] = []
        self.reachable = True
        self.envelope_callbacks: list = []
        self.dead_callbacks: list = []
        self.pending: defer.Deferred | None = None

    def on_envelope(self, callback) -> None:
        self.envelope_callbacks.append(callback)

    def on_node_dead(self, callback) -> None:
        self.dead_callbacks.append(callback)

    def can_publish(self) -> bool:
        return self.reachable

    def send(self, node_id, envelope) -> defer.Deferred:
        return self.send_bytes(node_id, encode_envelope(envelope))

    def send_bytes(self, node_id, data) -> defer.Deferred:
        self.sent.append((node_id, decode_envelope(data)))
        if self.pending is not None:
            return self.pending
        return defer.succeed(self.reachable)

    def receive(self, envelope: Envelope) -> None:
        for callback in self.envelope_callbacks:
            callback(envelope)

    # directory calls: Redis is away for these tests
    def _away(self, *args, **kwargs):
        from signaling.cluster.results import BusUnavailable

        return defer.fail(BusUnavailable("not in these tests"))

    claim_peer = release_peer = join = leave = _away


def remote_member(peer_id: str) -> Member:
    return Member(
        peer_id=peer_id, dialect="native", metadata={"name": peer_id}, joined_at=5.0
    )


def batch_for(target: str, payloads: list) -> Envelope:
    sender = remote_member("far")
    return Envelope(
        BATCH,
        None,
        None,
        (),
        [
            envelope_to_fields(Envelope("offer", "lobby", sender, (target,), p))
            for p in payloads
        ],
    )


class ClusterLinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bus = FakeBus()
        self.hub = ClusterHub(clock=Clock())
        self.link = ClusterLink(self.hub, self.bus)
        self.link._nodes = {"here", "there", "yonder"}
        self.local = RecordingConnection()
        self.peer = self.hub.connect(self.local)
        self.hub.join(self.peer, "lobby")

    def remote_joins(self, peer_id: str, node: str = "there") -> None:
        self.bus.receive(
            Envelope(
                JOINED,
                "lobby",
                remote_member(peer_id),
                (),
                None,
                {"node": node, "verified_only": False, "room_metadata": {}},
            )
        )

    def test_remote_connection_is_a_peer_connection(self):
        verifyObject(IPeerConnection, RemotePeerConnection(self.link, "there", "p"))

    def test_a_local_join_is_told_to_every_other_node(self):
        self.assertEqual(
            sorted(
                (node, envelope.kind, envelope.room) for node, envelope in self.bus.sent
            ),
            [("there", JOINED, "lobby"), ("yonder", JOINED, "lobby")],
        )

    def test_a_remote_join_is_a_member_and_announced(self):
        self.remote_joins("far")
        self.assertEqual(self.local.events, [PeerJoined("lobby", remote_member("far"))])
        self.assertEqual(list(self.hub.room("lobby").members), [self.peer.id, "far"])

    def test_a_relay_to_a_remote_peer_is_published_to_its_node(self):
        self.remote_joins("far")
        del self.bus.sent[:]
        self.hub.relay(
            self.peer,
            "lobby",
            "far",
            Signal("offer", self.peer.id, "lobby", {"sdp": "x"}),
        )
        self.assertEqual(self.bus.sent, [])
        self.bus.reactor.advance(0)
        [(node, envelope)] = self.bus.sent
        self.assertEqual(
            (node, envelope.kind, envelope.targets, envelope.payload),
            ("there", "offer", ("far",), {"sdp": "x"}),
        )
        self.assertEqual(envelope.sender.peer_id, self.peer.id)

    def test_a_broadcast_is_one_envelope_per_node(self):
        for peer_id, node in (("far1", "there"), ("far2", "there"), ("far3", "yonder")):
            self.remote_joins(peer_id, node)
        del self.bus.sent[:]
        delivered = self.hub.broadcast(
            self.peer, "lobby", Signal("message", self.peer.id, "lobby", "hi")
        )
        self.assertEqual(delivered, 3)
        self.bus.reactor.advance(0)
        self.assertEqual(
            sorted((node, envelope.targets) for node, envelope in self.bus.sent),
            [("there", ("far1", "far2")), ("yonder", ("far3",))],
        )

    def test_redis_away_refuses_at_once(self):
        self.remote_joins("far")
        self.bus.reachable = False
        error = self.assertRaises(
            DeliveryRefused,
            self.hub.relay,
            self.peer,
            "lobby",
            "far",
            Signal("offer", self.peer.id, "lobby", None),
        )
        self.assertEqual(error.reason, "closed")
        self.assertIsNotNone(self.hub.find("far"))

    def test_a_drop_learnt_later_ends_the_mirror(self):
        self.remote_joins("far")
        self.bus.pending = defer.Deferred()
        self.hub.relay(
            self.peer, "lobby", "far", Signal("offer", self.peer.id, "lobby", None)
        )
        self.bus.reactor.advance(0)
        self.bus.pending.callback(False)
        self.assertIsNone(self.hub.find("far"))
        self.assertEqual(self.local.events[-1], PeerLeft("lobby", remote_member("far")))

    def test_signals_of_one_turn_go_out_as_one_message_in_order(self):
        """
        Signals for one node queued in one reactor turn are one message; a
        join published after them goes out after them; the receiving side
        delivers a batch's signals in order.
        """
        self.remote_joins("far")
        del self.bus.sent[:]
        for n in range(3):
            self.hub.relay(
                self.peer, "lobby", "far", Signal("offer", self.peer.id, "lobby", n)
            )
        other = self.hub.connect(RecordingConnection())
        self.hub.join(other, "lobby")
        [(node, batch), *joins] = self.bus.sent
        self.assertEqual((node, batch.kind), ("there", BATCH))
        self.assertEqual([fields[4] for fields in batch.payload], [0, 1, 2])
        self.assertEqual({envelope.kind for _, envelope in joins}, {JOINED})
        del self.local.events[:]
        self.bus.receive(batch_for(self.peer.id, [0, 1, 2]))
        self.assertEqual([event.payload for event in self.local.events], [0, 1, 2])

    def test_a_signal_from_the_bus_reaches_its_local_target(self):
        sender = remote_member("far")
        self.bus.receive(
            Envelope("answer", "lobby", sender, (self.peer.id,), {"sdp": "y"}, None)
        )
        [signal] = self.local.events
        self.assertEqual(
            (signal.kind, signal.sender, signal.payload, signal.sender_member),
            ("answer", "far", {"sdp": "y"}, sender),
        )

    def test_remote_leave_and_node_death(self):
        self.remote_joins("far1")
        self.remote_joins("far2")
        self.bus.receive(Envelope(LEFT, "lobby", remote_member("far1"), ()))
        self.assertIsNone(self.hub.find("far1"))
        for callback in self.bus.dead_callbacks:
            callback(
                NodeDeath("there", ("far2",), (("lobby", remote_member("far2")),), ())
            )
        self.assertIsNone(self.hub.find("far2"))
        self.assertEqual(
            self.local.events[-2:],
            [
                PeerLeft("lobby", remote_member("far1")),
                PeerLeft("lobby", remote_member("far2")),
            ],
        )
        self.assertEqual(list(self.hub.room("lobby").members), [self.peer.id])

    def test_mirrors_are_never_swept_as_stale(self):
        self.hub.limits = type(self.hub.limits)(stale_timeout=10)
        self.remote_joins("far")
        self.hub.clock.advance(11)
        self.hub.touch(self.peer)
        self.hub.sweep()
        self.assertIsNotNone(self.hub.find("far"))
