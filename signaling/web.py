"""
The HTTP side: health, stats and rooms, and the WebSocket routes of every
dialect, in one Klein app.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from autobahn.twisted.resource import WebSocketResource
from klein import Klein
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .auth import TokenVerifier
from .dialects.directory import DirectorySession
from .dialects.envelope import EnvelopeSession
from .dialects.native import NativeSession
from .dialects.socketio import SocketIOResource
from .dialects.topic import TopicSession
from .directory import Directory
from .hub import Hub, Room
from .timefmt import iso8601, milliseconds
from .websocket import SignalingFactory, WebSocketSettings


#: The dialects a WebSocket at "/" may speak (the topic dialect needs its
#: topic in the path, Socket.IO its own path).
ROOT_DIALECTS = ("native", "directory", "envelope")


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
    ) -> None:
        """
        :param directory: The userIds of the directory dialect, built beside
            the hub (one directory per hub).
        :param root_dialect: One of L{ROOT_DIALECTS}: the dialect of a
            WebSocket at C{/}, for clients whose server URL has no path (the
            directory dialect's original served any path); L{None} for none.
        """
        self.hub = hub
        self.settings = settings
        self._native = WebSocketResource(SignalingFactory(hub, NativeSession, settings))
        #: Engine.IO and Socket.IO, for the rooms and calls dialects.
        self._socketio = SocketIOResource(hub, settings, verifier)
        self.directory = directory
        self._directory = WebSocketResource(
            SignalingFactory(hub, functools.partial(DirectorySession, directory=self.directory), settings)
        )
        self._envelope = WebSocketResource(SignalingFactory(hub, EnvelopeSession, settings))
        self._topic = WebSocketResource(SignalingFactory(hub, TopicSession, settings))
        self._root = {
            "native": self._native,
            "directory": self._directory,
            "envelope": self._envelope,
            None: None,
        }[root_dialect]

    def resource(self):
        return self.app.resource()

    # helpers

    def _cors(self, request: IRequest) -> None:
        origin = request.getHeader("origin")
        if origin is None or not self.settings.allows_origin(origin):
            return
        request.setHeader("Access-Control-Allow-Origin", origin)
        request.setHeader("Access-Control-Allow-Credentials", "true")
        request.setHeader("Vary", "Origin")

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
                "socketio": {"unhandled_events": self._socketio.stats.unhandled_events},
                "timestamp": self._now_ms(),
            },
        )

    @app.route("/api/rooms", methods=["GET"])
    def rooms(self, request: IRequest) -> bytes:
        return self._json(request, {"rooms": [_room_summary(r) for r in self.hub.rooms()]})

    @app.route("/api/rooms/<string:room_id>", methods=["GET"])
    def room(self, request: IRequest, room_id: str) -> bytes:
        room = self.hub.room(room_id)
        if room is None:
            return self._json(request, {"error": "room not found", "id": room_id}, 404)
        return self._json(request, _room_detail(room))

    @app.route("/api/<path:anything>", methods=["OPTIONS"])
    def preflight(self, request: IRequest, anything: str) -> bytes:
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
            return self._json(request, {"error": "this URL takes WebSocket connections"}, 426)
        return resource

    @app.route("/", methods=["GET"])
    def root(self, request: IRequest):
        # Only a WebSocket upgrade: a plain GET / stays free for a page.
        upgrade = (request.getHeader("upgrade") or "").lower()
        if self._root is None or upgrade != "websocket":
            return self.not_found(request, None)
        return self._root

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

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure) -> bytes:
        return self._json(request, {"error": "not found", "path": request.path.decode("utf-8", "replace")}, 404)

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure) -> bytes:
        return self._json(request, {"error": "method not allowed"}, 405)
