"""
The topic dialect at /ws/{topic} (seed 001), over in-memory WebSockets.
"""

import re

import orjson
from twisted.trial.unittest import SynchronousTestCase

from signaling.hub import HubLimits
from signaling.transports.websocket import WebSocketSettings

from .support import Harness, message_types

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


class TopicTestCase(SynchronousTestCase):
    limits = HubLimits()
    settings = WebSocketSettings(ping_interval=0)

    def setUp(self):
        self.harness = Harness(self.limits, self.settings)
        self.addCleanup(self.harness.restore)

    def connect(self, topic="my-room"):
        client = self.harness.connect(f"/ws/{topic}")
        welcome, peer_list = client.take()
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(peer_list["type"], "peer-list")
        client.peer_id = welcome["selfId"]
        client.peer_list = peer_list
        return client

    def send(self, client, message):
        client.send_json(message)
        self.harness.flush()


class TypicalFlowTests(TopicTestCase):
    def test_typical_flow(self):
        """
        The document's typical flow: welcome and peer lists, peer-joined,
        offer, answer and ICE candidates both ways with server-set from and
        the sender's msgId; success gets no reply.
        """
        alice = self.harness.connect("/ws/my-room")
        welcome, peer_list = alice.take()
        self.assertRegex(welcome["selfId"], ULID)
        self.assertEqual(welcome, {"type": "welcome", "selfId": welcome["selfId"]})
        self.assertEqual(peer_list, {"type": "peer-list", "peers": []})
        alice.peer_id = welcome["selfId"]

        bob = self.connect()
        self.assertEqual(
            bob.peer_list, {"type": "peer-list", "peers": [{"id": alice.peer_id}]}
        )
        self.assertEqual(alice.take(), [{"type": "peer-joined", "peerId": bob.peer_id}])

        self.send(
            bob,
            {
                "type": "offer",
                "to": alice.peer_id,
                "payload": {"sdp": "offer"},
                "msgId": "m1",
            },
        )
        self.assertEqual(bob.take(), [])
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "offer",
                    "from": bob.peer_id,
                    "payload": {"sdp": "offer"},
                    "msgId": "m1",
                }
            ],
        )
        self.send(
            alice,
            {
                "type": "answer",
                "to": bob.peer_id,
                "payload": {"sdp": "answer"},
                "msgId": "m2",
            },
        )
        self.send(
            alice,
            {"type": "ice-candidate", "to": bob.peer_id, "payload": {"candidate": "a"}},
        )
        self.send(
            bob,
            {
                "type": "ice-candidate",
                "to": alice.peer_id,
                "payload": {"candidate": "b"},
                "msgId": 3,
            },
        )
        self.assertEqual(
            bob.take(),
            [
                {
                    "type": "answer",
                    "from": alice.peer_id,
                    "payload": {"sdp": "answer"},
                    "msgId": "m2",
                },
                {
                    "type": "ice-candidate",
                    "from": alice.peer_id,
                    "payload": {"candidate": "a"},
                },
            ],
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "ice-candidate",
                    "from": bob.peer_id,
                    "payload": {"candidate": "b"},
                    "msgId": 3,
                }
            ],
        )

    def test_from_cannot_be_spoofed(self):
        alice = self.connect()
        bob = self.connect()
        alice.take()
        self.send(
            bob,
            {"type": "offer", "to": alice.peer_id, "from": "01MALLORY", "payload": {}},
        )
        [offer] = alice.take()
        self.assertEqual(offer["from"], bob.peer_id)

    def test_closing_leaves_the_topic(self):
        alice = self.connect()
        bob = self.connect()
        alice.take()
        bob.sendClose()
        self.harness.flush()
        self.assertEqual(alice.take(), [{"type": "peer-left", "peerId": bob.peer_id}])
        self.assertEqual(self.harness.hub.stats().peers_total, 1)

    def test_topics_are_isolated(self):
        alice = self.connect("one")
        bob = self.connect("two")
        self.assertEqual(bob.peer_list["peers"], [])
        self.send(
            bob, {"type": "offer", "to": alice.peer_id, "payload": {}, "msgId": "x"}
        )
        self.assertEqual(
            bob.take(),
            [
                {
                    "type": "error",
                    "code": "target_not_found",
                    "message": "peer not found",
                    "msgId": "x",
                }
            ],
        )
        self.assertEqual(alice.take(), [])

    def test_percent_encoded_topic(self):
        alice = self.connect("my%20room")
        self.assertIsNotNone(self.harness.hub.room("my room"))
        self.assertEqual(alice.peer_list["peers"], [])


