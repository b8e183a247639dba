"""
The PeerJS dialect under /peerjs, over in-memory WebSockets and StubTreq.
"""

from __future__ import annotations

import orjson
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from twisted.web.server import Site

from signaling import tap
from signaling.auth import AuthPolicy, TokenVerifier
from signaling.dialects.peerjs import PeerJSRealm, PeerJSSettings
from signaling.transports.websocket import WebSocketSettings

from .support import Harness, make_site

SETTINGS = PeerJSSettings(
    expire_timeout=5,
    alive_timeout=60,
    concurrent_limit=4,
    queue_messages=3,
    queue_bytes=400,
    queue_total_bytes=1000,
)


def url(peer_id="alice", token="secret", key="peerjs", prefix="/peerjs"):
    return f"{prefix}/peerjs?key={key}&id={peer_id}&token={token}&version=1.5.5"


class PeerJSTestCase(SynchronousTestCase):
    settings = SETTINGS

    def setUp(self):
        self.harness = Harness(
            settings=WebSocketSettings(ping_interval=0), peerjs=self.settings
        )
        self.addCleanup(self.harness.restore)

    def open(self, peer_id="alice", token="secret", **kwargs):
        client = self.harness.connect(url(peer_id, token, **kwargs))
        self.assertEqual(client.take(), [{"type": "OPEN"}])
        return client

    def send(self, client, message):
        client.send_json(message)
        self.harness.flush()

    def sweep_after(self, seconds):
        self.harness.advance(seconds)
        self.harness.peerjs.sweep()
        self.harness.flush()


