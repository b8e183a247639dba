"""
The native protocol at /signal, over in-memory WebSockets.
"""

import attrs
import orjson
from twisted.trial.unittest import SynchronousTestCase

from signaling import fastpath
from signaling.dialects.native import NativeSession
from signaling.hub import HubLimits
from signaling.transports.websocket import WebSocketSettings

from .support import Harness, RecordingConnection, message_types


class NativeTestCase(SynchronousTestCase):
    limits = HubLimits()
    settings = WebSocketSettings(ping_interval=0)

    def setUp(self):
        self.harness = Harness(self.limits, self.settings)
        self.addCleanup(self.harness.restore)
        self.addCleanup(fastpath.install)

    def test_fast_paths_as_set(self):
        """
        The server's protocol is on the fast paths exactly when the
        settings ask for them and the installed versions allow them.
        """
        client = self.harness.connect("/signal")
        verified = fastpath.check(fastpath.Versions.installed()) is None
        self.assertEqual(
            isinstance(self.harness.server_side(client), fastpath.FastPaths),
            self.settings.fast_paths and verified,
        )

    def connect(self, **kwargs):
        client = self.harness.connect("/signal", **kwargs)
        [welcome] = client.take()
        self.assertEqual(welcome["type"], "welcome")
        client.peer_id = welcome["peerId"]
        return client

    def send(self, client, message):
        client.send_json(message)
        self.harness.flush()

    def joined(self, room="lobby", metadata=None):
        client = self.connect()
        message = {"type": "join", "room": room}
        if metadata is not None:
            message["metadata"] = metadata
        self.send(client, message)
        [reply] = client.take()
        self.assertEqual(reply["type"], "joined")
        return client

    def assertError(self, client, code, request_id=None):
        messages = client.take()
        self.assertEqual(len(messages), 1, messages)
        [error] = messages
        self.assertEqual(error["type"], "error")
        self.assertEqual(error["code"], code)
        self.assertIsInstance(error["message"], str)
        if request_id is None:
            self.assertNotIn("id", error)
        else:
            self.assertEqual(error["id"], request_id)
        return error


class WelcomeAndJoinTests(NativeTestCase):
    def test_welcome_carries_an_unguessable_id(self):
        client = self.harness.connect("/signal")
        [welcome] = client.take()
        self.assertEqual(welcome, {"type": "welcome", "peerId": welcome["peerId"]})
        self.assertEqual(len(welcome["peerId"]), 24)

    def test_three_peers_join(self):
        """
        The third to join is told of the first two, with their metadata; the
        first two are told of the third.
        """
        alice = self.joined(metadata={"name": "alice"})
        bob = self.joined(metadata={"name": "bob"})
        carol = self.connect()
        self.send(
            carol,
            {"type": "join", "room": "lobby", "metadata": {"name": "carol"}, "id": 7},
        )
        [joined] = carol.take()
        self.assertEqual(
            joined,
            {
                "type": "joined",
                "room": "lobby",
                "peers": [
                    {"id": alice.peer_id, "metadata": {"name": "alice"}},
                    {"id": bob.peer_id, "metadata": {"name": "bob"}},
                ],
                "id": 7,
            },
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "peer-joined",
                    "room": "lobby",
                    "peer": {"id": bob.peer_id, "metadata": {"name": "bob"}},
                },
                {
                    "type": "peer-joined",
                    "room": "lobby",
                    "peer": {"id": carol.peer_id, "metadata": {"name": "carol"}},
                },
            ],
        )
        self.assertEqual(message_types(bob.take()), ["peer-joined"])

    def test_leave(self):
        alice = self.joined()
        bob = self.joined()
        alice.take()
        self.send(bob, {"type": "leave", "room": "lobby", "id": "x"})
        self.assertEqual(bob.take(), [{"type": "left", "room": "lobby", "id": "x"}])
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "peer-left",
                    "room": "lobby",
                    "peer": {"id": bob.peer_id, "metadata": {}},
                }
            ],
        )

    def test_several_rooms(self):
        alice = self.joined("a")
        self.send(alice, {"type": "join", "room": "b"})
        self.assertEqual(alice.take(), [{"type": "joined", "room": "b", "peers": []}])
        bob = self.connect()
        self.send(bob, {"type": "join", "room": "b"})
        [joined] = bob.take()
        self.assertEqual([peer["id"] for peer in joined["peers"]], [alice.peer_id])
        self.assertEqual(alice.take()[0]["room"], "b")

    def test_close_announces_departure(self):
        alice = self.joined()
        bob = self.joined()
        alice.take()
        bob.sendClose()
        self.harness.flush()
        self.assertEqual(message_types(alice.take()), ["peer-left"])
        self.assertEqual(self.harness.hub.stats().peers_total, 1)

    def test_ping(self):
        client = self.connect()
        self.send(client, {"type": "ping", "id": 3})
        self.assertEqual(client.take(), [{"type": "pong", "id": 3}])


