"""
The envelope dialect at /ws (seed 003), over in-memory WebSockets.
"""

import itertools
import re

import orjson
from twisted.trial.unittest import SynchronousTestCase

from signaling.dialects.envelope import EnvelopeSession
from signaling.hub import MAX_ROOM_NAME_LENGTH, HubLimits
from signaling.ids import IdSource
from signaling.transports.websocket import WebSocketSettings

from .support import Harness, RecordingConnection, message_types

HEX8 = re.compile(r"^[0-9a-f]{8}$")
#: The harness clock starts here, so every server timestamp is this.
NOW_MS = 1_700_000_000_000
ALICE = {"display_name": "Alice", "endpoint": {"ip": "203.0.113.1", "port": 12345}}
BOB = {"display_name": "Bob", "endpoint": {"ip": "198.51.100.1", "port": 54321}}


class EnvelopeTestCase(SynchronousTestCase):
    limits = HubLimits()
    settings = WebSocketSettings(ping_interval=0)

    def setUp(self):
        self.harness = Harness(self.limits, self.settings)
        self.addCleanup(self.harness.restore)

    def connect(self):
        client = self.harness.connect("/ws")
        [connected] = client.take()
        self.assertEqual(connected["type"], "ACK")
        client.peer_id = connected["peer_id"]
        return client

    def send(self, client, message):
        client.send_json(message)
        self.harness.flush()

    def joined(self, room="room-1", payload=None):
        client = self.connect()
        message = {"type": "JOIN", "room_id": room}
        if payload is not None:
            message["payload"] = payload
        self.send(client, message)
        [ack] = client.take()
        self.assertEqual((ack["type"], ack.get("room_id")), ("ACK", room), ack)
        return client

    def assertError(self, client, code, request_id=None):
        messages = client.take()
        self.assertEqual(len(messages), 1, messages)
        [error] = messages
        self.assertEqual(error["type"], "ERROR")
        self.assertEqual(error["payload"]["code"], code)
        self.assertIsInstance(error["payload"]["message"], str)
        self.assertIsInstance(error["timestamp"], int)
        self.assertNotIn("peer_id", error)
        if request_id is None:
            self.assertNotIn("request_id", error)
        else:
            self.assertEqual(error["request_id"], request_id)
        return error


class ConnectTests(EnvelopeTestCase):
    def test_connected_ack(self):
        """
        On open the server sends an ACK carrying the peer's 8-hex-character
        id and the time in milliseconds.
        """
        client = self.harness.connect("/ws")
        [connected] = client.take()
        self.assertRegex(connected["peer_id"], HEX8)
        self.assertEqual(
            connected,
            {
                "type": "ACK",
                "peer_id": connected["peer_id"],
                "payload": {"message": "connected"},
                "timestamp": NOW_MS,
            },
        )

    def test_ids_are_unique(self):
        """
        When the random source repeats itself, the second peer still gets an
        id of its own.
        """
        values = itertools.chain([b"\xab\xcd\xef\x01"] * 2, [b"\x00\x00\x00\x02"])
        self.harness.hub.ids = IdSource(lambda count: next(values))
        first = self.connect()
        second = self.connect()
        self.assertEqual(first.peer_id, "abcdef01")
        self.assertEqual(second.peer_id, "00000002")

    def test_plain_get_is_426(self):
        """
        A plain GET of /ws is answered with 426, not crashed on.
        """
        from treq.testing import StubTreq

        stub = StubTreq(self.harness.site.resource())
        response = self.successResultOf(stub.get("http://localhost/ws"))
        self.assertEqual(response.code, 426)
        body = orjson.loads(self.successResultOf(response.content()))
        self.assertEqual(body, {"error": "this URL takes WebSocket connections"})

    def test_path_is_exact(self):
        """
        Only /ws speaks the envelope dialect; /ws/ is not it.
        """
        client = self.harness.connect("/ws/")
        messages = client.take()
        self.assertFalse(messages and messages[0].get("type") == "ACK", messages)