class ConnectTests(PeerJSTestCase):
    def test_open(self):
        """
        A client with id, token and key is told OPEN and holds its id in
        the hub.
        """
        self.open("alice")
        self.assertEqual(self.harness.peerjs.ids(), ["alice"])
        self.assertEqual(self.harness.hub.find("alice").dialect, "peerjs")

    def refused(self, path, message):
        client = self.harness.connect(path)
        self.assertEqual(
            client.take(), [{"type": "ERROR", "payload": {"msg": message}}]
        )
        self.assertEqual(client.close_code, 1008)

    def test_missing_parameters(self):
        self.refused(
            "/peerjs/peerjs?key=peerjs&id=alice",
            "No id, token, or key supplied to websocket server",
        )

    def test_wrong_key(self):
        self.refused(url(key="other"), "Invalid key provided")

    def test_invalid_id(self):
        """
        An id the peerjs client itself would refuse is refused, and so is
        one over the length limit.
        """
        self.refused(url(peer_id="-bad"), "Invalid id")
        self.refused(url(peer_id="a" * 257), "Invalid id")

    def test_id_taken(self):
        """
        An id held under another token is refused with ID-TAKEN; the holder
        keeps it.
        """
        alice = self.open("alice", "one")
        intruder = self.harness.connect(url("alice", "two"))
        self.assertEqual(
            intruder.take(), [{"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}]
        )
        self.assertEqual(intruder.close_code, 1008)
        self.assertIsNone(alice.close_code)

    def test_id_of_another_dialect(self):
        """
        An id that is a peer of another dialect is taken, too.
        """
        native = self.harness.connect("/signal")
        [welcome] = native.take()
        intruder = self.harness.connect(url(welcome["peerId"]))
        self.assertEqual(intruder.take()[0]["type"], "ID-TAKEN")

    def test_same_token_replaces(self):
        """
        The same id and token again (peer.reconnect()) takes the id over:
        the new socket is told OPEN, the old one is closed with 4000.
        """
        old = self.open("alice", "one")
        new = self.open("alice", "one")
        self.assertEqual(old.close_code, 4000)
        self.assertIn("replaced", old.close_reason)
        self.assertIsNone(new.close_code)
        bob = self.open("bob")
        self.send(bob, {"type": "OFFER", "dst": "alice", "payload": {"sdp": "x"}})
        self.assertEqual(new.take()[0]["src"], "bob")

    def test_concurrent_limit(self):
        for peer_id in ("a", "b", "c", "d"):
            self.open(peer_id)
        self.refused(url("e"), "Server has reached its concurrent user limit")
        self.assertEqual(self.harness.peerjs.ids(), ["a", "b", "c", "d"])

    def test_close_frees_the_id(self):
        alice = self.open("alice", "one")
        alice.sendClose()
        self.harness.flush()
        self.open("alice", "two")


class RelayTests(PeerJSTestCase):
    def test_relay_overwrites_src(self):
        """
        OFFER, ANSWER and CANDIDATE reach their dst with the sender's id as
        src whatever it claims; only type, src, dst and payload are passed.
        """
        alice = self.open("alice")
        bob = self.open("bob")
        for kind in ("OFFER", "ANSWER", "CANDIDATE"):
            self.send(
                alice,
                {
                    "type": kind,
                    "src": "mallory",
                    "dst": "bob",
                    "payload": {"sdp": kind},
                    "extra": 1,
                },
            )
        self.assertEqual(
            bob.take(),
            [
                {"type": kind, "src": "alice", "dst": "bob", "payload": {"sdp": kind}}
                for kind in ("OFFER", "ANSWER", "CANDIDATE")
            ],
        )
        self.assertEqual(alice.take(), [])

    def test_unknown_type_dropped(self):
        alice = self.open("alice")
        bob = self.open("bob")
        self.send(alice, {"type": "HELLO", "dst": "bob"})
        self.assertEqual(bob.take(), [])
        self.assertEqual(alice.take(), [])

    def test_leave_without_dst(self):
        """
        LEAVE without dst gives the id up and ends the connection.
        """
        alice = self.open("alice")
        self.send(alice, {"type": "LEAVE"})
        self.assertEqual(alice.close_code, 1000)
        self.assertEqual(self.harness.peerjs.ids(), [])

    def test_leave_and_expire_are_relayed_not_queued(self):
        alice = self.open("alice")
        bob = self.open("bob")
        self.send(alice, {"type": "LEAVE", "dst": "bob"})
        self.send(alice, {"type": "EXPIRE", "dst": "carol"})
        self.assertEqual(bob.take(), [{"type": "LEAVE", "src": "alice", "dst": "bob"}])
        carol = self.open("carol")
        self.assertEqual(carol.take(), [])


class BadInputTests(PeerJSTestCase):
    def assertError(self, client, text):
        self.assertEqual(client.take(), [{"type": "ERROR", "payload": {"msg": text}}])
        self.assertIsNone(client.close_code)

    def test_invalid_json(self):
        alice = self.open("alice")
        alice.sendMessage(b"{not json")
        self.harness.flush()
        self.assertError(alice, "Invalid message: not JSON")

    def test_not_an_object(self):
        alice = self.open("alice")
        self.send(alice, [1, 2])
        self.assertError(alice, "Invalid message: not a JSON object")

    def test_wrong_types(self):
        alice = self.open("alice")
        self.send(alice, {"type": 5})
        self.assertError(alice, "Invalid message: 'type' must be a string")
        for dst in (None, 7, "", "x" * 257, ["bob"]):
            self.send(alice, {"type": "OFFER", "dst": dst, "payload": {}})
            self.assertError(alice, "Invalid message: 'dst' must be a peer id")

    def test_before_open(self):
        """
        A refused connection's frames are ignored.
        """
        client = self.harness.connect(url(key="wrong"))
        client.take()
        self.assertEqual(client.close_code, 1008)


class QueueTests(PeerJSTestCase):
    def test_queued_until_connect(self):
        """
        Messages for an id not connected wait and are delivered, in order,
        right after its OPEN.
        """
        alice = self.open("alice")
        self.send(alice, {"type": "OFFER", "dst": "bob", "payload": {"n": 1}})
        self.send(alice, {"type": "CANDIDATE", "dst": "bob", "payload": {"n": 2}})
        bob = self.harness.connect(url("bob"))
        self.assertEqual(
            bob.take(),
            [
                {"type": "OPEN"},
                {"type": "OFFER", "src": "alice", "dst": "bob", "payload": {"n": 1}},
                {
                    "type": "CANDIDATE",
                    "src": "alice",
                    "dst": "bob",
                    "payload": {"n": 2},
                },
            ],
        )
        self.assertEqual(self.harness.peerjs.queued_bytes(), 0)

    def test_expire(self):
        """
        After the expire timeout each sender is told EXPIRE once per
        destination, and the messages are gone.
        """
        alice = self.open("alice")
        carol = self.open("carol")
        for _ in range(2):
            self.send(alice, {"type": "OFFER", "dst": "bob", "payload": {}})
        self.send(carol, {"type": "OFFER", "dst": "bob", "payload": {}})
        self.send(alice, {"type": "OFFER", "dst": "dave", "payload": {}})
        self.sweep_after(4)
        self.assertEqual(alice.take(), [])
        self.sweep_after(1.5)
        self.assertEqual(
            sorted(m["src"] for m in alice.take()),
            ["bob", "dave"],
        )
        self.assertEqual(
            carol.take(), [{"type": "EXPIRE", "src": "bob", "dst": "carol"}]
        )
        bob = self.open("bob")
        self.assertEqual(bob.take(), [])

    def test_messages_per_destination(self):
        alice = self.open("alice")
        for _ in range(3):
            self.send(alice, {"type": "CANDIDATE", "dst": "bob", "payload": {}})
        self.assertEqual(alice.take(), [])
        self.send(alice, {"type": "CANDIDATE", "dst": "bob", "payload": {}})
        self.assertEqual(
            alice.take(), [{"type": "EXPIRE", "src": "bob", "dst": "alice"}]
        )
        bob = self.harness.connect(url("bob"))
        self.assertEqual(len(bob.take()), 1 + 3)

    def test_bytes_per_destination(self):
        alice = self.open("alice")
        self.send(alice, {"type": "OFFER", "dst": "bob", "payload": "x" * 300})
        self.send(alice, {"type": "OFFER", "dst": "bob", "payload": "x" * 100})
        self.assertEqual(
            alice.take(), [{"type": "EXPIRE", "src": "bob", "dst": "alice"}]
        )

    def test_total_bytes(self):
        alice = self.open("alice")
        for dst in ("b", "c", "d"):
            self.send(alice, {"type": "OFFER", "dst": dst, "payload": "x" * 250})
        self.assertEqual(alice.take(), [])
        self.send(alice, {"type": "OFFER", "dst": "e", "payload": "x" * 250})
        self.assertEqual(alice.take(), [{"type": "EXPIRE", "src": "e", "dst": "alice"}])


class AliveTests(PeerJSTestCase):
    def test_heartbeat_keeps_alive(self):
        """
        A client that sends HEARTBEAT stays; one that sends only other
        traffic is closed with 4000 after the alive timeout and its id is
        free at once.
        """
        alice = self.open("alice")
        bob = self.open("bob")
        for _ in range(13):
            self.send(alice, {"type": "HEARTBEAT"})
            if bob.close_code is None:
                self.send(bob, {"type": "CANDIDATE", "dst": "alice", "payload": {}})
            self.sweep_after(5)
        self.assertIsNone(alice.close_code)
        self.assertEqual(bob.close_code, 4000)
        self.assertEqual(self.harness.peerjs.ids(), ["alice"])
        self.assertIsNone(self.harness.hub.find("bob"))


class CrossDialectTests(PeerJSTestCase):
    def test_room_member(self):
        """
        A PeerJS client under /peerjs/room/NAME/ is a member of NAME: a
        native peer there sees it join, reaches it by its PeerJS id, is
        answered, and its leaving is a LEAVE.
        """
        alice = self.open("alice", prefix="/peerjs/room/lobby")
        native = self.harness.connect("/signal")
        native_id = native.take()[0]["peerId"]
        self.send(native, {"type": "join", "room": "lobby"})
        [joined] = native.take()
        self.assertEqual([peer["id"] for peer in joined["peers"]], ["alice"])
        self.send(
            native,
            {"type": "offer", "room": "lobby", "to": "alice", "payload": {"sdp": "o"}},
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "OFFER",
                    "src": native_id,
                    "dst": "alice",
                    "payload": {"sdp": "o"},
                }
            ],
        )
        self.send(alice, {"type": "ANSWER", "dst": native_id, "payload": {"sdp": "a"}})
        [answer] = native.take()
        self.assertEqual(
            (answer["type"], answer["from"], answer["payload"]),
            ("answer", "alice", {"sdp": "a"}),
        )
        native.sendClose()
        self.harness.flush()
        self.assertEqual(
            alice.take(), [{"type": "LEAVE", "src": native_id, "dst": "alice"}]
        )

    def test_without_room_not_reachable(self):
        """
        A PeerJS client outside any room is in no room: another dialect's
        peer cannot address it, and its messages to that peer are queued
        as for an offline PeerJS id.
        """
        self.open("alice")
        self.assertEqual(self.harness.hub.find("alice").rooms, {})


