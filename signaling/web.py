"""
The HTTP side: health, stats and rooms, and the WebSocket routes of every
dialect, in one Klein app.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import hmac
from pathlib import Path
from typing import Any

import attrs

import orjson
from autobahn.twisted.resource import WebSocketResource
from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .auth import AuthPolicy, InvalidToken, TokenVerifier, presented_token
from .dialects.directory import DirectorySession
from .dialects.envelope import EnvelopeSession
from .dialects.native import NativeSession, Resume
from .dialects.peerjs import BANNER, PeerJSRealm, session_factory
from .dialects.socketio import SocketIOConnection, SocketIOContext
from .dialects.topic import TopicSession
from .dialects import ywebrtc
from .directory import Directory
from .hub import Hub, Room
from .ids import IdShape
from .resume import ISessionStore, MemorySessionStore, ResumeSettings
from .timefmt import iso8601, milliseconds
from .turn import IceServers
from .transports.addresses import AddressLimiter
from .transports.engineio_resource import EngineIOResource
from .transports.site import UpgradeRoutes, set_cors_headers
from .transports.websocket import SignalingFactory, WebSocketSettings


#: The dialects a WebSocket at "/" may speak (the topic dialect needs its
#: topic in the path, Socket.IO its own path).
ROOT_DIALECTS = ("native", "directory", "envelope")
#: Rooms in one page of C{/api/rooms} without C{?limit=}.
DEFAULT_ROOMS_PAGE = 100
#: The default most C{?limit=} may ask for: a page stays well under a
#: megabyte.
MAX_ROOMS_PAGE = 1000


#: The JavaScript client and the demo page, shipped inside the package.
STATIC_DIRECTORY = Path(__file__).resolve().parent / "static"
#: Where the JavaScript client is served; pages import it from here.
CLIENT_PATH = "/client/signaling-client.js"


@attrs.frozen
class StaticFile:
    """
    A file served from memory, read once at startup.
    """

    body: bytes
    content_type: str
    etag: str

    @classmethod
    def load(cls, name: str, content_type: str) -> "StaticFile":
        body = (STATIC_DIRECTORY / name).read_bytes()
        return cls(
            body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        )


def _room_summary(room: Room) -> dict[str, Any]:
    return {
        "id": room.name,
        "peer_count": len(room.members),
        "max_peers": room.max_peers,
        "created_at": iso8601(room.created_at),
    }


def _room_detail(room: Room) -> dict[str, Any]:
    peers = []
    for member in room.members.values():
        peer: dict[str, Any] = {"peer_id": member.peer_id}
        if member.profile.display_name is not None:
            peer["display_name"] = member.profile.display_name
        if member.profile.endpoint is not None:
            peer["endpoint"] = member.profile.endpoint
        peer["joined_at"] = milliseconds(member.joined_at)
        peer["dialect"] = member.dialect
        peers.append(peer)
    return {
        "id": room.name,
        "peers": peers,
        "peer_count": len(room.members),
        "max_peers": room.max_peers,
        "created_at": milliseconds(room.created_at),
        "metadata": room.metadata,
    }


class SignalingSite:
    """
    The Klein app serving every route of one hub.
    """

    app = Klein()

    def __init__(
        self,
        hub: Hub,
        settings: WebSocketSettings = WebSocketSettings(),
        verifier: TokenVerifier | None = None,
        *,
        directory: Directory,
        root_dialect: str | None = "native",
        limiter: AddressLimiter | None = None,
        api_token: str | None = None,
        max_rooms_page: int = MAX_ROOMS_PAGE,
        auth: AuthPolicy = AuthPolicy(),
        ice_servers: IceServers = IceServers(),
        resume: ResumeSettings | None = None,
        session_store: ISessionStore | None = None,
        worker_route: Any = None,
        peerjs: PeerJSRealm | None = None,
        ywebrtc_settings: ywebrtc.YWebRTCSettings | None = None,
    ) -> None:
        """
        :param directory: The userIds of the directory dialect, built beside
            the hub (one directory per hub).
        :param root_dialect: One of L{ROOT_DIALECTS}: the dialect of a
            WebSocket at C{/}, for clients whose server URL has no path (the
            directory dialect's original served any path); L{None} for none.
        :param limiter: Counts Engine.IO polling sessions per client address.
        :param api_token: The bearer token C{/api/rooms/{id}} requires; None
            leaves it open.
        :param max_rooms_page: The most rooms one page of C{/api/rooms} holds.
        :param auth: What every dialect does with tokens.
        :param ice_servers: The STUN and TURN servers clients are told of.
        :param resume: Session resume for native peers; L{None} for none.
        :param session_store: Where resumable sessions wait; by default in
            this process.
        :param worker_route: Under C{--workers}, this worker's
            L{signaling.transports.worker_route.WorkerRoute}: Engine.IO
            session ids name their worker, and polls for another worker's
            sessions are passed on to it.
        :param peerjs: The PeerJS dialect's clients, mounted at its
            settings' path; L{None} for no PeerJS dialect.
        :param ywebrtc_settings: The y-webrtc dialect's settings (its path,
            and whether it also takes C{/} and any path no route takes);
            L{None} for no y-webrtc dialect.
        """
        self.max_rooms_page = max(1, max_rooms_page)
        #: Every WebSocket path and its factory (L{websocket_route}).
        self.upgrades = UpgradeRoutes()
        self.hub = hub
        self.settings = settings
        self._api_token = api_token.encode("utf-8") if api_token else None
        self.auth = auth
        self.ice_servers = ice_servers
        native = functools.partial(NativeSession, ice_servers=ice_servers)
        if resume is not None and resume.grace > 0:
            # Not "or": an empty store has a length of 0.
            store = (
                session_store
                if session_store is not None
                else MemorySessionStore(ids=hub.ids)
            )
            native = functools.partial(native, resume=Resume(resume, store))
        native_factory = SignalingFactory(
            hub, native, settings, auth, token_in_message=True
        )
        self._native = self.websocket_route("/signal", native_factory)
        #: Engine.IO carrying Socket.IO, for the rooms and calls dialects.
        socketio = SocketIOContext(
            hub=hub,
            verifier=verifier or auth.verifier,
            auth=auth,
            ice_servers=ice_servers,
        )
        self._socketio_stats = socketio.stats
        sid_prefix = worker_route.sid_prefix if worker_route is not None else ""
        self._socketio = EngineIOResource(
            hub.clock,
            lambda: sid_prefix + hub.ids.new_id(IdShape.TOKEN, hub.clock.seconds()),
            lambda engine: SocketIOConnection(engine, socketio),
            settings,
            limiter,
            worker_route,
            hub.counters,
        )
        self.directory = directory
        directory_factory = SignalingFactory(
            hub,
            functools.partial(DirectorySession, directory=self.directory),
            settings,
            auth,
        )
        self._directory = self.websocket_route("/directory", directory_factory)
        envelope_factory = SignalingFactory(hub, EnvelopeSession, settings, auth)
        self._envelope = self.websocket_route("/ws", envelope_factory)
        self._topic = self.websocket_route(
            "/ws/{topic}", SignalingFactory(hub, TopicSession, settings, auth)
        )
        self._client_js = StaticFile.load(
            "signaling-client.js", "text/javascript; charset=utf-8"
        )
        self._demo_page = StaticFile.load("index.html", "text/html; charset=utf-8")
        root_factory = {
            "native": native_factory,
            "directory": directory_factory,
            "envelope": envelope_factory,
            None: None,
        }[root_dialect]
        self._ywebrtc = self._ywebrtc_path = None
        self._ywebrtc_any_path = False
        if ywebrtc_settings is not None:
            ywebrtc_factory = SignalingFactory(
                hub, ywebrtc.session_factory(ywebrtc_settings), settings, auth
            )
            self._ywebrtc = self.websocket_route(ywebrtc_settings.path, ywebrtc_factory)
            self._ywebrtc_path = ywebrtc_settings.path.encode("utf-8")
            if ywebrtc_settings.any_path:
                # The original takes every path: "/" too, instead of the
                # root dialect.
                root_factory = ywebrtc_factory
                self._ywebrtc_any_path = True
        self._root = (
            None if root_factory is None else self.websocket_route("/", root_factory)
        )
        self._peerjs = None
        if peerjs is not None:
            peerjs_factory = SignalingFactory(
                hub,
                session_factory(
                    peerjs,
                    # A PeerJS client's token is its own secret, never
                    # one of ours.
                    refuse_all="This server requires a token; "
                    "PeerJS clients cannot present one"
                    if auth.required
                    else None,
                ),
                settings,
            )
            mount = "/" + peerjs.settings.path.strip("/")
            for path in ("/peerjs", "/room/{name}/peerjs"):
                for slash in ("", "/"):
                    websocket = self.websocket_route(
                        mount.rstrip("/") + path + slash, peerjs_factory
                    )
            self._peerjs = PeerJSResource(peerjs, websocket, settings)

    def websocket_route(
        self, path: str, factory: SignalingFactory
    ) -> WebSocketResource:
        """
        Make C{path} a WebSocket route of C{factory}: the HTTP channel hands
        upgrades there straight to the factory (L{UpgradeRoutes}); the
        resource returned is for the app's own route at C{path}, which takes
        the upgrades the channel does not (and answers anything else).

        :param path: An absolute path; C{{name}} stands for one segment.
        """
        self.upgrades.add(path, factory)
        return WebSocketResource(factory)

    def resource(self):
        if self._peerjs is None:
            return self.app.resource()
        return MountedResource(
            self.app.resource(), self._peerjs.realm.settings.path, self._peerjs
        )

    # helpers

    def _cors(self, request: IRequest) -> None:
        set_cors_headers(request, self.settings)

    def _authorized(self, request: IRequest) -> bool:
        if self._api_token is None:
            return True
        scheme, _, token = (request.getHeader("authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("utf-8"), self._api_token
        )

    def _json(self, request: IRequest, body: Any, code: int = 200) -> bytes:
        self._cors(request)
        request.setResponseCode(code)
        request.setHeader("Content-Type", "application/json")
        return orjson.dumps(body)

    def _now_ms(self) -> int:
        return milliseconds(self.hub.clock.seconds())

    # HTTP API

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        return self._json(request, {"status": "ok", "timestamp": self._now_ms()})

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return b"ok"

    @app.route("/api/stats", methods=["GET"])
    def stats(self, request: IRequest) -> bytes:
        stats = self.hub.stats()
        return self._json(
            request,
            {
                "peers": {
                    "total": stats.peers_total,
                    "without_room": stats.peers_without_room,
                },
                "rooms": {
                    "total": stats.rooms_total,
                    "total_peers": stats.peers_in_rooms,
                },
                "socketio": {"unhandled_events": self._socketio_stats.unhandled_events},
                "timestamp": self._now_ms(),
            },
        )

    @app.route("/api/rooms", methods=["GET"])
    def rooms(self, request: IRequest) -> bytes:
        """
        One page of rooms, by id: C{?limit=} of them (default
        L{DEFAULT_ROOMS_PAGE}, at most C{max_rooms_page}) after the id
        C{?after=}; C{next_after} is the C{after} of the next page, or null
        on the last.
        """
        most = self.max_rooms_page
        limit_arg = request.args.get(b"limit", [b""])[0]
        after = request.args.get(b"after", [b""])[0].decode("utf-8", "replace")
        if limit_arg:
            if not limit_arg.isdigit() or not 1 <= int(limit_arg) <= most:
                return self._json(
                    request,
                    {"error": f"limit must be a whole number from 1 to {most}"},
                    400,
                )
            limit = int(limit_arg)
        else:
            limit = min(DEFAULT_ROOMS_PAGE, most)
        names = heapq.nsmallest(
            limit + 1, (room.name for room in self.hub.rooms() if room.name > after)
        )
        page = [_room_summary(self.hub.room(name)) for name in names[:limit]]
        next_after = names[limit - 1] if len(names) > limit else None
        return self._json(request, {"rooms": page, "next_after": next_after})

    # <path:> rather than <string:>: a room name may hold a "/", sent as %2F.
    @app.route("/api/rooms/<path:room_id>", methods=["GET"])
    def room(self, request: IRequest, room_id: str) -> bytes:
        if not self._authorized(request):
            request.setHeader("WWW-Authenticate", 'Bearer realm="signaling"')
            return self._json(
                request,
                {"error": "this API needs Authorization: Bearer <api token>"},
                401,
            )
        room = self.hub.room(room_id)
        if room is None:
            return self._json(request, {"error": "room not found", "id": room_id}, 404)
        return self._json(request, _room_detail(room))

    @app.route("/api/ice-servers", methods=["GET"])
    def ice_servers_route(self, request: IRequest) -> bytes:
        """
        STUN and TURN servers with fresh credentials; with C{--auth} on,
        only for a valid token (C{Authorization: Bearer} or C{?token=}).
        """
        if not self.ice_servers.configured:
            return self._json(
                request, {"error": "no STUN or TURN servers are configured"}, 404
            )
        user = "anonymous"
        if self.auth.checks_tokens:
            params = {
                name.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
                for name, values in request.args.items()
                if values
            }
            token = presented_token(params, request.getHeader("authorization"))
            try:
                identity = self.auth.identify(token, self.hub.clock.seconds())
            except InvalidToken as error:
                request.setHeader("WWW-Authenticate", 'Bearer realm="signaling"')
                return self._json(
                    request, {"error": f"a valid token is needed: {error}"}, 401
                )
            if identity is None:
                request.setHeader("WWW-Authenticate", 'Bearer realm="signaling"')
                return self._json(request, {"error": "a valid token is needed"}, 401)
            user = identity.user_id
        now = self.hub.clock.seconds()
        servers = self.ice_servers.for_user(user, now)
        request.setHeader("Cache-Control", "no-store")
        return self._json(
            request, {"iceServers": servers, "ttl": int(self.ice_servers.ttl)}
        )

    # Only the API's own paths: a preflight route for any path under /api/
    # would turn every unknown path there into a 405.
    @app.route("/api/stats", methods=["OPTIONS"])
    @app.route("/api/ice-servers", methods=["OPTIONS"])
    @app.route("/api/rooms", methods=["OPTIONS"])
    @app.route("/api/rooms/<path:room_id>", methods=["OPTIONS"])
    def preflight(self, request: IRequest, room_id: str = "") -> bytes:
        self._cors(request)
        request.setResponseCode(204)
        request.setHeader("Access-Control-Allow-Methods", "GET, OPTIONS")
        request.setHeader("Access-Control-Allow-Headers", "Content-Type, Authorization")
        return b""

    # WebSocket routes

    def _websocket(self, request: IRequest, resource: WebSocketResource):
        upgrade = (request.getHeader("upgrade") or "").lower()
        if upgrade != "websocket":
            request.setHeader("Upgrade", "websocket")
            return self._json(
                request, {"error": "this URL takes WebSocket connections"}, 426
            )
        return resource

    @app.route("/", methods=["GET"])
    def root(self, request: IRequest):
        # A WebSocket upgrade speaks the root dialect; a plain GET is the
        # demo page.
        upgrade = (request.getHeader("upgrade") or "").lower()
        if upgrade != "websocket":
            return self._static(request, self._demo_page)
        if self._root is None:
            return self.not_found(request, None)
        return self._root

    @app.route(CLIENT_PATH, methods=["GET"])
    def client_js(self, request: IRequest) -> bytes:
        return self._static(request, self._client_js)

    def _static(self, request: IRequest, static: StaticFile) -> bytes:
        # Revalidated on every use (a cheap 304): the URL is stable, so a
        # server upgrade must reach pages at once.
        request.setHeader("Cache-Control", "no-cache")
        request.setHeader("ETag", static.etag)
        request.setHeader("X-Content-Type-Options", "nosniff")
        if static.etag in (request.getHeader("if-none-match") or ""):
            request.setResponseCode(304)
            return b""
        request.setHeader("Content-Type", static.content_type)
        return static.body

    @app.route("/signal", methods=["GET"])
    def native(self, request: IRequest):
        return self._websocket(request, self._native)

    @app.route("/socket.io/", methods=["GET", "POST", "OPTIONS"])
    def socketio(self, request: IRequest):
        return self._socketio

    @app.route("/directory", methods=["GET"])
    def directory_users(self, request: IRequest):
        return self._websocket(request, self._directory)

    @app.route("/ws", methods=["GET"])
    def envelope(self, request: IRequest):
        return self._websocket(request, self._envelope)

    @app.route("/ws/<string:topic>", methods=["GET"])
    def topic(self, request: IRequest, topic: str):
        return self._websocket(request, self._topic)

    # errors

    def _ywebrtc_route(self, request: IRequest):
        """
        The y-webrtc WebSocket, for a GET of a path no route takes when it
        is C{--y-webrtc-path}, or any such path with C{--y-webrtc-any-path}
        (which also gives it C{/}, in L{__init__}); else L{None}.
        """
        if self._ywebrtc is None or request.method != b"GET":
            return None
        if request.path == self._ywebrtc_path:
            return self._websocket(request, self._ywebrtc)
        upgrade = (request.getHeader("upgrade") or "").lower()
        if self._ywebrtc_any_path and upgrade == "websocket":
            return self._ywebrtc
        return None

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure):
        ywebrtc_route = self._ywebrtc_route(request)
        if ywebrtc_route is not None:
            return ywebrtc_route
        return self._json(
            request,
            {"error": "not found", "path": request.path.decode("utf-8", "replace")},
            404,
        )

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure) -> bytes:
        return self._json(request, {"error": "method not allowed"}, 405)


class PeerJSResource(Resource):
    """
    The PeerJS dialect's HTTP side and WebSocket under its mount path
    (C{--peerjs-path}), answered as the original server does: C{/} the
    banner, C{/{key}/id} a fresh id, C{/{key}/peers} the connected ids (with
    discovery on), C{/peerjs} the WebSocket; the same under
    C{/room/{name}/}, for clients in a hub room.
    """

    isLeaf = True

    def __init__(
        self,
        realm: PeerJSRealm,
        websocket: WebSocketResource,
        settings: WebSocketSettings,
    ) -> None:
        super().__init__()
        self.realm = realm
        self.websocket = websocket
        self.settings = settings

    def _json(self, request: IRequest, body: Any, code: int = 200) -> bytes:
        set_cors_headers(request, self.settings)
        request.setResponseCode(code)
        request.setHeader("Content-Type", "application/json")
        return orjson.dumps(body)

    def render_GET(self, request: IRequest):
        segments = [part.decode("utf-8", "replace") for part in request.postpath]
        if segments and not segments[-1]:
            # "{path}/" and "{path}": the client always adds the slash.
            segments.pop()
        if len(segments) >= 2 and segments[0] == "room":
            segments = segments[2:]
        if not segments:
            return self._json(request, BANNER)
        if segments == ["peerjs"]:
            if (request.getHeader("upgrade") or "").lower() != "websocket":
                request.setHeader("Upgrade", "websocket")
                return self._json(
                    request, {"error": "this URL takes WebSocket connections"}, 426
                )
            return self.websocket.render(request)
        if len(segments) == 2 and segments[1] == "id":
            # As the original: the key is not checked here.
            set_cors_headers(request, self.settings)
            request.setHeader("Content-Type", "text/html; charset=utf-8")
            request.setHeader("Cache-Control", "no-store")
            return self.realm.new_id().encode("ascii")
        if len(segments) == 2 and segments[1] == "peers":
            if not self.realm.settings.discovery:
                return self._json(
                    request,
                    {"error": "peer discovery is off (--peerjs-discovery)"},
                    401,
                )
            return self._json(request, self.realm.ids())
        return self._json(
            request,
            {"error": "not found", "path": request.path.decode("utf-8", "replace")},
            404,
        )

    def render_OPTIONS(self, request: IRequest) -> bytes:
        set_cors_headers(request, self.settings)
        request.setResponseCode(204)
        request.setHeader("Access-Control-Allow-Methods", "GET, OPTIONS")
        request.setHeader("Access-Control-Allow-Headers", "Content-Type")
        return b""


class MountedResource(Resource):
    """
    C{app}, with C{mounted} answering every path under C{mount} (a path of
    one or more segments, such as C{/peerjs}).
    """

    def __init__(self, app: Any, mount: str, mounted: Any) -> None:
        super().__init__()
        self.app = app
        self.mount = [part.encode("utf-8") for part in mount.strip("/").split("/")]
        self.mounted = mounted

    def getChildWithDefault(self, name: bytes, request: IRequest):
        rest = len(self.mount) - 1
        if [name, *request.postpath[:rest]] == self.mount:
            del request.postpath[:rest]
            request.prepath.extend(self.mount[1:])
            return self.mounted
        # Not ours: the app sees the path whole.
        request.postpath.insert(0, request.prepath.pop())
        return self.app

    def render(self, request: IRequest):
        return self.app.render(request)