class ConnectionFlowTests(EnvelopeTestCase):
    def test_connection_flow(self):
        """
        The document's connection flow: A joins and gets the peer list with
        itself; B joins and gets both; A is told of B; A's OFFER reaches B
        with A's peer_id; B's ANSWER reaches A; candidates go both ways.
        """
        alice = self.connect()
        self.send(
            alice,
            {
                "type": "JOIN",
                "room_id": "room-1",
                "payload": ALICE,
                "request_id": "req-1",
            },
        )
        alice_info = {"peer_id": alice.peer_id, **ALICE, "joined_at": NOW_MS}
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "ACK",
                    "peer_id": alice.peer_id,
                    "room_id": "room-1",
                    "payload": {"room_id": "room-1", "peers": [alice_info]},
                    "timestamp": NOW_MS,
                    "request_id": "req-1",
                }
            ],
        )

        bob = self.connect()
        self.send(bob, {"type": "JOIN", "room_id": "room-1", "payload": BOB})
        bob_info = {"peer_id": bob.peer_id, **BOB, "joined_at": NOW_MS}
        self.assertEqual(
            bob.take(),
            [
                {
                    "type": "ACK",
                    "peer_id": bob.peer_id,
                    "room_id": "room-1",
                    "payload": {"room_id": "room-1", "peers": [alice_info, bob_info]},
                    "timestamp": NOW_MS,
                }
            ],
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "PEER_JOINED",
                    "peer_id": bob.peer_id,
                    "room_id": "room-1",
                    "payload": bob_info,
                    "timestamp": NOW_MS,
                }
            ],
        )

        offer = {
            "endpoint": ALICE["endpoint"],
            "session_id": "sess-abc123",
            "initiator_id": alice.peer_id,
        }
        self.send(
            alice,
            {
                "type": "OFFER",
                "target_id": bob.peer_id,
                "payload": offer,
                "request_id": "o1",
            },
        )
        self.assertEqual(alice.take(), [])
        self.assertEqual(
            bob.take(),
            [
                {
                    "type": "OFFER",
                    "peer_id": alice.peer_id,
                    "target_id": bob.peer_id,
                    "room_id": "room-1",
                    "payload": offer,
                    "request_id": "o1",
                    "timestamp": NOW_MS,
                }
            ],
        )
        answer = {
            "endpoint": BOB["endpoint"],
            "session_id": "sess-abc123",
            "accepted": True,
        }
        self.send(
            bob, {"type": "ANSWER", "target_id": alice.peer_id, "payload": answer}
        )
        self.send(
            bob,
            {
                "type": "CANDIDATE",
                "target_id": alice.peer_id,
                "payload": {"candidate": "b1"},
            },
        )
        self.send(
            alice,
            {
                "type": "CANDIDATE",
                "target_id": bob.peer_id,
                "payload": {"candidate": "a1"},
            },
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "ANSWER",
                    "peer_id": bob.peer_id,
                    "target_id": alice.peer_id,
                    "room_id": "room-1",
                    "payload": answer,
                    "timestamp": NOW_MS,
                },
                {
                    "type": "CANDIDATE",
                    "peer_id": bob.peer_id,
                    "target_id": alice.peer_id,
                    "room_id": "room-1",
                    "payload": {"candidate": "b1"},
                    "timestamp": NOW_MS,
                },
            ],
        )
        self.assertEqual(message_types(bob.take()), ["CANDIDATE"])

    def test_sender_cannot_spoof_peer_id(self):
        alice = self.joined()
        bob = self.joined()
        alice.take()
        self.send(
            bob,
            {
                "type": "OFFER",
                "peer_id": "deadbeef",
                "target_id": alice.peer_id,
                "payload": {},
            },
        )
        [offer] = alice.take()
        self.assertEqual(offer["peer_id"], bob.peer_id)

    def test_empty_fields_are_omitted(self):
        """
        A join without a payload lists the peer without display_name or
        endpoint; a relay without a payload arrives without one.
        """
        alice = self.connect()
        self.send(
            alice, {"type": "JOIN", "room_id": "bare", "payload": {"display_name": ""}}
        )
        [ack] = alice.take()
        self.assertEqual(
            ack["payload"]["peers"], [{"peer_id": alice.peer_id, "joined_at": NOW_MS}]
        )
        self.assertNotIn("request_id", ack)
        bob = self.joined("bare")
        self.send(bob, {"type": "CANDIDATE", "target_id": alice.peer_id})
        [joined, candidate] = alice.take()
        self.assertEqual(
            joined["payload"], {"peer_id": bob.peer_id, "joined_at": NOW_MS}
        )
        self.assertEqual(
            candidate,
            {
                "type": "CANDIDATE",
                "peer_id": bob.peer_id,
                "target_id": alice.peer_id,
                "room_id": "bare",
                "timestamp": NOW_MS,
            },
        )

    def test_joined_at_and_timestamps_follow_the_clock(self):
        alice = self.joined()
        self.harness.clock.advance(2.5)
        bob = self.connect()
        self.send(bob, {"type": "JOIN", "room_id": "room-1"})
        [ack] = bob.take()
        self.assertEqual(ack["timestamp"], NOW_MS + 2500)
        self.assertEqual(
            [p["joined_at"] for p in ack["payload"]["peers"]], [NOW_MS, NOW_MS + 2500]
        )
        self.assertEqual(alice.take()[0]["timestamp"], NOW_MS + 2500)