class HTTPTests(PeerJSTestCase):
    settings = PeerJSSettings(discovery=True)

    def setUp(self):
        super().setUp()
        self.treq = StubTreq(self.harness.site.resource())

    def get(self, path, **kwargs):
        response = self.successResultOf(
            self.treq.get("http://localhost" + path, **kwargs)
        )
        return response, self.successResultOf(response.content())

    def test_banner(self):
        for path in ("/peerjs", "/peerjs/"):
            response, body = self.get(path, headers={"Origin": "https://app"})
            self.assertEqual(response.code, 200)
            self.assertEqual(orjson.loads(body)["name"], "PeerJS Server")
            self.assertEqual(
                response.headers.getRawHeaders("Access-Control-Allow-Origin"), ["*"]
            )

    def test_id(self):
        response, body = self.get("/peerjs/anykey/id?ts=1&version=1.5.5")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("Content-Type"), ["text/html; charset=utf-8"]
        )
        self.assertRegex(body.decode(), r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-")
        _, again = self.get("/peerjs/peerjs/id")
        self.assertNotEqual(body, again)

    def test_peers(self):
        self.open("alice")
        response, body = self.get("/peerjs/peerjs/peers")
        self.assertEqual(orjson.loads(body), ["alice"])

    def test_others_untouched(self):
        response, body = self.get("/health")
        self.assertEqual(response.code, 200)
        response, body = self.get("/peerjsx/")
        self.assertEqual(response.code, 404)
        response, body = self.get("/peerjs/nothing/here")
        self.assertEqual(response.code, 404)

    def test_websocket_path_needs_upgrade(self):
        response, _ = self.get("/peerjs/peerjs")
        self.assertEqual(response.code, 426)

    def test_preflight(self):
        response = self.successResultOf(
            self.treq.request(
                "OPTIONS", "http://localhost/peerjs/peerjs/id", headers={"Origin": "x"}
            )
        )
        self.assertEqual(response.code, 204)


class NoDiscoveryTests(PeerJSTestCase):
    def test_peers_refused(self):
        treq = StubTreq(self.harness.site.resource())
        response = self.successResultOf(
            treq.get("http://localhost/peerjs/peerjs/peers")
        )
        self.assertEqual(response.code, 401)


class AuthRequiredTests(SynchronousTestCase):
    def test_refused_under_auth_required(self):
        """
        With --auth required every PeerJS client is refused with ERROR: it
        can present no token of ours, and its own token is not one.
        """
        harness = Harness(settings=WebSocketSettings(ping_interval=0))
        self.addCleanup(harness.restore)
        realm = PeerJSRealm(harness.hub, SETTINGS)
        site = make_site(
            harness.hub,
            WebSocketSettings(ping_interval=0),
            peerjs=realm,
            auth=AuthPolicy(
                mode="required",
                verifier=TokenVerifier(key=b"s" * 32, algorithms=("HS256",)),
            ),
        )
        harness.web = Site(site.resource())
        client = harness.connect(url("alice", token="not-a-jwt"))
        [error] = client.take()
        self.assertEqual(error["type"], "ERROR")
        self.assertIn("requires a token", error["payload"]["msg"])
        self.assertEqual(client.close_code, 1008)
        self.assertEqual(realm.ids(), [])


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv):
        options = tap.Options(environ={})
        options.parseOptions(list(argv))
        return options

    def test_defaults(self):
        self.assertEqual(self.parse()["peerjs-settings"], PeerJSSettings())

    def test_options(self):
        settings = self.parse(
            "--peerjs-path",
            "/rtc/pj/",
            "--peerjs-key",
            "k",
            "--peerjs-discovery",
            "--peerjs-expire-timeout",
            "2",
            "--peerjs-alive-timeout",
            "0",
            "--peerjs-concurrent-limit",
            "7",
            "--peerjs-queue-messages",
            "3",
            "--peerjs-queue-bytes",
            "100",
            "--peerjs-queue-total-bytes",
            "1000",
        )["peerjs-settings"]
        self.assertEqual(
            settings,
            PeerJSSettings(
                path="/rtc/pj",
                key="k",
                discovery=True,
                expire_timeout=2,
                alive_timeout=0,
                concurrent_limit=7,
                queue_messages=3,
                queue_bytes=100,
                queue_total_bytes=1000,
            ),
        )
        self.assertEqual(settings.sweep_interval, 0.5)

    def test_none(self):
        self.assertIsNone(self.parse("--peerjs-path", "none")["peerjs-settings"])

    def test_bad(self):
        for argv, words in [
            (["--peerjs-path", "/"], "--peerjs-path must be a path of its own"),
            (["--peerjs-path", "/api"], "--peerjs-path must be a path of its own"),
            (["--peerjs-key", ""], "--peerjs-key must not be empty"),
            (["--peerjs-key", "room"], "--peerjs-key must not be empty or 'room'"),
            (["--peerjs-expire-timeout", "0"], "--peerjs-expire-timeout must be"),
            (["--peerjs-queue-bytes", "lots"], "--peerjs-queue-bytes takes a whole"),
        ]:
            error = self.assertRaises(SystemExit, self.parse, *argv)
            self.assertIn(words, str(error.code))