class RelayTests(NativeTestCase):
    def test_offer_answer_candidate(self):
        alice = self.joined()
        bob = self.joined()
        alice.take()
        offer = {"type": "offer", "sdp": "v=0..."}
        self.send(
            bob,
            {"type": "offer", "room": "lobby", "to": alice.peer_id, "payload": offer},
        )
        self.assertEqual(
            alice.take(),
            [{"type": "offer", "room": "lobby", "from": bob.peer_id, "payload": offer}],
        )
        self.send(
            alice,
            {
                "type": "answer",
                "room": "lobby",
                "to": bob.peer_id,
                "payload": {"sdp": "a"},
            },
        )
        self.send(
            alice,
            {
                "type": "ice-candidate",
                "room": "lobby",
                "to": bob.peer_id,
                "payload": {"candidate": "c1"},
            },
        )
        self.assertEqual(
            bob.take(),
            [
                {
                    "type": "answer",
                    "room": "lobby",
                    "from": alice.peer_id,
                    "payload": {"sdp": "a"},
                },
                {
                    "type": "candidate",
                    "room": "lobby",
                    "from": alice.peer_id,
                    "payload": {"candidate": "c1"},
                },
            ],
        )

    def test_relay_to_a_closing_peer(self):
        """
        A message to a peer whose closing handshake has begun is answered
        with peer-not-found; nothing raises into the sender's handler.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()
        self.harness.server_side(alice).sendClose(1000)
        self.send(
            bob,
            {
                "type": "offer",
                "room": "lobby",
                "to": alice.peer_id,
                "payload": {},
                "id": 4,
            },
        )
        error, left = bob.take()
        self.assertEqual((error["code"], error["id"]), ("peer-not-found", 4))
        self.assertEqual(left["type"], "peer-left")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_sender_cannot_spoof_from(self):
        alice = self.joined()
        bob = self.joined()
        alice.take()
        self.send(
            bob,
            {
                "type": "message",
                "room": "lobby",
                "to": alice.peer_id,
                "from": "mallory",
                "payload": 1,
            },
        )
        [message] = alice.take()
        self.assertEqual(message["from"], bob.peer_id)

    def test_candidate_and_message_without_to_go_to_everyone_else(self):
        alice = self.joined()
        bob = self.joined()
        carol = self.joined()
        alice.take(), bob.take()
        self.send(
            alice, {"type": "message", "room": "lobby", "payload": {"chat": "hi"}}
        )
        self.send(alice, {"type": "candidate", "room": "lobby", "payload": "c"})
        for client in (bob, carol):
            self.assertEqual(message_types(client.take()), ["message", "candidate"])
        self.assertEqual(alice.take(), [])

    def test_offer_without_to_is_an_error(self):
        alice = self.joined()
        self.send(alice, {"type": "offer", "room": "lobby", "payload": {}, "id": 1})
        self.assertError(alice, "invalid-field", 1)

    def test_only_room_mates_are_reachable(self):
        alice = self.joined("a")
        bob = self.joined("b")
        self.send(
            alice,
            {
                "type": "offer",
                "room": "a",
                "to": bob.peer_id,
                "payload": {},
                "id": "r1",
            },
        )
        self.assertError(alice, "peer-not-found", "r1")
        self.send(
            alice, {"type": "offer", "room": "b", "to": bob.peer_id, "payload": {}}
        )
        self.assertError(alice, "not-in-room")
        self.assertEqual(bob.take(), [])


class ErrorTests(NativeTestCase):
    limits = HubLimits(max_peers_per_room=2, max_rooms_per_peer=2)
    settings = WebSocketSettings(ping_interval=0, max_message_size=1024)

    def test_invalid_json(self):
        client = self.connect()
        client.sendMessage(b"{nope")
        self.harness.flush()
        self.assertError(client, "invalid-json")

    def test_not_an_object(self):
        client = self.connect()
        for frame in (b"[1,2]", b"42", b'"join"', b"null"):
            client.sendMessage(frame)
            self.harness.flush()
            self.assertError(client, "invalid-json")

    def test_unknown_type(self):
        client = self.connect()
        for message in ({"type": "dance", "id": 1}, {"id": 1}, {"type": 5, "id": 1}):
            self.send(client, message)
            self.assertError(client, "unknown-type", 1)

    def test_invalid_field(self):
        client = self.connect()
        for message in (
            {"type": "join", "room": 5},
            {"type": "join"},
            {"type": "join", "room": "x" * 257},
            {"type": "join", "room": "a", "metadata": [1]},
            {"type": "leave"},
            {"type": "offer", "room": "a", "to": 5, "payload": {}},
            {"type": "message", "room": "a", "to": "b"},
            {"type": "ping", "id": [1]},
        ):
            self.send(client, message)
            self.assertError(client, "invalid-field")

    def test_not_in_room(self):
        client = self.connect()
        self.send(client, {"type": "leave", "room": "a", "id": 1})
        self.assertError(client, "not-in-room", 1)
        self.send(client, {"type": "message", "room": "a", "payload": 1})
        self.assertError(client, "not-in-room")

    def test_room_full_and_too_many_rooms(self):
        self.joined("a")
        self.joined("a")
        client = self.joined("b")
        self.send(client, {"type": "join", "room": "a", "id": 1})
        self.assertError(client, "room-full", 1)
        self.send(client, {"type": "join", "room": "c", "id": 2})
        self.assertEqual(message_types(client.take()), ["joined"])
        self.send(client, {"type": "join", "room": "d", "id": 2})
        self.assertError(client, "too-many-rooms", 2)
        self.send(client, {"type": "join", "room": "b", "id": 3})
        self.assertError(client, "already-in-room", 3)

    def test_message_too_large(self):
        """
        A frame over --max-message-size gets the error, then close 1009;
        the room is told the peer left.
        """
        alice = self.joined("a")
        bob = self.joined("a")
        alice.take()
        bob.sendMessage(
            orjson.dumps({"type": "message", "room": "a", "payload": "x" * 2000})
        )
        self.harness.flush()
        self.assertError(bob, "message-too-large")
        self.assertEqual(bob.close_code, 1009)
        self.assertEqual(message_types(alice.take()), ["peer-left"])

    def test_relay_too_large_for_recipient(self):
        """
        A message the recipient's connection cannot take because of its size
        is refused with message-too-large; a full buffer with dropped.
        """
        bob = self.joined("a")
        recipient = RecordingConnection()
        peer = self.harness.hub.connect(recipient)
        self.harness.hub.join(peer, "a")
        self.harness.flush()
        self.assertEqual(message_types(bob.take()), ["peer-joined"])
        recipient.refuse = "too-large"
        self.send(
            bob,
            {"type": "message", "room": "a", "to": peer.id, "payload": "x", "id": 1},
        )
        self.assertError(bob, "message-too-large", 1)
        recipient.refuse = "buffer-full"
        self.send(
            bob, {"type": "offer", "room": "a", "to": peer.id, "payload": "x", "id": 2}
        )
        self.assertError(bob, "dropped", 2)
        self.assertEqual(recipient.events, [])

    def test_binary_frame_closes_1003(self):
        client = self.connect()
        client.sendMessage(b"\x00\x01", isBinary=True)
        self.harness.flush()
        self.assertEqual(client.close_code, 1003)

    def test_invalid_utf8_closes_1007(self):
        client = self.connect()
        client.sendMessage(b'{"type":"ping","x":"\xff\xfe"}')
        self.harness.flush()
        self.assertEqual(client.close_code, 1007)


class SendBufferTests(NativeTestCase):
    settings = WebSocketSettings(ping_interval=0, max_send_buffer=1000)

    def test_stalled_reader_gets_dropped_not_buffered(self):
        """
        While a recipient's transport says its buffer is full, messages to it
        are queued only up to --max-send-buffer bytes; beyond that the sender
        gets dropped. When the buffer drains, delivery resumes.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()
        self.harness.server_side(alice).send_buffer.pauseProducing()
        already = len(alice.raw)
        outcomes = []
        for index in range(10):
            self.send(
                bob,
                {
                    "type": "message",
                    "room": "lobby",
                    "to": alice.peer_id,
                    "payload": "x" * 200,
                    "id": index,
                },
            )
            outcomes.append(bob.take())
        delivered = [o for o in outcomes if o == []]
        dropped = [o[0] for o in outcomes if o and o[0].get("code") == "dropped"]
        self.assertEqual(len(delivered) + len(dropped), 10)
        self.assertGreater(len(delivered), 0)
        self.assertGreater(len(dropped), 0)
        self.assertLessEqual(sum(len(frame) for frame in alice.raw[already:]), 1000)
        self.assertEqual(len(alice.take()), len(delivered))
        self.harness.server_side(alice).send_buffer.resumeProducing()
        self.send(
            bob, {"type": "message", "room": "lobby", "to": alice.peer_id, "payload": 1}
        )
        self.assertEqual(bob.take(), [])
        self.assertEqual(message_types(alice.take()), ["message"])