class ErrorTests(TopicTestCase):
    settings = WebSocketSettings(
        ping_interval=0, max_message_size=4096, max_send_buffer=600
    )

    def assertError(self, client, code, msg_id=None):
        [error] = client.take()
        expected = {"type": "error", "code": code, "message": error["message"]}
        if msg_id is not None:
            expected["msgId"] = msg_id
        self.assertEqual(error, expected)
        self.assertIsInstance(error["message"], str)

    def test_invalid_type(self):
        client = self.connect()
        for message in (
            {"type": "join", "msgId": 1},
            {"msgId": 1},
            {"type": ["offer"], "msgId": 1},
        ):
            self.send(client, message)
            self.assertError(client, "invalid_type", 1)
        for frame in (b"[1]", b"7", b'"offer"'):
            client.sendMessage(frame)
            self.harness.flush()
            self.assertError(client, "invalid_type")

    def test_missing_target(self):
        client = self.connect()
        for message in (
            {"type": "offer", "payload": {}},
            {"type": "answer", "to": ""},
            {"type": "offer", "to": 5},
        ):
            self.send(client, {**message, "msgId": "q"})
            self.assertError(client, "missing_target", "q")

    def test_target_not_found(self):
        client = self.connect()
        self.send(
            client, {"type": "offer", "to": "01NOBODY", "payload": {}, "msgId": 9}
        )
        self.assertError(client, "target_not_found", 9)

    def test_dropped_when_the_target_is_not_reading(self):
        """
        A peer whose outgoing buffer is full gets no more; the sender gets
        dropped for what did not fit, and delivery resumes after the drain.
        """
        alice = self.connect()
        bob = self.connect()
        alice.take()
        self.harness.server_side(alice).send_buffer.pauseProducing()
        already = len(alice.raw)
        replies = []
        for index in range(5):
            self.send(
                bob,
                {
                    "type": "offer",
                    "to": alice.peer_id,
                    "payload": "x" * 150,
                    "msgId": index,
                },
            )
            replies.extend(bob.take())
        # Each relayed frame is about 260 bytes: two fit in 600.
        self.assertEqual(
            [(r["code"], r["msgId"]) for r in replies],
            [("dropped", 2), ("dropped", 3), ("dropped", 4)],
        )
        self.assertEqual([m["msgId"] for m in alice.take()], [0, 1])
        self.assertLessEqual(sum(len(frame) for frame in alice.raw[already:]), 600)
        self.harness.server_side(alice).send_buffer.resumeProducing()
        self.send(
            bob, {"type": "offer", "to": alice.peer_id, "payload": {}, "msgId": 5}
        )
        self.assertEqual(bob.take(), [])
        self.assertEqual(message_types(alice.take()), ["offer"])

    def test_invalid_json_closes_1007(self):
        """
        As the original, a frame that is not JSON closes with 1007; the others
        are told the peer left.
        """
        alice = self.connect()
        bob = self.connect()
        alice.take()
        bob.sendMessage(b"{not json")
        self.harness.flush()
        self.assertEqual(bob.close_code, 1007)
        self.assertEqual(alice.take(), [{"type": "peer-left", "peerId": bob.peer_id}])

    def test_ten_thousand_deep_payload_closes_1007(self):
        alice = self.connect()
        bob = self.connect()
        alice.take()
        bob.sendMessage(
            b'{"type":"offer","to":"x","payload":' + b"[" * 10000 + b"]" * 10000 + b"}"
        )
        self.harness.flush()
        # 20,000 bytes is over this test's 4,096-byte limit: 1009 first.
        self.assertEqual(bob.close_code, 1009)
        carol = self.connect()
        carol.sendMessage(
            b'{"type":"offer","to":"x","payload":' + b"[" * 2000 + b"]" * 2000 + b"}"
        )
        self.harness.flush()
        self.assertEqual(carol.close_code, 1007)
        self.assertIsNone(alice.close_code)
        self.assertEqual(
            message_types(alice.take()), ["peer-left", "peer-joined", "peer-left"]
        )

    def test_binary_json_is_a_message(self):
        """
        As in the original, JSON in a binary frame is handled like a text
        frame.
        """
        alice = self.connect()
        bob = self.connect()
        alice.take()
        bob.sendMessage(
            orjson.dumps(
                {"type": "offer", "to": alice.peer_id, "payload": {"sdp": "o"}}
            ),
            isBinary=True,
        )
        bob.sendMessage(
            orjson.dumps({"type": "offer", "to": "nobody", "msgId": 1}), isBinary=True
        )
        self.harness.flush()
        self.assertEqual(
            alice.take(),
            [{"type": "offer", "from": bob.peer_id, "payload": {"sdp": "o"}}],
        )
        self.assertEqual(message_types(bob.take()), ["error"])

    def test_binary_invalid_utf8_and_oversized(self):
        alice = self.connect()
        for frame, binary, code in (
            (b"\x01\x02", True, 1007),
            (b'{"type":"offer","to":"\xc3\x28"}', True, 1007),
            (b'{"type":"offer","to":"\xc3\x28"}', False, 1007),
            (
                orjson.dumps({"type": "offer", "to": "x", "payload": "y" * 5000}),
                False,
                1009,
            ),
        ):
            client = self.connect()
            client.sendMessage(frame, isBinary=binary)
            self.harness.flush()
            self.assertEqual(client.close_code, code)
        self.assertIsNone(alice.close_code)
        self.assertEqual(message_types(alice.take()), ["peer-joined", "peer-left"] * 4)

    def test_rate_limited(self):
        harness = Harness(
            settings=WebSocketSettings(ping_interval=0, max_message_rate=1)
        )
        self.addCleanup(harness.restore)
        client = harness.connect("/ws/x")
        client.take()
        for index in range(3):
            client.send_json({"type": "offer", "to": "nobody", "msgId": index})
        harness.flush()
        self.assertEqual(
            [(r["code"], r.get("msgId")) for r in client.take()],
            [("target_not_found", 0), ("target_not_found", 1), ("rate_limited", None)],
        )

    def test_ten_thousand_character_topic(self):
        """
        A topic name over 256 characters is refused with invalid_topic and a
        1008 close; nobody is created in the hub.
        """
        client = self.harness.connect("/ws/" + "t" * 10000)
        [error] = client.take()
        self.assertEqual(error["code"], "invalid_topic")
        self.assertEqual(client.close_code, 1008)
        self.assertEqual(self.harness.hub.stats().peers_total, 0)

    def test_full_topic(self):
        harness = Harness(
            HubLimits(max_peers_per_room=1), WebSocketSettings(ping_interval=0)
        )
        self.addCleanup(harness.restore)
        harness.connect("/ws/small")
        client = harness.connect("/ws/small")
        [error] = client.take()
        self.assertEqual(error["code"], "room_full")
        self.assertEqual(client.close_code, 1008)
        self.assertEqual(harness.hub.stats().peers_total, 1)

    def test_hundreds_of_rapid_joins_and_leaves(self):
        """
        300 connections opening and closing leave the hub as it was and the
        peer that stays sees a joined/left pair for each.
        """
        alice = self.connect()
        for _ in range(300):
            client = self.harness.connect("/ws/my-room")
            client.sendClose()
            self.harness.flush()
        self.assertEqual(
            message_types(alice.take()), ["peer-joined", "peer-left"] * 300
        )
        stats = self.harness.hub.stats()
        self.assertEqual((stats.peers_total, stats.rooms_total), (1, 1))