class RecordingCluster:
    """
    A stand-in for L{signaling.cluster.peerjs.PeerJSCluster}: ids of other
    nodes in C{where}; what the realm announces and forwards is recorded.
    """

    def __init__(self) -> None:
        self.where: dict[str, str] = {}
        self.announced: list[tuple[str, bool]] = []
        self.forwarded: list[tuple[str, str, dict]] = []

    def node_of(self, peer_id):
        return self.where.get(peer_id)

    def lookup(self, peer_id):
        return defer.succeed(self.where.get(peer_id))

    def announce(self, peer_id, online):
        self.announced.append((peer_id, online))

    def forward(self, node, destination, frame):
        self.forwarded.append((node, destination, orjson.loads(frame)))
        return True


class ClusterTests(PeerJSTestCase):
    def setUp(self):
        super().setUp()
        self.cluster = self.harness.peerjs.cluster = RecordingCluster()

    def test_announced(self):
        alice = self.open("alice")
        alice.sendClose()
        self.harness.flush()
        self.assertEqual(self.cluster.announced, [("alice", True), ("alice", False)])

    def test_id_of_another_node_is_taken(self):
        self.cluster.where["alice"] = "node2"
        client = self.harness.connect(url("alice"))
        self.assertEqual(client.take()[0]["type"], "ID-TAKEN")
        self.assertEqual(self.harness.peerjs.ids(), [])

    def test_relay_to_another_node(self):
        self.cluster.where["bob"] = "node2"
        alice = self.open("alice")
        self.send(alice, {"type": "OFFER", "src": "x", "dst": "bob", "payload": 1})
        self.assertEqual(
            self.cluster.forwarded,
            [
                (
                    "node2",
                    "bob",
                    {"type": "OFFER", "src": "alice", "dst": "bob", "payload": 1},
                )
            ],
        )

    def test_queue_follows_the_id(self):
        """
        What waits here for an id goes to the node where it came online;
        EXPIRE for a sender of another node goes to that node.
        """
        alice = self.open("alice")
        self.send(alice, {"type": "OFFER", "dst": "bob", "payload": 1})
        self.harness.peerjs.came_online("bob", "node2")
        self.assertEqual(self.cluster.forwarded[0][:2], ("node2", "bob"))
        self.assertEqual(self.harness.peerjs.queued_bytes(), 0)
        self.harness.peerjs.forwarded(
            "carol", b'{"type":"OFFER","src":"dave","dst":"carol","payload":2}'
        )
        self.cluster.where["dave"] = "node3"
        self.sweep_after(5.5)
        self.assertEqual(
            self.cluster.forwarded[1],
            ("node3", "dave", {"type": "EXPIRE", "src": "carol", "dst": "dave"}),
        )

    def test_forwarded(self):
        """
        A frame from another node reaches its client here; an EXPIRE for a
        client that has gone is dropped, not queued.
        """
        alice = self.open("alice")
        frame = b'{"type":"ANSWER","src":"bob","dst":"alice","payload":3}'
        self.harness.peerjs.forwarded("alice", frame)
        self.harness.flush()
        self.assertEqual(alice.raw, [b'{"type":"OPEN"}', frame])
        self.harness.peerjs.forwarded(
            "gone", b'{"type":"EXPIRE","src":"x","dst":"gone"}'
        )
        self.assertEqual(self.harness.peerjs.queued_bytes(), 0)
