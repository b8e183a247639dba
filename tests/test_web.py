"""
The HTTP API, through treq's in-memory client.
"""

import orjson
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from signaling.hub import Hub, HubLimits, Profile
from signaling.ids import IdShape, IdSource
from signaling.web import DEFAULT_ROOMS_PAGE, MAX_ROOMS_PAGE, SignalingSite
from signaling.directory import Directory
from signaling.transports.websocket import WebSocketSettings

from .support import RecordingConnection, counting_random_bytes, make_site


class WebTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1703894400)
        self.hub = Hub(
            clock=self.clock,
            ids=IdSource(counting_random_bytes()),
            limits=HubLimits(max_peers_per_room=5),
        )
        settings = WebSocketSettings(allowed_origins=("http://localhost:3000",))
        self.treq = StubTreq(make_site(self.hub, settings).resource())

    def get(self, path, **kwargs):
        response = self.successResultOf(
            self.treq.get("http://localhost" + path, **kwargs)
        )
        body = self.successResultOf(response.content())
        return response, body

    def get_json(self, path, code=200, **kwargs):
        response, body = self.get(path, **kwargs)
        self.assertEqual(response.code, code, body)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/json"]
        )
        return orjson.loads(body)

    def test_the_directory_is_built_beside_the_hub(self):
        """
        The site uses the directory it is given and builds none of its own.
        """
        directory = Directory(self.hub)
        self.assertIs(SignalingSite(self.hub, directory=directory).directory, directory)
        self.assertRaises(TypeError, SignalingSite, self.hub)

    def test_health(self):
        self.assertEqual(
            self.get_json("/health"), {"status": "ok", "timestamp": 1703894400000}
        )

    def test_healthz(self):
        response, body = self.get("/healthz")
        self.assertEqual((response.code, body), (200, b"ok"))
        self.assertEqual(
            response.headers.getRawHeaders("content-type"),
            ["text/plain; charset=utf-8"],
        )

    def populate(self):
        alice = self.hub.connect(RecordingConnection(), shape=IdShape.HEX8)
        bob = self.hub.connect(RecordingConnection(), shape=IdShape.HEX8)
        self.hub.connect(RecordingConnection())
        endpoint = {"ip": "203.0.113.1", "port": 12345}
        self.hub.join(
            alice,
            "room-1",
            {"display_name": "Alice", "endpoint": endpoint},
            profile=Profile(display_name="Alice", endpoint=endpoint),
        )
        self.clock.advance(1)
        self.hub.join(bob, "room-1")
        return alice, bob

    def test_stats(self):
        self.populate()
        self.assertEqual(
            self.get_json("/api/stats"),
            {
                "peers": {"total": 3, "without_room": 1},
                "rooms": {"total": 1, "total_peers": 2},
                "socketio": {"unhandled_events": 0},
                "timestamp": 1703894401000,
            },
        )

    def test_rooms(self):
        self.populate()
        self.assertEqual(
            self.get_json("/api/rooms"),
            {
                "rooms": [
                    {
                        "id": "room-1",
                        "peer_count": 2,
                        "max_peers": 5,
                        "created_at": "2023-12-30T00:00:00.000Z",
                    }
                ],
                "next_after": None,
            },
        )

    def test_room_detail(self):
        alice, bob = self.populate()
        self.assertEqual(
            self.get_json("/api/rooms/room-1"),
            {
                "id": "room-1",
                "peers": [
                    {
                        "peer_id": alice.id,
                        "display_name": "Alice",
                        "endpoint": {"ip": "203.0.113.1", "port": 12345},
                        "joined_at": 1703894400000,
                        "dialect": "native",
                    },
                    {
                        "peer_id": bob.id,
                        "joined_at": 1703894401000,
                        "dialect": "native",
                    },
                ],
                "peer_count": 2,
                "max_peers": 5,
                "created_at": 1703894400000,
                "metadata": {},
            },
        )

    def test_missing_room_and_unknown_path_are_json_404(self):
        self.assertEqual(
            self.get_json("/api/rooms/nope", 404),
            {"error": "room not found", "id": "nope"},
        )
        self.assertEqual(
            self.get_json("/no/such/thing", 404),
            {"error": "not found", "path": "/no/such/thing"},
        )

    def test_cors_for_allowed_origin_only(self):
        response, _ = self.get(
            "/api/rooms", headers={"Origin": "http://localhost:3000"}
        )
        self.assertEqual(
            response.headers.getRawHeaders("access-control-allow-origin"),
            ["http://localhost:3000"],
        )
        self.assertEqual(
            response.headers.getRawHeaders("access-control-allow-credentials"), ["true"]
        )
        response, _ = self.get("/api/rooms", headers={"Origin": "http://evil.example"})
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))

    def test_preflight(self):
        response = self.successResultOf(
            self.treq.request(
                "OPTIONS",
                "http://localhost/api/rooms",
                headers={"Origin": "http://localhost:3000"},
            )
        )
        self.assertEqual(response.code, 204)
        self.assertEqual(
            response.headers.getRawHeaders("access-control-allow-origin"),
            ["http://localhost:3000"],
        )

    def test_signal_without_upgrade(self):
        """
        A plain GET of a WebSocket URL is answered, not crashed on.
        """
        self.assertEqual(
            self.get_json("/signal", 426),
            {"error": "this URL takes WebSocket connections"},
        )


