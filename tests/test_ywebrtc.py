"""
The y-webrtc dialect at /y-webrtc, over in-memory WebSockets.
"""

from __future__ import annotations

import orjson
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq

from signaling import tap
from signaling.dialects.ywebrtc import REPLAY_DELAY, YWebRTCSettings
from signaling.hub import Hub, HubLimits, Signal
from signaling.transports.websocket import WebSocketSettings

from .support import Harness, RecordingConnection

ANNOUNCE = {"type": "announce", "from": "a1b2"}


class YWebRTCTestCase(SynchronousTestCase):
    settings = YWebRTCSettings(max_topics=3, replay_window=5, replay_bytes=200)
    limits = HubLimits()
    hub_class = Hub

    def setUp(self):
        self.harness = Harness(
            limits=self.limits,
            settings=WebSocketSettings(ping_interval=0, max_message_size=4096),
            ywebrtc=self.settings,
            hub_class=self.hub_class,
        )
        self.addCleanup(self.harness.restore)

    def open(self, path="/y-webrtc", *topics):
        client = self.harness.connect(path)
        if topics:
            self.send(client, {"type": "subscribe", "topics": list(topics)})
        return client

    def send(self, client, message):
        client.send_json(message)
        self.harness.flush()

    def topics(self):
        """
        The topics of the one y-webrtc peer.
        """
        [peer] = [p for p in self.harness.hub.peers() if p.dialect == "y-webrtc"]
        return sorted(peer.rooms)

    def publish(self, client, topic, data):
        self.send(client, {"type": "publish", "topic": topic, "data": data})


class PubSubTests(YWebRTCTestCase):
    def test_publish_reaches_every_subscriber_and_the_sender(self):
        """
        A publish goes to every subscriber of the topic, the sender
        included, with C{clients} set to their number; others see nothing.
        """
        alice = self.open("/y-webrtc", "doc")
        bob = self.open("/y-webrtc", "doc", "other")
        carol = self.open("/y-webrtc", "other")
        self.publish(alice, "doc", ANNOUNCE)
        expected = {"type": "publish", "topic": "doc", "data": ANNOUNCE, "clients": 2}
        self.assertEqual(alice.take(), [expected])
        self.assertEqual(bob.take(), [expected])
        self.assertEqual(carol.take(), [])

    def test_opaque_string_data(self):
        """
        An encrypted room's data, a string, is passed on verbatim.
        """
        alice = self.open("/y-webrtc", "secret")
        bob = self.open("/y-webrtc", "secret")
        self.publish(alice, "secret", "B0FFES-R0NG==")
        self.assertEqual(bob.take()[0]["data"], "B0FFES-R0NG==")

    def test_topic_is_a_hub_room(self):
        """
        A subscribed topic is a hub room of the y-webrtc peer; unsubscribe
        and closing leave it.
        """
        alice = self.open("/y-webrtc", "doc", "notes")
        self.assertEqual(
            sorted(m.dialect for m in self.harness.hub.room("doc").members.values()),
            ["y-webrtc"],
        )
        self.send(alice, {"type": "unsubscribe", "topics": ["doc"]})
        self.assertIsNone(self.harness.hub.room("doc"))
        alice.transport.loseConnection()
        self.harness.flush()
        self.assertIsNone(self.harness.hub.room("notes"))
        self.assertEqual(self.harness.hub.peer_count(), 0)

    def test_subscribe_twice_and_empty(self):
        """
        Subscribing to a topic again, or to no topic, is no error and
        changes nothing.
        """
        alice = self.open("/y-webrtc", "doc")
        self.send(alice, {"type": "subscribe", "topics": ["doc"]})
        self.send(alice, {"type": "subscribe", "topics": []})
        self.assertEqual(alice.take(), [])
        self.assertEqual(len(self.harness.hub.room("doc").members), 1)

    def test_unsubscribe_never_subscribed(self):
        """
        As in the original, unsubscribing from a topic never subscribed is
        no error: nothing is answered and the connection stays usable.
        """
        alice = self.open("/y-webrtc", "doc")
        self.send(alice, {"type": "unsubscribe", "topics": ["never", 7, None]})
        self.assertEqual(alice.take(), [])
        self.publish(alice, "doc", ANNOUNCE)
        self.assertEqual(alice.take()[0]["clients"], 1)

    def test_ping(self):
        alice = self.open()
        self.send(alice, {"type": "ping"})
        self.assertEqual(alice.take(), [{"type": "pong"}])

    def test_not_subscribed(self):
        """
        A publish to a topic the sender is not subscribed to is refused (the
        original would deliver it to the topic's subscribers).
        """
        alice = self.open("/y-webrtc")
        bob = self.open("/y-webrtc", "doc")
        self.publish(alice, "doc", ANNOUNCE)
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "error",
                    "code": "not-subscribed",
                    "message": "subscribe to the topic first",
                }
            ],
        )
        self.assertEqual(bob.take(), [])


