"""
The directory across nodes (signaling/cluster/users.py) on a bus double:
what is published to the other nodes and what this node's users are told.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from signaling.cluster.envelope import Envelope
from signaling.cluster.link import ClusterHub, ClusterLink
from signaling.cluster.results import (
    DirectoryRefused,
    NodeDeath,
    Registered,
    UserBinding,
)
from signaling.cluster.users import (
    PRESENCE,
    PROBE,
    PROBED,
    REPLACED,
    ClusterDirectory,
    HeldElsewhere,
)
from signaling.directory import KeyMismatch, Presence, Replaced, UserNotOnline

from .support import RecordingConnection
from .test_cluster_link import FakeBus


class DirectoryBus(FakeBus):
    """
    A bus double whose directory calls answer what the test sets.
    """

    def __init__(self) -> None:
        super().__init__()
        self.registration: Registered | Exception = Registered(True, None, None)
        self.binding: UserBinding | None = None

    def claim_peer(self, peer_id):
        return defer.succeed(True)

    def register_user(self, peer_id, user_id, public_key, proven=False, gone=None):
        if isinstance(self.registration, Exception):
            return defer.fail(self.registration)
        return defer.succeed(self.registration)

    def lookup_user(self, user_id):
        return defer.succeed(self.binding)

    def unregister_user(self, peer_id):
        return defer.succeed(None)


class ProbedConnection(RecordingConnection):
    """
    A connection whose liveness ping answers C{alive}.
    """

    alive = True

    def probe(self, seconds: float) -> defer.Deferred:
        return defer.succeed(self.alive)


class ClusterDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bus = DirectoryBus()
        self.hub = ClusterHub(clock=self.bus.reactor)
        self.link = ClusterLink(self.hub, self.bus)
        self.link._nodes = {"here", "there"}
        self.directory = ClusterDirectory(self.hub, probe_seconds=1.0, link=self.link)
        self.watcher_connection = RecordingConnection()
        self.watcher = self.hub.connect(self.watcher_connection)
        self.directory.watch(self.watcher, "alice")

    def sent(self, kind: str) -> list[tuple[str, object]]:
        return [(node, e.payload) for node, e in self.bus.sent if e.kind == kind]

    def test_a_registration_is_announced_to_the_other_nodes(self):
        """
        A userId going online is told to local watchers and published to
        every other node; the holder taken over on another node is told
        through its node.
        """
        self.bus.registration = Registered(True, ("there", "old-peer"), None)
        peer = self.hub.connect(RecordingConnection())
        registered = self.successResultOf(
            self.directory.register_in_cluster(peer, "alice", "key")
        )
        self.assertEqual((registered.user_id, registered.peer), ("alice", peer))
        self.assertEqual(self.watcher_connection.events, [Presence("alice", True)])
        self.assertEqual(
            self.sent(PRESENCE), [("there", {"userId": "alice", "online": True})]
        )
        self.assertEqual(
            self.sent(REPLACED), [("there", {"userId": "alice", "peer": "old-peer"})]
        )
        self.assertEqual(self.directory.user_of(peer), "alice")

    def test_refusals_become_the_directory_errors(self):
        peer = self.hub.connect(RecordingConnection())
        self.bus.registration = DirectoryRefused("key-mismatch")
        self.failureResultOf(
            self.directory.register_in_cluster(peer, "alice", "k"), KeyMismatch
        )
        self.bus.registration = DirectoryRefused("user-id-in-use", ("there", "holder"))
        refused = self.failureResultOf(
            self.directory.register_in_cluster(peer, "alice", "k"), HeldElsewhere
        ).value
        self.assertEqual(
            (refused.node, refused.peer_id, refused.holder), ("there", "holder", None)
        )

    def test_a_remote_holder_that_does_not_answer_is_gone(self):
        """
        A node that does not answer a ping within twice the probe timeout
        counts as a silent holder.
        """
        probing = self.directory.probe_remote("there", "holder")
        [(node, payload)] = self.sent(PROBE)
        self.assertEqual((node, payload["peer"]), ("there", "holder"))
        self.bus.reactor.advance(1.9)
        self.assertNoResult(probing)
        self.bus.reactor.advance(0.1)
        self.assertIs(self.successResultOf(probing), False)

    def test_a_remote_holder_answers(self):
        probing = self.directory.probe_remote("there", "holder")
        [(_, payload)] = self.sent(PROBE)
        self.bus.receive(
            Envelope(PROBED, None, None, (), {"probe": payload["probe"], "alive": True})
        )
        self.assertIs(self.successResultOf(probing), True)
        self.assertEqual(self.bus.reactor.getDelayedCalls(), [])

    def test_this_node_pings_its_holder_for_another(self):
        holder = self.hub.connect(ProbedConnection())
        self.bus.receive(
            Envelope(
                PROBE, None, None, (), {"probe": 7, "peer": holder.id, "node": "there"}
            )
        )
        self.bus.receive(
            Envelope(
                PROBE, None, None, (), {"probe": 8, "peer": "nobody", "node": "there"}
            )
        )
        self.assertEqual(
            self.sent(PROBED),
            [
                ("there", {"probe": 7, "alive": True}),
                ("there", {"probe": 8, "alive": False}),
            ],
        )

    def test_presence_and_deaths_reach_local_watchers(self):
        self.bus.receive(
            Envelope(PRESENCE, None, None, (), {"userId": "alice", "online": True})
        )
        for callback in self.bus.dead_callbacks:
            callback(NodeDeath("there", (), (), ("alice", "bob")))
        self.assertEqual(
            self.watcher_connection.events,
            [Presence("alice", True), Presence("alice", False)],
        )

    def test_a_takeover_from_another_node_is_told_to_the_old_holder(self):
        connection = RecordingConnection()
        peer = self.hub.connect(connection)
        self.successResultOf(self.directory.register_in_cluster(peer, "bob", "key"))
        self.bus.receive(
            Envelope(REPLACED, None, None, (), {"userId": "bob", "peer": peer.id})
        )
        self.assertEqual(connection.events, [Replaced("bob")])
        self.assertIsNone(self.directory.user_of(peer))

    def test_malformed_directory_messages_are_dropped(self):
        self.bus.receive(Envelope(PRESENCE, None, None, (), {"online": True}))
        self.bus.receive(
            Envelope(PROBED, None, None, (), {"probe": "x", "alive": True})
        )
        self.assertEqual(self.watcher_connection.events, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_a_relay_to_a_user_of_another_node_goes_to_its_node(self):
        sender = self.hub.connect(RecordingConnection())
        self.successResultOf(self.directory.register_in_cluster(sender, "bob", "key"))
        self.bus.binding = UserBinding("alice", "there", "far", "k", False)
        self.successResultOf(
            self.directory.relay(sender, "alice", "offer", {"sdp": "x"})
        )
        [(node, envelope)] = [(n, e) for n, e in self.bus.sent if e.kind == "offer"]
        self.assertEqual(
            (node, envelope.targets, envelope.extra),
            ("there", ("far",), {"fromUserId": "bob"}),
        )
        self.assertEqual(envelope.sender.peer_id, sender.id)
        self.bus.binding = None
        self.failureResultOf(
            self.directory.relay(sender, "alice", "offer", {}), UserNotOnline
        )