class UpgradeRouteTests(SynchronousTestCase):
    def test_every_websocket_route_is_an_upgrade_route(self):
        """
        Each WebSocket path of the app (the PeerJS one under its mount, in
        and out of a hub room) hands its upgrades to the factory of its
        dialect; other paths have none.
        """
        from signaling.dialects.peerjs import PeerJSRealm, PeerJSSettings

        hub = Hub(clock=Clock(), ids=IdSource(counting_random_bytes()))
        site = make_site(
            hub,
            root_dialect="envelope",
            peerjs=PeerJSRealm(hub, PeerJSSettings(path="/pj")),
        )

        def dialect(path):
            factory = site.upgrades.match(path)
            if factory is None:
                return None
            made = factory.session_factory
            return getattr(made, "func", made).__name__

        self.assertEqual(
            [
                dialect(path)
                for path in [
                    b"/signal",
                    b"/ws/lobby",
                    b"/ws",
                    b"/directory",
                    b"/",
                    b"/pj/peerjs",
                    b"/pj/room/r1/peerjs/",
                    b"/api/stats",
                    b"/socket.io/",
                    b"/pj/key/id",
                ]
            ],
            [
                "NativeSession",
                "TopicSession",
                "EnvelopeSession",
                "DirectorySession",
                "EnvelopeSession",
                dialect(b"/pj/peerjs/"),
                dialect(b"/pj/peerjs"),
                None,
                None,
                None,
            ],
        )
        self.assertIsNotNone(dialect(b"/pj/peerjs"))
        self.assertIs(site.upgrades.match(b"/"), site.upgrades.match(b"/ws"))


class RoomAPITests(SynchronousTestCase):
    """
    Pages of rooms, the API token, room names with a slash, CORS without
    configured origins.
    """

    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(
            clock=self.clock,
            ids=IdSource(counting_random_bytes()),
            limits=HubLimits(max_rooms_per_peer=0),
        )
        self.treq = StubTreq(
            make_site(self.hub, WebSocketSettings(), api_token="t0ken").resource()
        )

    def get(self, path, **kwargs):
        response = self.successResultOf(
            self.treq.get("http://localhost" + path, **kwargs)
        )
        return response, orjson.loads(self.successResultOf(response.content()))

    def test_default_page_and_next(self):
        peer = self.hub.connect(RecordingConnection())
        for index in range(DEFAULT_ROOMS_PAGE + 1):
            self.hub.join(peer, f"room-{index:04d}")
        _, first = self.get("/api/rooms")
        self.assertEqual(len(first["rooms"]), DEFAULT_ROOMS_PAGE)
        self.assertEqual(first["next_after"], f"room-{DEFAULT_ROOMS_PAGE - 1:04d}")
        _, last = self.get("/api/rooms?after=" + first["next_after"])
        self.assertEqual(
            ([r["id"] for r in last["rooms"]], last["next_after"]),
            ([f"room-{DEFAULT_ROOMS_PAGE:04d}"], None),
        )
        response, error = self.get(f"/api/rooms?limit={MAX_ROOMS_PAGE + 1}")
        self.assertEqual(response.code, 400)
        response, _ = self.get("/api/rooms?limit=0")
        self.assertEqual(response.code, 400)

    def test_room_detail_needs_the_token(self):
        peer = self.hub.connect(RecordingConnection())
        self.hub.join(peer, "a/b")
        response, body = self.get("/api/rooms/a%2Fb")
        self.assertEqual(
            (response.code, body),
            (401, {"error": "this API needs Authorization: Bearer <api token>"}),
        )
        response, body = self.get(
            "/api/rooms/a%2Fb", headers={"Authorization": "Bearer t0ken"}
        )
        self.assertEqual((response.code, body["id"]), (200, "a/b"))

    def test_cors_without_origins_is_a_star_without_credentials(self):
        response, _ = self.get(
            "/api/stats", headers={"Origin": "http://anywhere.example"}
        )
        self.assertEqual(
            response.headers.getRawHeaders("access-control-allow-origin"), ["*"]
        )
        self.assertIsNone(
            response.headers.getRawHeaders("access-control-allow-credentials")
        )

    def test_unknown_api_path_is_404(self):
        response, body = self.get("/api/nope")
        self.assertEqual(
            (response.code, body), (404, {"error": "not found", "path": "/api/nope"})
        )
        preflight = self.successResultOf(
            self.treq.request("OPTIONS", "http://localhost/api/rooms/x")
        )
        self.assertEqual(preflight.code, 204)