class BadInputTests(YWebRTCTestCase):
    def error_code(self, client, frame):
        client.sendMessage(frame)
        self.harness.flush()
        [error] = client.take()
        self.assertEqual(error["type"], "error")
        return error["code"]

    def test_not_json(self):
        """
        A frame that is not JSON (which crashes the original server) is
        answered with an error; the connection stays open.
        """
        alice = self.open("/y-webrtc", "doc")
        self.assertEqual(self.error_code(alice, b"{nope"), "invalid-json")
        self.assertEqual(self.error_code(alice, b"[1, 2]"), "invalid-json")
        self.send(alice, {"type": "ping"})
        self.assertEqual(alice.take(), [{"type": "pong"}])

    def test_wrong_types(self):
        alice = self.open("/y-webrtc", "doc")
        cases = [
            ({"type": "dance"}, "unknown-type"),
            ({"type": ["subscribe"]}, "unknown-type"),
            ({"type": "subscribe", "topics": "doc"}, "invalid-field"),
            ({"type": "unsubscribe"}, "invalid-field"),
            ({"type": "publish", "topic": 5, "data": {}}, "invalid-topic"),
            ({"type": "publish", "topic": "doc"}, "invalid-field"),
            ({"type": "publish", "topic": "doc", "data": None}, "invalid-field"),
            ({"type": "publish", "topic": "doc", "data": [1]}, "invalid-field"),
        ]
        for message, code in cases:
            self.assertEqual(
                self.error_code(alice, orjson.dumps(message)), code, message
            )
        self.assertEqual(len(self.harness.hub.room("doc").members), 1)

    def test_invalid_topics(self):
        """
        Topics that are not strings, and names the hub refuses, are named in
        one error per reason; the valid ones of the same subscribe hold.
        """
        alice = self.open()
        self.send(
            alice,
            {"type": "subscribe", "topics": [1, "", "x" * 300, "good", {"a": 1}]},
        )
        errors = alice.take()
        self.assertEqual([e["code"] for e in errors], ["invalid-topic"])
        self.assertEqual(errors[0]["topics"], ["", "x" * 300])
        self.assertEqual(self.topics(), ["good"])

    def test_too_many_topics(self):
        """
        Beyond --y-webrtc-max-topics, a subscribe is refused with
        too-many-topics naming the topics not subscribed.
        """
        alice = self.open("/y-webrtc", "a", "b")
        self.send(alice, {"type": "subscribe", "topics": ["c", "d", "e"]})
        [error] = alice.take()
        self.assertEqual(error["code"], "too-many-topics")
        self.assertEqual(error["topics"], ["d", "e"])
        self.assertEqual(self.topics(), ["a", "b", "c"])

    def test_too_large(self):
        """
        A frame over the size limit is answered with an error and closes
        the connection with 1009, leaving no ghost in the topic.
        """
        alice = self.open("/y-webrtc", "doc")
        alice.sendMessage(
            orjson.dumps({"type": "publish", "topic": "doc", "data": "x" * 5000})
        )
        self.harness.flush()
        self.assertEqual(alice.take()[0]["code"], "too-large")
        self.assertEqual(alice.close_code, 1009)
        self.assertIsNone(self.harness.hub.room("doc"))

    def test_binary_frame(self):
        alice = self.open("/y-webrtc", "doc")
        alice.sendMessage(b"\x00\x01", isBinary=True)
        self.harness.flush()
        self.assertEqual(alice.close_code, 1003)
        self.assertIsNone(self.harness.hub.room("doc"))