class RateLimitTests(NativeTestCase):
    settings = WebSocketSettings(ping_interval=0, max_message_rate=10)

    def test_over_the_rate_is_refused_then_refilled(self):
        """
        At 10 messages a second a client may burst 20; the rest are refused
        with rate-limited, and a second later 10 more are accepted.
        """
        client = self.connect()
        for index in range(25):
            client.send_json({"type": "ping", "id": index})
        self.harness.flush()
        replies = client.take()
        self.assertEqual([r["type"] for r in replies], ["pong"] * 20 + ["error"] * 5)
        self.assertEqual({r.get("code") for r in replies[20:]}, {"rate-limited"})
        self.harness.clock.advance(1)
        for index in range(11):
            client.send_json({"type": "ping", "id": index})
        self.harness.flush()
        self.assertEqual(message_types(client.take()), ["pong"] * 10 + ["error"])
        self.assertIsNone(client.close_code)

    def test_persistent_excess_closes_1008(self):
        """
        A client that keeps sending after twice its burst has been refused is
        closed with 1008; its room is told.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()
        for index in range(70):
            bob.send_json({"type": "ping", "id": index})
        self.harness.flush()
        self.assertEqual(bob.close_code, 1008)
        self.assertEqual(message_types(alice.take()), ["peer-left"])


class ChurnAndLongNameTests(NativeTestCase):
    def test_ten_thousand_character_room_name(self):
        client = self.connect()
        self.send(client, {"type": "join", "room": "r" * 10000, "id": 1})
        error = self.assertError(client, "invalid-field", 1)
        self.assertIn("256", error["message"])
        self.assertEqual(self.harness.hub.stats().rooms_total, 0)

    def test_hundreds_of_rapid_joins_and_leaves(self):
        """
        300 join/leave pairs from one client and 100 connections that join
        and close leave the hub clean; the bystander sees each come and go
        and can still be reached.
        """
        bystander = self.joined("busy")
        churner = self.connect()
        for index in range(300):
            churner.send_json({"type": "join", "room": "busy", "id": index})
            churner.send_json({"type": "leave", "room": "busy"})
        self.harness.flush()
        self.assertEqual(message_types(churner.take()), ["joined", "left"] * 300)
        for _ in range(100):
            client = self.connect()
            client.send_json({"type": "join", "room": "busy"})
            client.sendClose()
            self.harness.flush()
        self.assertEqual(
            message_types(bystander.take()), ["peer-joined", "peer-left"] * 400
        )
        self.send(churner, {"type": "join", "room": "busy"})
        churner.take()
        self.send(
            churner,
            {"type": "offer", "room": "busy", "to": bystander.peer_id, "payload": 1},
        )
        self.assertEqual(message_types(bystander.take()), ["peer-joined", "offer"])
        stats = self.harness.hub.stats()
        self.assertEqual(
            (stats.peers_total, stats.rooms_total, stats.peers_in_rooms), (2, 1, 2)
        )


class NestedPayloadTests(NativeTestCase):
    def test_ten_thousand_deep_payload_is_invalid_json(self):
        """
        A payload nested 10,000 deep is refused as invalid JSON; the sender
        and the room carry on.
        """
        alice = self.joined("a")
        bob = self.joined("a")
        alice.take()
        frame = (
            b'{"type":"message","room":"a","payload":'
            + b"[" * 10000
            + b"]" * 10000
            + b"}"
        )
        bob.sendMessage(frame)
        self.harness.flush()
        self.assertError(bob, "invalid-json")
        self.send(bob, {"type": "message", "room": "a", "payload": 1})
        self.assertEqual(message_types(alice.take()), ["message"])


class InternalErrorTests(NativeTestCase):
    def test_a_bug_closes_1011_and_others_carry_on(self):
        """
        A bug in a handler is reported as internal-error, logged, and closes
        only that connection, with 1011; nothing of the traceback reaches the
        client.
        """
        alice = self.joined("a")
        bob = self.joined("a")
        alice.take()

        def broken(*args):
            raise RuntimeError("bug")

        self.patch(
            NativeSession, "_handlers", {**NativeSession._handlers, "ping": broken}
        )
        bob.sendMessage(b'{"type":"ping"}')
        self.harness.flush()
        self.assertEqual(bob.close_code, 1011)
        self.assertEqual(
            bob.take(),
            [
                {
                    "type": "error",
                    "code": "internal-error",
                    "message": "internal server error",
                }
            ],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(message_types(alice.take()), ["peer-left"])

    def test_a_failing_recipient_closes_1011_and_the_room_carries_on(self):
        """
        A recipient whose connection fails with a bug on delivery is closed
        with 1011 and leaves the room; the sender and the other members are
        untouched, and the broadcast reaches those after it.
        """
        alice = self.joined("a")
        bob = self.joined("a")
        carol = self.joined("a")
        alice.take()
        bob.take()

        def broken(frame):
            raise RuntimeError("bug")

        self.harness.server_side(bob).send = broken
        self.send(alice, {"type": "message", "room": "a", "payload": "hi"})
        self.assertEqual(bob.close_code, 1011)
        self.assertEqual(message_types(carol.take()), ["message", "peer-left"])
        self.assertEqual(message_types(alice.take()), ["peer-left"])
        self.assertIsNone(alice.close_code)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FragmentTests(NativeTestCase):
    settings = WebSocketSettings(ping_interval=0, max_message_fragments=8)

    def test_pending_message_is_held_at_its_size(self):
        """
        The frames of an unfinished message are held in one buffer of their
        bytes, and the finished message is read as one.
        """
        alice = self.harness.connect()
        alice.take()
        alice.sendFrame(1, b'{"type":', fin=False)
        for _ in range(6):
            alice.sendFrame(0, b" ", fin=False)
        self.harness.flush()
        pending = self.harness.server_side(alice).pending_message
        self.assertEqual(type(pending), bytearray)
        self.assertEqual(pending, b'{"type":      ')
        alice.sendFrame(0, b'"ping"}', fin=True)
        self.harness.flush()
        self.assertEqual(alice.take(), [{"type": "pong"}])

    def test_too_many_fragments_close_1008(self):
        alice = self.harness.connect()
        alice.sendFrame(1, b"{", fin=False)
        for _ in range(8):
            alice.sendFrame(0, b" ", fin=False)
        self.harness.flush()
        self.assertEqual(alice.close_code, 1008)


class HeartbeatTests(NativeTestCase):
    settings = WebSocketSettings(ping_interval=5, ping_timeout=3)

    def test_silent_peer_is_announced_gone(self):
        """
        A peer that stops answering pings is removed within the ping interval
        plus the timeout, and its rooms are told.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()
        bob.answer_pings = False
        self.harness.advance(5 + 3 + 0.5)
        self.assertEqual(message_types(alice.take()), ["peer-left"])
        self.assertIsNone(alice.close_code)

    def test_answering_peer_stays(self):
        alice = self.joined()
        bob = self.joined()
        alice.take()
        self.harness.advance(30)
        self.assertEqual(alice.take(), [])
        self.assertIsNone(bob.close_code)
        self.assertEqual(self.harness.hub.stats().peers_in_rooms, 2)