class RoomTests(EnvelopeTestCase):
    limits = HubLimits(max_peers_per_room=2)

    def test_leave(self):
        """
        LEAVE answers ACK "left room" and tells the room PEER_LEFT.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()
        self.send(bob, {"type": "LEAVE", "request_id": "bye"})
        self.assertEqual(
            bob.take(),
            [
                {
                    "type": "ACK",
                    "peer_id": bob.peer_id,
                    "room_id": "room-1",
                    "payload": {"message": "left room"},
                    "request_id": "bye",
                    "timestamp": NOW_MS,
                }
            ],
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "PEER_LEFT",
                    "peer_id": bob.peer_id,
                    "room_id": "room-1",
                    "timestamp": NOW_MS,
                }
            ],
        )
        self.send(bob, {"type": "LEAVE", "request_id": "again"})
        self.assertError(bob, "NOT_IN_ROOM", "again")

    def test_close_announces_departure(self):
        alice = self.joined()
        bob = self.joined()
        alice.take()
        bob.sendClose()
        self.harness.flush()
        self.assertEqual(message_types(alice.take()), ["PEER_LEFT"])
        self.assertEqual(self.harness.hub.stats().peers_total, 1)

    def test_joining_another_room_leaves_the_first(self):
        """
        Joining another room takes the peer out of the first, and the first
        room is told.
        """
        alice = self.joined("one")
        carol = self.joined("one")
        alice.take()
        self.send(alice, {"type": "JOIN", "room_id": "two", "request_id": 2})
        [ack] = alice.take()
        self.assertEqual(
            (ack["type"], ack["room_id"], ack["request_id"]), ("ACK", "two", 2)
        )
        self.assertEqual(
            [p["peer_id"] for p in ack["payload"]["peers"]], [alice.peer_id]
        )
        self.assertEqual(
            carol.take(),
            [
                {
                    "type": "PEER_LEFT",
                    "peer_id": alice.peer_id,
                    "room_id": "one",
                    "timestamp": NOW_MS,
                }
            ],
        )
        self.assertEqual(list(self.harness.hub.find(alice.peer_id).rooms), ["two"])
        self.send(carol, {"type": "OFFER", "target_id": alice.peer_id, "payload": {}})
        self.assertError(carol, "PEER_NOT_FOUND")

    def test_already_in_room(self):
        alice = self.joined()
        self.send(alice, {"type": "JOIN", "room_id": "room-1", "request_id": "r"})
        self.assertError(alice, "ALREADY_IN_ROOM", "r")

    def test_room_full(self):
        """
        A join beyond --max-peers-per-room is ROOM_FULL; a peer switching
        into the full room keeps the room it is in.
        """
        self.joined("full")
        self.joined("full")
        newcomer = self.connect()
        self.send(newcomer, {"type": "JOIN", "room_id": "full", "request_id": "n"})
        self.assertError(newcomer, "ROOM_FULL", "n")
        switcher = self.joined("other")
        friend = self.joined("other")
        switcher.take()
        self.send(switcher, {"type": "JOIN", "room_id": "full"})
        self.assertError(switcher, "ROOM_FULL")
        self.assertEqual(friend.take(), [])
        self.send(
            friend, {"type": "OFFER", "target_id": switcher.peer_id, "payload": {}}
        )
        self.assertEqual(message_types(switcher.take()), ["OFFER"])

    def test_keep_alive(self):
        client = self.connect()
        self.send(client, {"type": "KEEP_ALIVE", "request_id": "k"})
        self.assertEqual(
            client.take(),
            [
                {
                    "type": "ACK",
                    "peer_id": client.peer_id,
                    "request_id": "k",
                    "timestamp": NOW_MS,
                }
            ],
        )


class DiscoverTests(EnvelopeTestCase):
    limits = HubLimits(empty_room_ttl=60)

    def test_discover_own_room(self):
        alice = self.joined(payload=ALICE)
        bob = self.joined()
        alice.take()
        self.send(alice, {"type": "DISCOVER", "request_id": "d"})
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "PEER_LIST",
                    "peer_id": alice.peer_id,
                    "room_id": "room-1",
                    "payload": {
                        "room_id": "room-1",
                        "peers": [
                            {"peer_id": alice.peer_id, **ALICE, "joined_at": NOW_MS},
                            {"peer_id": bob.peer_id, "joined_at": NOW_MS},
                        ],
                    },
                    "request_id": "d",
                    "timestamp": NOW_MS,
                }
            ],
        )

    def test_discover_another_room(self):
        """
        DISCOVER with the room_id of a room the peer is not in is NOT_IN_ROOM,
        whether the room exists or not: its members are not listed.
        """
        alice = self.joined("elsewhere")
        bob = self.joined("here")
        self.send(bob, {"type": "DISCOVER", "room_id": "elsewhere", "request_id": 8})
        self.assertError(bob, "NOT_IN_ROOM", 8)
        self.send(bob, {"type": "DISCOVER", "room_id": "nowhere", "request_id": 9})
        self.assertError(bob, "NOT_IN_ROOM", 9)
        self.send(bob, {"type": "DISCOVER", "room_id": "here"})
        [peer_list] = bob.take()
        self.assertEqual(
            [p["peer_id"] for p in peer_list["payload"]["peers"]], [bob.peer_id]
        )
        self.assertEqual(alice.take(), [])

    def test_discover_outside_a_room(self):
        client = self.connect()
        self.send(client, {"type": "DISCOVER", "request_id": "x"})
        self.assertError(client, "NOT_IN_ROOM", "x")

    def test_empty_room_is_kept_for_its_ttl(self):
        """
        With --empty-room-ttl, a room whose last peer left is kept, empty,
        until a sweep after the TTL removes it.
        """
        alice = self.joined("brief")
        self.send(alice, {"type": "LEAVE"})
        alice.take()
        self.harness.advance(59, step=1)
        self.harness.hub.sweep()
        self.assertEqual(self.harness.hub.room("brief").members, {})
        self.harness.advance(2, step=1)
        self.harness.hub.sweep()
        self.assertIsNone(self.harness.hub.room("brief"))


class RelayErrorTests(EnvelopeTestCase):
    def test_target_required(self):
        alice = self.joined()
        for kind in ("OFFER", "ANSWER", "CANDIDATE"):
            for target in (
                {},
                {"target_id": ""},
                {"target_id": 5},
                {"target_id": None},
            ):
                self.send(
                    alice, {"type": kind, "payload": {}, "request_id": kind, **target}
                )
                self.assertError(alice, "INVALID_MESSAGE", kind)

    def test_unknown_target(self):
        alice = self.joined()
        self.send(
            alice,
            {
                "type": "OFFER",
                "target_id": "00000000",
                "payload": {},
                "request_id": "t",
            },
        )
        error = self.assertError(alice, "PEER_NOT_FOUND", "t")
        self.assertEqual(error["payload"]["message"], "target peer not found")

    def test_target_in_another_room(self):
        alice = self.joined("a")
        bob = self.joined("b")
        self.send(alice, {"type": "OFFER", "target_id": bob.peer_id, "payload": {}})
        self.assertError(alice, "PEER_NOT_FOUND")
        self.assertEqual(bob.take(), [])

    def test_relay_outside_a_room(self):
        alice = self.connect()
        bob = self.joined()
        self.send(
            alice,
            {"type": "OFFER", "target_id": bob.peer_id, "payload": {}, "request_id": 1},
        )
        self.assertError(alice, "NOT_IN_ROOM", 1)
        self.assertEqual(bob.take(), [])

    def test_delivery_refused(self):
        """
        A target that cannot take the message: gone is PEER_NOT_FOUND, too
        large for it is INVALID_MESSAGE, not reading is INTERNAL_ERROR; the
        reason is in details.
        """
        alice = self.joined()
        target = RecordingConnection()
        peer = self.harness.hub.connect(target)
        self.harness.hub.join(peer, "room-1")
        self.harness.flush()
        alice.take()
        for reason, code in [
            ("closed", "PEER_NOT_FOUND"),
            ("too-large", "INVALID_MESSAGE"),
            ("buffer-full", "INTERNAL_ERROR"),
        ]:
            target.refuse = reason
            self.send(
                alice,
                {
                    "type": "OFFER",
                    "target_id": peer.id,
                    "payload": {},
                    "request_id": reason,
                },
            )
            error = self.assertError(alice, code, reason)
            self.assertEqual(error["payload"]["details"], reason)
        self.assertEqual(target.events, [])


class BadInputTests(EnvelopeTestCase):
    settings = WebSocketSettings(ping_interval=0, max_message_size=1024)

    def setUp(self):
        super().setUp()
        self.bystander = self.joined("calm")
        self.other = self.joined("calm")
        self.bystander.take()

    def tearDown(self):
        # Whatever a client sent, the other peers carry on.
        self.send(
            self.other,
            {
                "type": "OFFER",
                "target_id": self.bystander.peer_id,
                "payload": {"still": "here"},
            },
        )
        [offer] = self.bystander.take()
        self.assertEqual(offer["payload"], {"still": "here"})

    def test_invalid_json(self):
        client = self.connect()
        for frame in (b"{nope", b"", b'{"type":"JOIN",'):
            client.sendMessage(frame)
            self.harness.flush()
            self.assertError(client, "INVALID_MESSAGE")

    def test_not_an_object(self):
        client = self.connect()
        for frame in (b"[1,2]", b"42", b'"JOIN"', b"null", b"true"):
            client.sendMessage(frame)
            self.harness.flush()
            self.assertError(client, "INVALID_MESSAGE")

    def test_unknown_or_missing_type(self):
        client = self.connect()
        for message in (
            {"type": "DANCE"},
            {"type": "join"},
            {},
            {"type": 5},
            {"type": ["JOIN"]},
            {"type": "x" * 900},
        ):
            self.send(client, {**message, "request_id": "u"})
            self.assertError(client, "INVALID_MESSAGE", "u")

    def test_wrong_field_types_and_missing_fields(self):
        client = self.connect()
        for message in (
            {"type": "JOIN"},
            {"type": "JOIN", "room_id": ""},
            {"type": "JOIN", "room_id": 5},
            {"type": "JOIN", "room_id": ["a"]},
            {"type": "JOIN", "room_id": "a", "payload": [1]},
            {"type": "JOIN", "room_id": "a", "payload": "Alice"},
            {"type": "JOIN", "room_id": "a", "payload": {"display_name": 5}},
            {"type": "JOIN", "room_id": "a", "payload": {"endpoint": "203.0.113.1:1"}},
            {"type": "DISCOVER", "room_id": 5},
        ):
            self.send(client, {**message, "request_id": "w"})
            self.assertError(client, "INVALID_MESSAGE", "w")
        self.assertFalse(self.harness.hub.find(client.peer_id).rooms)

    def test_bad_request_id(self):
        client = self.connect()
        for request_id in ([1], {"a": 1}, True, 1.5):
            self.send(client, {"type": "KEEP_ALIVE", "request_id": request_id})
            self.assertError(client, "INVALID_MESSAGE")
        self.send(client, {"type": "KEEP_ALIVE", "request_id": 7})
        self.assertEqual(client.take()[0]["request_id"], 7)

    def test_oversized_frame(self):
        """
        A frame over --max-message-size gets INVALID_MESSAGE, then close
        1009; its room is told the peer left.
        """
        client = self.joined("calm")
        self.bystander.take(), self.other.take()
        client.sendMessage(
            orjson.dumps(
                {
                    "type": "OFFER",
                    "target_id": self.other.peer_id,
                    "payload": "x" * 2000,
                }
            )
        )
        self.harness.flush()
        self.assertError(client, "INVALID_MESSAGE")
        self.assertEqual(client.close_code, 1009)
        self.assertEqual(message_types(self.bystander.take()), ["PEER_LEFT"])
        self.assertEqual(message_types(self.other.take()), ["PEER_LEFT"])

    def test_binary_frame_closes_1003(self):
        client = self.connect()
        client.sendMessage(b'{"type":"KEEP_ALIVE"}', isBinary=True)
        self.harness.flush()
        self.assertEqual(client.take(), [])
        self.assertEqual(client.close_code, 1003)

    def test_invalid_utf8_closes_1007(self):
        client = self.connect()
        client.sendMessage(b'{"type":"KEEP_ALIVE","x":"\xff\xfe"}')
        self.harness.flush()
        self.assertEqual(client.close_code, 1007)

    def test_room_name_length(self):
        """
        Room names are at most MAX_ROOM_NAME_LENGTH characters.
        """
        client = self.connect()
        self.send(client, {"type": "JOIN", "room_id": "r" * 900, "request_id": "long"})
        self.assertError(client, "INVALID_MESSAGE", "long")
        self.send(client, {"type": "JOIN", "room_id": "r" * (MAX_ROOM_NAME_LENGTH + 1)})
        self.assertError(client, "INVALID_MESSAGE")
        self.send(client, {"type": "JOIN", "room_id": "r" * MAX_ROOM_NAME_LENGTH})
        self.assertEqual(message_types(client.take()), ["ACK"])

    def test_hundreds_of_rapid_joins_and_leaves(self):
        """
        300 joins and leaves without waiting: every one is answered, and a
        watcher sees them paired, in order.
        """
        client = self.connect()
        for number in range(300):
            client.send_json({"type": "JOIN", "room_id": "calm", "request_id": number})
            client.send_json({"type": "LEAVE"})
        self.harness.flush()
        replies = client.take()
        self.assertEqual(len(replies), 600)
        self.assertEqual({reply["type"] for reply in replies}, {"ACK"})
        self.assertEqual([r["request_id"] for r in replies[::2]], list(range(300)))
        seen = self.bystander.take()
        self.assertEqual(message_types(seen), ["PEER_JOINED", "PEER_LEFT"] * 300)
        self.assertEqual(len(self.harness.hub.room("calm").members), 2)

    def test_hundreds_of_connections_come_and_go(self):
        """
        200 clients connect, join and close in quick succession; the room's
        peers see each arrive and leave, and the hub forgets them all.
        """
        for _ in range(200):
            client = self.harness.connect("/ws")
            client.send_json({"type": "JOIN", "room_id": "calm"})
            client.sendClose()
        self.harness.flush()
        self.assertEqual(
            message_types(self.bystander.take()), ["PEER_JOINED", "PEER_LEFT"] * 200
        )
        self.other.take()
        self.assertEqual(self.harness.hub.stats().peers_total, 2)


class BigFrameTests(EnvelopeTestCase):
    """
    Hostile frames under a limit big enough to carry them.
    """

    settings = WebSocketSettings(ping_interval=0, max_message_size=256 * 1024)

    def test_ten_thousand_deep_payload(self):
        """
        A payload nested 10,000 deep is INVALID_MESSAGE; the sender and its
        room carry on.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()
        frame = (
            b'{"type":"OFFER","target_id":"'
            + alice.peer_id.encode()
            + b'","payload":'
            + b"[" * 10000
            + b"]" * 10000
            + b"}"
        )
        bob.sendMessage(frame)
        self.harness.flush()
        self.assertError(bob, "INVALID_MESSAGE")
        self.assertEqual(alice.take(), [])
        self.send(bob, {"type": "OFFER", "target_id": alice.peer_id, "payload": 1})
        self.assertEqual(message_types(alice.take()), ["OFFER"])

    def test_ten_thousand_character_room_name(self):
        alice = self.joined()
        self.send(alice, {"type": "JOIN", "room_id": "r" * 10000, "request_id": "long"})
        self.assertError(alice, "INVALID_MESSAGE", "long")
        self.send(alice, {"type": "DISCOVER", "room_id": "r" * 10000})
        self.assertError(alice, "INVALID_MESSAGE")
        self.assertEqual(list(self.harness.hub.find(alice.peer_id).rooms), ["room-1"])