class FloodTests(SynchronousTestCase):
    def test_flood(self):
        """
        At 10 messages a second a client may burst 20 messages (here its
        subscribe and 19 publishes); the rest are discarded with
        rate-limited (the other subscriber gets only those 19), and one that
        keeps on is closed with 1008, leaving its topic.
        """
        harness = Harness(
            settings=WebSocketSettings(ping_interval=0, max_message_rate=10)
        )
        self.addCleanup(harness.restore)
        alice = harness.connect("/y-webrtc")
        bob = harness.connect("/y-webrtc")
        for client in (alice, bob):
            client.send_json({"type": "subscribe", "topics": ["doc"]})
        harness.flush()
        for index in range(25):
            alice.send_json({"type": "publish", "topic": "doc", "data": str(index)})
        harness.flush()
        self.assertEqual(len(bob.take()), 19)
        errors = [m for m in alice.take() if m["type"] == "error"]
        self.assertEqual({e["code"] for e in errors}, {"rate-limited"})
        self.assertEqual(len(errors), 6)
        for _ in range(50):
            alice.send_json({"type": "ping"})
        harness.flush()
        self.assertEqual(alice.close_code, 1008)
        self.assertEqual(len(harness.hub.room("doc").members), 1)


class LimitTests(YWebRTCTestCase):
    limits = HubLimits(max_peers_per_room=2)

    def test_topic_full(self):
        """
        A topic is a hub room, so its size limit applies.
        """
        self.open("/y-webrtc", "doc")
        self.open("/y-webrtc", "doc")
        carol = self.open("/y-webrtc", "doc")
        [error] = carol.take()
        self.assertEqual(error["code"], "topic-full")
        self.assertEqual(error["topics"], ["doc"])


class CrossDialectTests(YWebRTCTestCase):
    def test_native_sees_publishes_as_messages(self):
        """
        A native peer in the topic's room gets each publish as a broadcast
        message whose payload is the data; its own broadcast messages reach
        y-webrtc clients as publishes.
        """
        native = self.harness.connect("/signal")
        native.take()
        self.send(native, {"type": "join", "room": "doc"})
        native.take()
        alice = self.open("/y-webrtc", "doc")
        native.take()
        self.publish(alice, "doc", ANNOUNCE)
        [message] = native.take()
        self.assertEqual(
            (message["type"], message["room"], message["payload"]),
            ("message", "doc", ANNOUNCE),
        )
        alice.take()
        self.send(native, {"type": "message", "room": "doc", "payload": "hello"})
        self.assertEqual(
            alice.take(),
            [{"type": "publish", "topic": "doc", "data": "hello", "clients": 2}],
        )

    def test_native_direct_message_and_topic_offer(self):
        """
        A native message sent to a y-webrtc peer's id reaches it as a
        publish on the room; a topic peer's offer to it is not shown.
        """
        alice = self.open("/y-webrtc", "doc")
        native = self.harness.connect("/signal")
        native.take()
        self.send(native, {"type": "join", "room": "doc"})
        [joined] = native.take()
        [member] = joined["peers"]
        self.send(
            native,
            {"type": "message", "room": "doc", "to": member["id"], "payload": "hi"},
        )
        topic = self.harness.connect("/ws/doc")
        topic.take()
        self.send(topic, {"type": "offer", "to": member["id"], "payload": "sdp"})
        self.assertEqual(topic.take(), [])
        self.assertEqual(
            alice.take(),
            [{"type": "publish", "topic": "doc", "data": "hi", "clients": 2}],
        )

    def test_topic_peer_sees_nothing(self):
        """
        A topic-dialect peer relays only offers, answers and candidates: it
        sees the y-webrtc peer come and is counted in C{clients}, but sees
        no publish.
        """
        topic = self.harness.connect("/ws/doc")
        topic.take()
        alice = self.open("/y-webrtc", "doc")
        self.assertEqual([m["type"] for m in topic.take()], ["peer-joined"])
        self.publish(alice, "doc", ANNOUNCE)
        self.assertEqual(alice.take()[0]["clients"], 2)
        self.assertEqual(topic.take(), [])