class OriginTests(NativeTestCase):
    settings = WebSocketSettings(
        ping_interval=0, allowed_origins=("https://app.example",)
    )

    def test_allowed_origin_connects(self):
        client = self.connect(origin="https://app.example")
        self.assertTrue(client.opened)

    def test_other_origin_is_refused(self):
        client = self.harness.connect("/signal", origin="https://evil.example")
        self.assertFalse(client.opened)
        self.assertEqual(client.take(), [])
        self.assertEqual(self.harness.hub.stats().peers_total, 0)

    def test_client_without_origin_connects(self):
        """
        Non-browser clients send no Origin and are let in.
        """
        self.assertTrue(self.connect().opened)


class StaleTests(NativeTestCase):
    limits = HubLimits(stale_timeout=20)
    settings = WebSocketSettings(ping_interval=5, ping_timeout=30)

    def test_pongs_count_as_activity(self):
        """
        A peer that sends nothing but answers pings is never stale; one that
        answers nothing is swept after the stale timeout, closed with 4000,
        and its room is told.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()
        bob.answer_pings = False
        self.harness.advance(21)
        self.harness.hub.sweep()
        self.harness.flush()
        self.assertEqual(message_types(alice.take()), ["peer-left"])
        self.assertEqual(bob.close_code, 4000)
        self.assertIsNone(alice.close_code)
        self.harness.advance(60)
        self.harness.hub.sweep()
        self.harness.flush()
        self.assertIsNone(alice.close_code)


class RecipientBugTests(NativeTestCase):
    def test_a_bug_rendering_for_the_recipient_closes_the_recipient(self):
        """
        When rendering an event for a recipient fails, the recipient's
        connection closes with 1011 and the sender is told the peer is gone;
        the sender's connection stays open.
        """
        alice = self.joined()
        bob = self.joined()
        alice.take()

        def broken(event):
            raise RuntimeError("render bug")

        self.harness.server_side(alice).session.render = broken
        self.send(
            bob,
            {
                "type": "offer",
                "room": "lobby",
                "to": alice.peer_id,
                "payload": {},
                "id": 1,
            },
        )
        self.assertEqual(alice.close_code, 1011)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        error, left = bob.take()
        self.assertEqual((error["code"], error["id"]), ("peer-not-found", 1))
        self.assertEqual(left["type"], "peer-left")
        self.assertIsNone(bob.close_code)


def _on_plain_autobahn(case: type[NativeTestCase]) -> type[NativeTestCase]:
    """
    C{case} again with the fast paths off, so that the fallback to plain
    Autobahn is tested on every run.
    """
    return type(
        case.__name__ + "OnPlainAutobahn",
        (case,),
        {
            "settings": attrs.evolve(case.settings, fast_paths=False),
            "__module__": __name__,
            "__doc__": f"{case.__name__}, with the fast paths off.",
        },
    )


for _case in [
    WelcomeAndJoinTests,
    RelayTests,
    ErrorTests,
    SendBufferTests,
    RateLimitTests,
    ChurnAndLongNameTests,
    InternalErrorTests,
    FragmentTests,
    HeartbeatTests,
    StaleTests,
    RecipientBugTests,
]:
    globals()[_case.__name__ + "OnPlainAutobahn"] = _on_plain_autobahn(_case)
del _case