class InternalErrorTests(EnvelopeTestCase):
    def test_a_bug_is_internal_error_then_1011(self):
        """
        A bug in a handler answers INTERNAL_ERROR with the request_id, is
        logged, and closes only that connection with 1011.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()

        def broken(*args):
            raise RuntimeError("bug")

        self.patch(
            EnvelopeSession,
            "_handlers",
            {**EnvelopeSession._handlers, "KEEP_ALIVE": broken},
        )
        self.send(bob, {"type": "KEEP_ALIVE", "request_id": "k"})
        self.assertError(bob, "INTERNAL_ERROR", "k")
        self.assertEqual(bob.close_code, 1011)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(message_types(alice.take()), ["PEER_LEFT"])
        self.assertIsNone(alice.close_code)


class CrossDialectTests(EnvelopeTestCase):
    def test_native_and_envelope_peers_share_a_room(self):
        """
        A native peer and an envelope peer in one room see each other in
        their own dialect's shape and reach each other by the hub id; a
        native free-form message has no envelope form and is not delivered.
        """
        alice = self.joined("mixed", payload=ALICE)
        native = self.harness.connect("/signal")
        [welcome] = native.take()
        native_id = welcome["peerId"]
        self.send(
            native, {"type": "join", "room": "mixed", "metadata": {"name": "nat"}}
        )
        [joined] = native.take()
        self.assertEqual(joined["peers"], [{"id": alice.peer_id, "metadata": ALICE}])
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "PEER_JOINED",
                    "peer_id": native_id,
                    "room_id": "mixed",
                    "payload": {
                        "peer_id": native_id,
                        "display_name": "nat",
                        "joined_at": NOW_MS,
                    },
                    "timestamp": NOW_MS,
                }
            ],
        )
        self.send(
            native,
            {
                "type": "offer",
                "room": "mixed",
                "to": alice.peer_id,
                "payload": {"sdp": "o"},
            },
        )
        self.send(
            native,
            {"type": "message", "room": "mixed", "to": alice.peer_id, "payload": "hi"},
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "OFFER",
                    "peer_id": native_id,
                    "target_id": alice.peer_id,
                    "room_id": "mixed",
                    "payload": {"sdp": "o"},
                    "timestamp": NOW_MS,
                }
            ],
        )
        self.send(
            alice, {"type": "ANSWER", "target_id": native_id, "payload": {"sdp": "a"}}
        )
        self.assertEqual(
            native.take(),
            [
                {
                    "type": "answer",
                    "room": "mixed",
                    "from": alice.peer_id,
                    "payload": {"sdp": "a"},
                }
            ],
        )

    def test_topic_and_envelope_peers_share_a_room(self):
        """
        A topic peer of /ws/mixed and an envelope peer in room "mixed" see
        each other and relay both ways.
        """
        alice = self.joined("mixed", payload=ALICE)
        topic = self.harness.connect("/ws/mixed")
        welcome, peer_list = topic.take()
        topic_id = welcome["selfId"]
        self.assertEqual([peer["id"] for peer in peer_list["peers"]], [alice.peer_id])
        [joined] = alice.take()
        self.assertEqual(joined["payload"], {"peer_id": topic_id, "joined_at": NOW_MS})
        self.send(
            topic,
            {
                "type": "ice-candidate",
                "to": alice.peer_id,
                "payload": {"candidate": "t"},
                "msgId": "m",
            },
        )
        [candidate] = alice.take()
        self.assertEqual(
            (candidate["type"], candidate["peer_id"], candidate["payload"]),
            ("CANDIDATE", topic_id, {"candidate": "t"}),
        )
        self.send(
            alice,
            {
                "type": "OFFER",
                "target_id": topic_id,
                "payload": {"sdp": "o"},
                "request_id": "r",
            },
        )
        [offer] = topic.take()
        self.assertEqual(
            (offer["type"], offer["from"], offer["payload"]),
            ("offer", alice.peer_id, {"sdp": "o"}),
        )


class StaleTests(EnvelopeTestCase):
    limits = HubLimits(stale_timeout=120)
    settings = WebSocketSettings(ping_interval=0)

    def test_silent_peer_is_swept(self):
        """
        With pings off, a peer that sends nothing for the stale timeout is
        removed by the sweep and closed with 4000; a peer sending KEEP_ALIVE
        stays, and is told the other left.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()
        for seconds in (50, 100, 150):
            self.harness.advance(50, step=5)
            self.send(alice, {"type": "KEEP_ALIVE"})
            self.harness.hub.sweep()
            self.harness.flush()
            if seconds < 120:
                self.assertEqual(message_types(alice.take()), ["ACK"])
                self.assertIsNone(bob.close_code)
        self.assertEqual(message_types(alice.take()), ["ACK", "PEER_LEFT"])
        self.assertEqual(bob.close_code, 4000)
        self.assertIsNone(alice.close_code)
        self.assertIsNone(self.harness.hub.find(bob.peer_id))
        self.assertEqual(
            [m.peer_id for m in self.harness.hub.room("room-1").members.values()],
            [alice.peer_id],
        )


class RateLimitTests(SynchronousTestCase):
    def test_over_the_rate_gets_rate_limited(self):
        """
        Messages over --max-message-rate are discarded with RATE_LIMITED,
        echoing nothing (the frame was not read).
        """
        harness = Harness(
            settings=WebSocketSettings(ping_interval=0, max_message_rate=1)
        )
        self.addCleanup(harness.restore)
        client = harness.connect("/ws")
        client.take()
        for index in range(3):
            client.send_json({"type": "KEEP_ALIVE", "request_id": index})
        harness.flush()
        replies = client.take()
        self.assertEqual([r["type"] for r in replies], ["ACK", "ACK", "ERROR"])
        self.assertEqual(replies[2]["payload"]["code"], "RATE_LIMITED")
        self.assertNotIn("request_id", replies[2])