class RoutingTests(SynchronousTestCase):
    def harness(self, settings):
        harness = Harness(settings=WebSocketSettings(ping_interval=0), ywebrtc=settings)
        self.addCleanup(harness.restore)
        return harness

    def pong(self, harness, path):
        client = harness.connect(path)
        if client.state != client.STATE_OPEN:
            return None
        client.send_json({"type": "ping"})
        harness.flush()
        return client.take()

    def test_path_only(self):
        """
        By default y-webrtc is at its path only; / is the root dialect's.
        """
        harness = self.harness(YWebRTCSettings())
        self.assertEqual(self.pong(harness, "/y-webrtc"), [{"type": "pong"}])
        self.assertNotEqual(self.pong(harness, "/"), [{"type": "pong"}])
        self.assertIsNone(self.pong(harness, "/some/room"))

    def test_any_path(self):
        """
        With any_path, / and any path no other route takes are y-webrtc;
        the other dialects keep theirs.
        """
        harness = self.harness(YWebRTCSettings(any_path=True))
        self.assertEqual(self.pong(harness, "/"), [{"type": "pong"}])
        self.assertEqual(self.pong(harness, "/some/room"), [{"type": "pong"}])
        native = harness.connect("/signal")
        self.assertEqual(native.take()[0]["type"], "welcome")

    def status(self, harness, path):
        treq = StubTreq(harness.site.resource())
        response = self.successResultOf(treq.get("http://localhost" + path))
        return response.code

    def test_plain_get(self):
        """
        A plain GET of the y-webrtc path is told to upgrade (426); with
        any_path, other paths no route takes stay 404 without an upgrade.
        """
        harness = self.harness(YWebRTCSettings(path="/yjs", any_path=True))
        self.assertEqual(self.status(harness, "/yjs"), 426)
        self.assertEqual(self.status(harness, "/elsewhere"), 404)
        self.assertEqual(self.status(harness, "/health"), 200)


class OptionTests(SynchronousTestCase):
    def parse(self, *args):
        options = tap.Options(environ={})
        options.parseOptions(list(args))
        return options["y-webrtc-settings"]

    def test_defaults(self):
        self.assertEqual(self.parse(), YWebRTCSettings())

    def test_options(self):
        self.assertEqual(
            self.parse(
                "--y-webrtc-path",
                "yjs/signal",
                "--y-webrtc-any-path",
                "--y-webrtc-max-topics",
                "4",
                "--y-webrtc-replay-window",
                "0",
                "--y-webrtc-replay-bytes",
                "100",
            ),
            YWebRTCSettings("/yjs/signal", True, 4, 0.0, 100),
        )

    def test_none(self):
        self.assertIsNone(self.parse("--y-webrtc-path", "none"))

    def test_refused(self):
        for args in (
            ["--y-webrtc-path", "/"],
            ["--y-webrtc-path", "/api/y"],
            ["--y-webrtc-path", "/peerjs/y"],
            ["--y-webrtc-path", "none", "--y-webrtc-any-path"],
            ["--y-webrtc-max-topics", "-1"],
        ):
            self.assertRaises(SystemExit, self.parse, *args)


class TwoNodeHub(Hub):
    """
    A hub where peers of a L{RecordingConnection} stand for peers of
    another node.
    """

    def is_local(self, peer_id):
        peer = self.find(peer_id)
        return peer is not None and not isinstance(peer.connection, RecordingConnection)


