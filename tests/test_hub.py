"""
Tests for L{signaling.hub}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from signaling.errors import (
    AlreadyInRoom,
    DeliveryRefused,
    InvalidMetadata,
    InvalidRoomName,
    NotInRoom,
    PeerIdInUse,
    PeerNotFound,
    RoomFull,
    TooManyRooms,
    VerifiedOnly,
)
from signaling.hub import (
    MAX_ROOM_NAME_LENGTH,
    CloseReason,
    Hub,
    HubLimits,
    IPeerConnection,
    PeerJoined,
    PeerLeft,
    Signal,
)
from signaling.ids import IdShape, IdSource, encode_ulid
from signaling.metadata import MetadataLimits

from .support import RecordingConnection, counting_random_bytes


class IdSourceTests(SynchronousTestCase):
    def test_token_has_120_random_bits(self):
        """
        A token id is 24 base32 characters made from 15 random bytes.
        """
        ids = IdSource(lambda count: b"\xff" * count)
        token = ids.new_id(IdShape.TOKEN, 0)
        self.assertEqual(token, "7" * 24)

    def test_ulid(self):
        """
        A ULID is 26 Crockford characters, the time first, so it sorts by time.
        """
        ids = IdSource(lambda count: b"\x00" * count)
        early = ids.new_id(IdShape.ULID, 1.0)
        late = ids.new_id(IdShape.ULID, 2.0)
        self.assertEqual(len(early), 26)
        self.assertLess(early, late)
        self.assertEqual(encode_ulid(0, b"\x00" * 10), "0" * 26)
        self.assertEqual(encode_ulid(2**48 - 1, b"\xff" * 10), "7" + "Z" * 25)
        # The ULID specification's time, every character place its own.
        self.assertEqual(
            encode_ulid(1469918176385, bytes(range(10))), "01ARYZ6S41000G40R40M30E209"
        )
        # Each bit in its place: one bit set at a time, in the time and in
        # the randomness, against the 130-bit number written out in base 32.
        crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
        for bit in range(128):
            value = 1 << bit
            expected = "".join(
                crockford[(value >> shift) & 31] for shift in range(125, -5, -5)
            )
            self.assertEqual(
                encode_ulid(value >> 80, (value & (2**80 - 1)).to_bytes(10, "big")),
                expected,
                bit,
            )

    def test_hex8(self):
        ids = IdSource(lambda count: b"\xab" * count)
        self.assertEqual(ids.new_id(IdShape.HEX8, 0), "abababab")


class HubTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = Hub(clock=self.clock, ids=IdSource(counting_random_bytes()))

    def peer(self, hub=None, **kwargs):
        connection = RecordingConnection()
        return (hub or self.hub).connect(connection, **kwargs), connection

    def test_recording_connection_provides_interface(self):
        verifyObject(IPeerConnection, RecordingConnection())

    def test_ids_are_unique_even_when_the_source_repeats(self):
        """
        When the id source gives an id that is taken, the hub asks again.
        """
        values = iter([b"\x01" * 4, b"\x01" * 4, b"\x02" * 4])
        hub = Hub(clock=self.clock, ids=IdSource(lambda count: next(values)))
        first, _ = self.peer(hub, shape=IdShape.HEX8)
        second, _ = self.peer(hub, shape=IdShape.HEX8)
        self.assertEqual((first.id, second.id), ("01010101", "02020202"))

    def test_join_announces_to_others_only(self):
        alice, alice_conn = self.peer()
        bob, bob_conn = self.peer()
        self.hub.join(alice, "lobby", {"name": "alice"})
        room = self.hub.join(bob, "lobby", {"name": "bob"})
        self.assertEqual(list(room.members), [alice.id, bob.id])
        self.assertEqual(len(alice_conn.events), 1)
        event = alice_conn.events[0]
        self.assertIsInstance(event, PeerJoined)
        self.assertEqual((event.room, event.member.peer_id), ("lobby", bob.id))
        self.assertEqual(event.member.metadata, {"name": "bob"})
        self.assertEqual(bob_conn.events, [])

    def test_room_created_on_first_join_and_deleted_when_empty(self):
        alice, _ = self.peer()
        room = self.hub.join(alice, "lobby", room_metadata={"callType": "video"})
        self.assertEqual(room.created_at, 1000)
        self.assertEqual(room.metadata, {"callType": "video"})
        self.hub.leave(alice, "lobby")
        self.assertIsNone(self.hub.room("lobby"))

    def test_empty_room_ttl(self):
        """
        With an empty-room TTL, an empty room is kept until a sweep after
        the TTL.
        """
        hub = Hub(clock=self.clock, limits=HubLimits(empty_room_ttl=60))
        alice, _ = self.peer(hub)
        hub.join(alice, "lobby")
        hub.leave(alice, "lobby")
        self.clock.advance(59)
        hub.sweep()
        self.assertIsNotNone(hub.room("lobby"))
        self.clock.advance(1)
        hub.sweep()
        self.assertIsNone(hub.room("lobby"))

    def test_stale_peers_are_removed_by_sweep(self):
        hub = Hub(clock=self.clock, limits=HubLimits(stale_timeout=30))
        alice, alice_conn = self.peer(hub)
        bob, bob_conn = self.peer(hub)
        hub.join(alice, "lobby")
        hub.join(bob, "lobby")
        self.clock.advance(20)
        hub.touch(bob)
        self.clock.advance(10)
        hub.sweep()
        self.assertEqual(alice_conn.closed, ["stale"])
        self.assertEqual(bob_conn.closed, [])
        self.assertIsNone(hub.find(alice.id))
        self.assertIsInstance(bob_conn.events[-1], PeerLeft)

    def test_leave_announces_and_leave_twice_fails(self):
        alice, alice_conn = self.peer()
        bob, _ = self.peer()
        self.hub.join(alice, "lobby")
        self.hub.join(bob, "lobby")
        self.hub.leave(bob, "lobby")
        self.assertIsInstance(alice_conn.events[-1], PeerLeft)
        self.assertRaises(NotInRoom, self.hub.leave, bob, "lobby")

    def test_disconnect_leaves_every_room(self):
        alice, alice_conn = self.peer()
        bob, _ = self.peer()
        for room in ("a", "b"):
            self.hub.join(alice, room)
            self.hub.join(bob, room)
        self.hub.disconnect(bob)
        self.hub.disconnect(bob)
        self.assertEqual(
            [(type(e).__name__, e.room) for e in alice_conn.events],
            [
                ("PeerJoined", "a"),
                ("PeerJoined", "b"),
                ("PeerLeft", "a"),
                ("PeerLeft", "b"),
            ],
        )
        self.assertIsNone(self.hub.find(bob.id))

    def test_relay_sets_sender_and_needs_a_shared_room(self):
        alice, _ = self.peer()
        bob, bob_conn = self.peer()
        carol, _ = self.peer()
        self.hub.join(alice, "lobby")
        self.hub.join(bob, "lobby")
        self.hub.join(carol, "other")
        signal = Signal("offer", alice.id, "lobby", {"sdp": "x"})
        self.hub.relay(alice, "lobby", bob.id, signal)
        self.assertEqual(bob_conn.events[-1], signal)
        self.assertRaises(
            PeerNotFound, self.hub.relay, alice, "lobby", carol.id, signal
        )
        self.assertRaises(NotInRoom, self.hub.relay, alice, "other", carol.id, signal)
        self.assertRaises(NotInRoom, self.hub.relay, alice, None, carol.id, signal)

    def test_broadcast_skips_sender_and_refusing_peers(self):
        alice, alice_conn = self.peer()
        bob, bob_conn = self.peer()
        carol, carol_conn = self.peer()
        for peer in (alice, bob, carol):
            self.hub.join(peer, "lobby")
        bob_conn.refuse = "buffer-full"
        signal = Signal("candidate", alice.id, "lobby", {"candidate": "c"})
        self.assertEqual(self.hub.broadcast(alice, "lobby", signal), 1)
        self.assertEqual(carol_conn.events[-1], signal)
        self.assertNotIn(signal, alice_conn.events)

    def test_limits(self):
        hub = Hub(
            clock=self.clock,
            limits=HubLimits(max_peers_per_room=2, max_rooms_per_peer=2),
        )
        peers = [self.peer(hub)[0] for _ in range(3)]
        hub.join(peers[0], "a")
        hub.join(peers[1], "a")
        self.assertRaises(RoomFull, hub.join, peers[2], "a")
        hub.join(peers[0], "b")
        self.assertRaises(TooManyRooms, hub.join, peers[0], "c")
        self.assertRaises(AlreadyInRoom, hub.join, peers[0], "a")

    def test_unlimited(self):
        hub = Hub(
            clock=self.clock,
            limits=HubLimits(max_peers_per_room=0, max_rooms_per_peer=0),
        )
        peers = [self.peer(hub)[0] for _ in range(150)]
        for peer in peers:
            hub.join(peer, "big")
        for index in range(20):
            hub.join(peers[0], f"room-{index}")
        self.assertEqual(len(hub.room("big").members), 150)

    def test_is_local(self):
        """
        A plain hub's peers are all connected to this process; a peer it
        does not have (any more) is not.
        """
        peer, _ = self.peer()
        self.assertTrue(self.hub.is_local(peer.id))
        self.hub.disconnect(peer)
        self.assertFalse(self.hub.is_local(peer.id))

    def test_a_peer_with_an_id_allocated_elsewhere(self):
        """
        A peer registered with its own id (a peer of another node) is found,
        joins and is reached under that id; a second one with the same id
        is refused and the first keeps its place.
        """
        remote, remote_connection = self.peer(peer_id="node-b:7")
        local, _ = self.peer()
        self.assertIs(self.hub.find("node-b:7"), remote)
        self.hub.join(remote, "room")
        self.hub.join(local, "room")
        signal = Signal(kind="offer", sender=local.id, room="room", payload="o")
        self.hub.relay(local, "room", "node-b:7", signal)
        self.assertEqual(remote_connection.events[-1], signal)
        error = self.assertRaises(PeerIdInUse, self.peer, peer_id="node-b:7")
        self.assertEqual(error.reason, "peer-id-in-use")
        self.assertIs(self.hub.find("node-b:7"), remote)
        self.assertEqual(self.hub.peer_count(), 2)

    def test_room_names(self):
        alice, _ = self.peer()
        for bad in ("", None, 5, "x" * (MAX_ROOM_NAME_LENGTH + 1)):
            self.assertRaises(InvalidRoomName, self.hub.join, alice, bad)
        self.hub.join(alice, "x" * MAX_ROOM_NAME_LENGTH)

    def test_a_room_created_by_a_verified_peer_admits_only_verified_peers(self):
        alice, _ = self.peer(verified_user_id="alice")
        bob, _ = self.peer(verified_user_id="bob")
        intruder, _ = self.peer()
        room = self.hub.join(alice, "call")
        self.assertTrue(room.verified_only)
        self.assertEqual(room.members[alice.id].verified_user_id, "alice")
        error = self.assertRaises(
            VerifiedOnly, self.hub.join, intruder, "call", {"userId": "alice"}
        )
        self.assertEqual(error.reason, "verified-only")
        self.assertEqual(list(room.members), [alice.id])
        self.assertEqual(intruder.rooms, {})
        self.hub.join(bob, "call")
        self.assertEqual(set(room.members), {alice.id, bob.id})

    def test_a_room_kept_empty_stays_verified_only(self):
        hub = Hub(clock=self.clock, limits=HubLimits(empty_room_ttl=60))
        alice, _ = self.peer(hub, verified_user_id="alice")
        intruder, _ = self.peer(hub)
        hub.join(alice, "call")
        hub.leave(alice, "call")
        self.assertRaises(VerifiedOnly, hub.join, intruder, "call")

    def test_a_room_created_by_an_unverified_peer_admits_everyone(self):
        guest, _ = self.peer()
        alice, _ = self.peer(verified_user_id="alice")
        other, _ = self.peer()
        room = self.hub.join(guest, "open")
        self.hub.join(alice, "open")
        self.hub.join(other, "open")
        self.assertFalse(room.verified_only)
        self.assertEqual(
            [member.verified_user_id for member in room.members.values()],
            [None, "alice", None],
        )

    def test_stats(self):
        alice, _ = self.peer()
        bob, _ = self.peer()
        self.peer()
        self.hub.join(alice, "a")
        self.hub.join(alice, "b")
        self.hub.join(bob, "a")
        stats = self.hub.stats()
        self.assertEqual(
            (
                stats.peers_total,
                stats.peers_without_room,
                stats.rooms_total,
                stats.peers_in_rooms,
            ),
            (3, 1, 2, 2),
        )
        self.assertEqual(self.hub.peer_count(), 3)


class BrokenConnection(RecordingConnection):
    """
    A connection whose L{deliver} has a bug.
    """

    def deliver(self, event):
        raise RuntimeError("a bug in a recipient")


class RecipientFailureTests(SynchronousTestCase):
    """
    A recipient raising what L{IPeerConnection.deliver} may not costs only
    that recipient its place.
    """

    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(clock=self.clock, ids=IdSource(counting_random_bytes()))

    def test_broadcast_reaches_the_others(self):
        """
        A broadcast skips a failing recipient, which is logged, disconnected
        and closed with L{CloseReason.FAILED}; the members after it get the
        signal and the sender is untouched.
        """
        sender = self.hub.connect(RecordingConnection())
        broken_connection = BrokenConnection()
        broken = self.hub.connect(broken_connection)
        later_connection = RecordingConnection()
        later = self.hub.connect(later_connection)
        for peer in (sender, later, broken):
            self.hub.join(peer, "room")
        later_connection.events.clear()
        signal = Signal(kind="candidate", sender=sender.id, room="room", payload="c")
        self.assertEqual(self.hub.broadcast(sender, "room", signal), 1)
        self.assertEqual(later_connection.events[0], signal)
        self.assertIsInstance(later_connection.events[1], PeerLeft)
        self.assertEqual(broken_connection.closed, [CloseReason.FAILED])
        self.assertIsNone(self.hub.find(broken.id))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_leave_and_disconnect_complete(self):
        """
        A disconnect whose PeerLeft fails for one member still takes the peer
        out of every room and forgets it.
        """
        leaving = self.hub.connect(RecordingConnection())
        broken = self.hub.connect(BrokenConnection())
        self.hub.join(broken, "a")
        self.hub.join(leaving, "a")
        self.hub.join(leaving, "b")
        self.hub.disconnect(leaving)
        self.assertIsNone(self.hub.find(leaving.id))
        self.assertEqual(self.hub.stats().peers_total, 0)
        self.assertEqual(list(self.hub.rooms()), [])
        self.flushLoggedErrors(RuntimeError)

    def test_join_completes(self):
        """
        A join whose PeerJoined fails for the only other member still puts
        the joiner in the room, which stays.
        """
        self.hub.join(self.hub.connect(BrokenConnection()), "room")
        joiner = self.hub.connect(RecordingConnection())
        room = self.hub.join(joiner, "room")
        self.assertEqual(list(room.members), [joiner.id])
        self.assertIs(self.hub.room("room"), room)
        self.flushLoggedErrors(RuntimeError)

    def test_relay_is_refused(self):
        """
        A relay to a failing recipient is L{DeliveryRefused} C{closed} for
        the sender.
        """
        sender = self.hub.connect(RecordingConnection())
        broken = self.hub.connect(BrokenConnection())
        self.hub.join(sender, "room")
        self.hub.join(broken, "room")
        signal = Signal(kind="offer", sender=sender.id, room="room", payload="o")
        with self.assertRaises(DeliveryRefused) as caught:
            self.hub.relay(sender, "room", broken.id, signal)
        self.assertEqual(caught.exception.reason, "closed")
        self.assertIsNone(self.hub.find(broken.id))
        self.flushLoggedErrors(RuntimeError)


class MetadataLimitTests(SynchronousTestCase):
    def setUp(self):
        limits = HubLimits(
            metadata=MetadataLimits(max_size=64, max_depth=2, max_elements=4)
        )
        self.hub = Hub(
            clock=Clock(), limits=limits, ids=IdSource(counting_random_bytes())
        )
        self.peer = self.hub.connect(RecordingConnection())

    def test_peer_metadata(self):
        """
        The hub's join refuses peer metadata over any of its limits, and
        leaves the peer out of the room.
        """
        for metadata in ({"a": {"b": {}}}, {"a": [1, 2, 3, 4]}, {"a": "x" * 64}):
            with self.assertRaises(InvalidMetadata):
                self.hub.join(self.peer, "room", metadata)
        self.assertEqual(self.peer.rooms, {})
        self.assertIsNone(self.hub.room("room"))
        self.hub.join(self.peer, "room", {"a": [1, 2], "b": "x"})

    def test_room_metadata(self):
        """
        Room metadata is held to the same limits when a join creates the room.
        """
        with self.assertRaises(InvalidMetadata):
            self.hub.join(self.peer, "room", {}, {"a": [[1]]})
        self.assertIsNone(self.hub.room("room"))

    def test_zero_is_unlimited(self):
        hub = Hub(
            clock=Clock(),
            limits=HubLimits(
                metadata=MetadataLimits(max_size=0, max_depth=0, max_elements=0)
            ),
        )
        deep: object = 1
        for _ in range(50):
            deep = [deep]
        hub.join(
            hub.connect(RecordingConnection()),
            "room",
            {"deep": deep, "many": list(range(500))},
        )


class OperationsTests(SynchronousTestCase):
    """
    What the hub offers the operations around it: closing everyone for a
    drain, and counters for /metrics.
    """

    def test_close_all_asks_every_peer_to_go(self):
        """
        C{close_all} closes every peer's connection with the reason; each
        stays in the hub until its connection ends.
        """
        hub = Hub(clock=Clock())
        first, second = RecordingConnection(), RecordingConnection()
        alice = hub.connect(first)
        hub.connect(second)
        self.assertEqual(hub.close_all(CloseReason.GOING_AWAY), 2)
        self.assertEqual(
            (first.closed, second.closed), (["going away"], ["going away"])
        )
        self.assertEqual(hub.peer_count(), 2)
        hub.disconnect(alice)
        self.assertEqual(hub.peer_count(), 1)

    def test_counters(self):
        """
        Relays are counted by kind and the sender's dialect, refused
        deliveries by reason.
        """
        hub = Hub(clock=Clock())
        alice_connection, bob_connection = RecordingConnection(), RecordingConnection()
        alice = hub.connect(alice_connection, dialect="topic")
        bob = hub.connect(bob_connection)
        hub.join(alice, "r")
        hub.join(bob, "r")
        offer = Signal(kind="offer", sender=alice.id, room="r", payload={})
        hub.relay(alice, "r", bob.id, offer)
        hub.broadcast(
            alice, "r", Signal(kind="candidate", sender=alice.id, room="r", payload={})
        )
        bob_connection.refuse = "buffer-full"
        self.assertRaises(DeliveryRefused, hub.relay, alice, "r", bob.id, offer)
        self.assertEqual(
            hub.counters.relayed, {("offer", "topic"): 2, ("candidate", "topic"): 1}
        )
        self.assertEqual(hub.counters.refused, {"buffer-full": 1})
