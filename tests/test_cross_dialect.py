"""
Peers of different dialects in one room see and reach each other, each in
its own dialect's shapes.
"""

from twisted.trial.unittest import SynchronousTestCase

from signaling.transports.websocket import WebSocketSettings

from .support import Harness


class NativeAndTopicTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(settings=WebSocketSettings(ping_interval=0))
        self.addCleanup(self.harness.restore)

    def send(self, client, message):
        client.send_json(message)
        self.harness.flush()

    def test_native_and_topic_peers_meet_and_relay(self):
        topic = self.harness.connect("/ws/lobby")
        welcome, _ = topic.take()
        topic_id = welcome["selfId"]

        native = self.harness.connect("/signal")
        [native_welcome] = native.take()
        native_id = native_welcome["peerId"]
        self.send(native, {"type": "join", "room": "lobby", "metadata": {"name": "n"}})
        self.assertEqual(
            native.take(),
            [
                {
                    "type": "joined",
                    "room": "lobby",
                    "peers": [{"id": topic_id, "metadata": {}}],
                }
            ],
        )
        self.assertEqual(
            topic.take(),
            [{"type": "peer-joined", "peerId": native_id, "metadata": {"name": "n"}}],
        )

        self.send(
            topic,
            {"type": "offer", "to": native_id, "payload": {"sdp": "o"}, "msgId": "1"},
        )
        self.assertEqual(
            native.take(),
            [
                {
                    "type": "offer",
                    "room": "lobby",
                    "from": topic_id,
                    "payload": {"sdp": "o"},
                }
            ],
        )
        self.send(
            native,
            {
                "type": "answer",
                "room": "lobby",
                "to": topic_id,
                "payload": {"sdp": "a"},
            },
        )
        self.send(
            native,
            {"type": "candidate", "room": "lobby", "payload": {"candidate": "c"}},
        )
        self.assertEqual(
            topic.take(),
            [
                {"type": "answer", "from": native_id, "payload": {"sdp": "a"}},
                {
                    "type": "ice-candidate",
                    "from": native_id,
                    "payload": {"candidate": "c"},
                },
            ],
        )

    def test_native_message_is_not_delivered_to_topic_peers(self):
        """
        The topic protocol carries WebRTC signaling only; free-form messages
        from native peers do not reach topic peers.
        """
        topic = self.harness.connect("/ws/lobby")
        topic_id = topic.take()[0]["selfId"]
        native = self.harness.connect("/signal")
        native.take()
        self.send(native, {"type": "join", "room": "lobby"})
        native.take(), topic.take()
        self.send(
            native,
            {"type": "message", "room": "lobby", "to": topic_id, "payload": "hi"},
        )
        self.assertEqual(topic.take(), [])
        self.assertEqual(native.take(), [])