class ReplayTests(YWebRTCTestCase):
    hub_class = TwoNodeHub

    def remote(self, dialect="y-webrtc"):
        connection = RecordingConnection()
        peer = self.harness.hub.connect(connection, dialect=dialect)
        return peer, connection

    def remote_joins(self, topic="doc", dialect="y-webrtc"):
        peer, connection = self.remote(dialect)
        self.harness.hub.join(peer, topic)
        return peer, connection

    def signals(self, connection):
        return [e.payload for e in connection.events if type(e) is Signal]

    def announced(self, topic="doc"):
        alice = self.open("/y-webrtc", topic)
        self.publish(alice, topic, ANNOUNCE)
        alice.take()
        return alice

    def test_announce_replayed_to_remote_newcomer(self):
        """
        A y-webrtc client of another node that subscribes after our announce
        (so missed it) and from whom nothing comes within REPLAY_DELAY gets
        the announce (the first publish after the subscribe), to it alone.
        """
        alice = self.announced()
        self.publish(alice, "doc", {"type": "signal", "to": "x"})
        alice.take()
        self.harness.advance(3)
        _, remote = self.remote_joins()
        self.harness.advance(REPLAY_DELAY - 0.2)
        self.assertEqual(self.signals(remote), [])
        self.harness.advance(0.3)
        self.assertEqual(self.signals(remote), [ANNOUNCE])
        [signal] = [e for e in remote.events if type(e) is Signal]
        self.assertEqual((signal.kind, signal.room), ("message", "doc"))
        self.assertEqual(alice.take(), [])

    def test_not_when_heard_from(self):
        """
        A newcomer whose own announce reaches us calls us itself: ours is not
        passed on.
        """
        alice = self.announced()
        peer, remote = self.remote_joins()
        signal = Signal(kind="message", sender=peer.id, room="doc", payload=ANNOUNCE)
        self.harness.hub.broadcast(peer, "doc", signal)
        self.harness.flush()
        self.assertEqual(alice.take()[0]["data"], ANNOUNCE)
        self.harness.advance(REPLAY_DELAY + 0.5)
        self.assertEqual(self.signals(remote), [])

    def test_not_when_reached(self):
        """
        A member of the topic when we announced got the announce then.
        """
        peer, remote = self.remote_joins()
        self.announced()
        self.harness.hub.leave(peer, "doc")
        self.harness.hub.join(peer, "doc")
        self.harness.advance(REPLAY_DELAY + 0.5)
        self.assertEqual(self.signals(remote), [ANNOUNCE])

    def test_only_the_lower_id(self):
        """
        Of two clients that missed each other's announce, only the one with
        the lower peer id passes its announce on.
        """
        peer, remote = self.remote()
        self.announced()
        self.harness.hub.join(peer, "doc")
        self.harness.advance(REPLAY_DELAY + 0.5)
        self.assertEqual(self.signals(remote), [])

    def test_window_over(self):
        self.announced()
        self.harness.advance(5.2)
        _, remote = self.remote_joins()
        self.harness.advance(REPLAY_DELAY + 0.5)
        self.assertEqual(self.signals(remote), [])

    def test_not_for_local_or_other_dialects(self):
        """
        A newcomer on this node is found by its own announce (the original
        replays nothing); a native peer of another node is not sent it.
        """
        self.announced()
        bob = self.open("/y-webrtc", "doc")
        _, remote = self.remote_joins(dialect="native")
        self.harness.advance(REPLAY_DELAY + 0.5)
        self.assertEqual(bob.take(), [])
        self.assertEqual(self.signals(remote), [])

    def test_resubscribe_keeps_the_next(self):
        """
        A repeated subscribe (a client re-announcing) keeps the next publish;
        one over the byte bound is not kept.
        """
        alice = self.announced()
        self.send(alice, {"type": "subscribe", "topics": ["doc"]})
        self.publish(alice, "doc", "again")
        _, remote = self.remote_joins()
        self.harness.advance(REPLAY_DELAY + 0.5)
        self.assertEqual(self.signals(remote), ["again"])
        self.send(alice, {"type": "subscribe", "topics": ["doc"]})
        self.publish(alice, "doc", "y" * 201)
        _, remote = self.remote_joins()
        self.harness.advance(REPLAY_DELAY + 0.5)
        self.assertEqual(self.signals(remote), [])
