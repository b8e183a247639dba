"""
The Engine.IO endpoint (C{/socket.io/}): Engine.IO's HTTP long-polling (GET,
POST, CORS preflight) and its WebSocket transport, both feeding the sessions
of one L{EngineIOServer}. What runs on each session (Socket.IO) comes from
the handler factory the resource is given: the transport knows no dialect.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import parse_qs

from autobahn.exception import PayloadExceededError
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from .. import fastpath, gcpolicy
from ..auth import presented_token
from ..dialects.base import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    HandshakeInfo,
)
from ..counters import Counters
from ..errors import DeliveryRefused
from ..logs import Logger
from .addresses import AddressLimiter
from .engineio import (
    BAD_HANDSHAKE_METHOD,
    BAD_REQUEST,
    FORBIDDEN,
    UNKNOWN_TRANSPORT,
    UNSUPPORTED_PROTOCOL_VERSION,
    EngineIOError,
    EngineIOServer,
    EngineIOSettings,
    EngineIOSocket,
    IPacketTransport,
)
from .limits import LimitedProtocol
from .site import set_cors_headers
from .websocket import WebSocketSettings, handshake_of

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSE_REASONS = {
    CLOSE_GOING_AWAY: "going away",
    CLOSE_POLICY_VIOLATION: "message rate limit exceeded",
    CLOSE_INTERNAL_ERROR: "internal error",
}
_TEXT = "text/plain; charset=UTF-8"


def _params(query: bytes | str) -> dict[str, str]:
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    return {name: values[0] for name, values in parse_qs(query).items() if values}


@implementer(IPacketTransport)
class EngineIOWebSocketProtocol(LimitedProtocol):
    """
    A WebSocket carrying one Engine.IO session: a new one, or an existing
    polling session it probes and then takes over.
    """

    _log = Logger()
    socket: EngineIOSocket | None = None
    probing = False
    _handshake: HandshakeInfo | None = None

    def onConnect(self, request):
        handshake = handshake_of(self, request)
        sid = handshake.params.get("sid")
        if sid is not None:
            socket = self.factory.server.sessions.get(sid)
            if socket is None or not socket.is_open or socket.transport != "polling":
                raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "Session ID unknown")
            if socket.upgrading is not None:
                raise ConnectionDeny(
                    ConnectionDeny.BAD_REQUEST, "the session is already upgrading"
                )
            self.socket = socket
        self._handshake = handshake
        return None

    def onOpen(self) -> None:
        try:
            if self.socket is None:
                self.socket = self.factory.server.open(self._handshake, websocket=self)
            elif self.socket.attach(self):
                self.probing = True
            else:
                # The session ended, or another WebSocket is upgrading it,
                # since the handshake.
                self.socket = None
                self.close_transport()
        except Exception:
            self._bug("opening an Engine.IO session failed")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        socket = self.socket
        if socket is None:
            return
        # The session's own count, the one its polling requests use too.
        # Socket.IO has no error for this: the packet is dropped.
        if not socket.admit():
            return
        packet: str | bytes = payload if isBinary else payload.decode("utf-8")
        try:
            if self.probing:
                self._probe_message(socket, packet)
            else:
                socket.packet_received(packet)
        except Exception:
            self._bug("an Engine.IO packet handler failed")

    def _probe_message(self, socket: EngineIOSocket, packet: str | bytes) -> None:
        if packet == "2probe":
            if not socket.probe(self):
                self.close_transport()
        elif packet == "5":
            self.probing = False
            socket.upgrade(self)
        else:
            # Nothing else is allowed before the upgrade completes.
            self.close_transport()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        gcpolicy.connection_closed()
        socket, self.socket = self.socket, None
        if socket is not None:
            try:
                socket.transport_closed(self)
            except Exception:
                self._log.failure("closing an Engine.IO session failed")

    def _bug(self, message: str) -> None:
        # A bug ends only this connection, with 1011, never with a traceback.
        self._log.failure(message)
        fastpath.fail_connection(self, CLOSE_INTERNAL_ERROR, "internal error")

    # IPacketTransport

    def send_packet(self, packet: str | bytes) -> None:
        data = packet if isinstance(packet, bytes) else packet.encode("utf-8")
        self.check_send(len(data))
        try:
            self.sendMessage(data, isBinary=isinstance(packet, bytes))
        except PayloadExceededError:
            raise DeliveryRefused("too-large", "the message exceeds the size limit")

    def close_transport(self, code: int = CLOSE_NORMAL) -> None:
        if self.state != _OPEN:
            return
        if code == CLOSE_NORMAL:
            self.sendClose(CLOSE_NORMAL)
        else:
            # sendClose() takes only 1000 and 3000-4999; 1008 and 1011 come
            # from Autobahn's failure path.
            fastpath.fail_connection(self, code, _CLOSE_REASONS.get(code, "closed"))


class EngineIOWebSocketFactory(WebSocketServerFactory):
    protocol = EngineIOWebSocketProtocol

    def __init__(self, server: EngineIOServer, settings: EngineIOSettings) -> None:
        super().__init__()
        self.server = server
        self.settings = settings
        self.clock = server.clock
        self.setProtocolOptions(
            failByDrop=False,
            maxFramePayloadSize=settings.max_payload,
            maxMessagePayloadSize=settings.max_payload,
            # Engine.IO's heartbeat runs only once a WebSocket carries the
            # session; these pings also find a vanished client of one that
            # is still upgrading.
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
        )


class EngineIOResource(Resource):
    """
    Engine.IO v4, each session handled by what C{handler_factory} makes.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        new_sid: Callable[[], str],
        handler_factory: Callable[[EngineIOSocket], Any],
        settings: WebSocketSettings = WebSocketSettings(),
        limiter: AddressLimiter | None = None,
        route: Any = None,
        counters: Counters | None = None,
    ) -> None:
        """
        :param new_sid: Makes the id of a new session: a credential, so
            unguessable.
        :param route: Under C{--workers}, a
            L{signaling.transports.worker_route.WorkerRoute}: requests for
            another worker's sessions are passed on to it.
        :param handler_factory: Makes the
            L{signaling.dialects.base.IEngineIOHandler} of a new session.
        :param limiter: Counts each polling session as a connection of its
            client's address.
        :param counters: Where refused handshakes are counted (the hub's).
        """
        super().__init__()
        self.settings = settings
        self.route = route
        self.counters = counters if counters is not None else Counters()
        self.engine_settings = EngineIOSettings.from_websocket(settings)
        self.server = EngineIOServer(
            clock, new_sid, self.engine_settings, handler_factory, limiter
        )
        self._websocket = WebSocketResource(
            EngineIOWebSocketFactory(self.server, self.engine_settings)
        )

    def render(self, request: IRequest) -> Any:
        try:
            return self._render(request)
        except EngineIOError as error:
            return self._error(request, error)

    def _render(self, request: IRequest) -> Any:
        origin = request.getHeader("origin")
        if not self.settings.allows_origin(origin):
            self.counters.count(self.counters.handshakes_refused, "origin")
            raise EngineIOError(FORBIDDEN)
        if request.method == b"OPTIONS":
            return self._preflight(request)
        params = _params(request.uri.partition(b"?")[2])
        if params.get("EIO") != "4":
            raise EngineIOError(UNSUPPORTED_PROTOCOL_VERSION)
        transport = params.get("transport")
        owner = (
            self.route.owner(params["sid"]) if self.route and "sid" in params else None
        )
        if owner is not None:
            if transport == "websocket":
                # A WebSocket cannot be passed on: the client goes on
                # polling, which can.
                raise EngineIOError(BAD_REQUEST, "the session is on another worker")
            return self.route.forward(request, owner)
        if transport == "websocket":
            return self._upgrade(request, params)
        if transport != "polling":
            raise EngineIOError(UNKNOWN_TRANSPORT)
        sid = params.get("sid")
        if sid is None:
            if request.method != b"GET":
                raise EngineIOError(BAD_HANDSHAKE_METHOD)
            handshake = HandshakeInfo(
                path=request.path.decode("utf-8", "replace"),
                params=params,
                origin=origin,
                address=getattr(request.getClientAddress(), "host", None),
                token=presented_token(params, request.getHeader("authorization")),
            )
            socket = self.server.open(handshake)
            return self._poll(request, socket)
        socket = self.server.find(sid)
        if request.method == b"GET":
            return self._poll(request, socket)
        if request.method == b"POST":
            return self._post(request, socket)
        raise EngineIOError(BAD_REQUEST, "polling takes GET and POST")

    def _upgrade(self, request: IRequest, params: dict[str, str]) -> Any:
        upgrade = (request.getHeader("upgrade") or "").lower()
        if request.method != b"GET" or upgrade != "websocket":
            raise EngineIOError(
                BAD_REQUEST, "transport=websocket needs a WebSocket upgrade"
            )
        if "sid" in params:
            socket = self.server.find(params["sid"])
            if socket.transport != "polling":
                raise EngineIOError(
                    BAD_REQUEST, "the session is already on a WebSocket"
                )
            if socket.upgrading is not None:
                raise EngineIOError(BAD_REQUEST, "the session is already upgrading")
        return self._websocket.render(request)

    def _poll(self, request: IRequest, socket: EngineIOSocket) -> Any:
        poll = socket.poll()
        self._headers(request)
        if poll.called:
            return self._take(poll)

        def answer(payload: bytes) -> None:
            # This runs inside whatever sent the packet (a hub delivery), so
            # a request that has just gone must not raise into it.
            try:
                request.write(payload)
                request.finish()
            except Exception:
                self._log.debug("a poll ended before its answer")

        def gone(failure) -> None:
            failure.trap(CancelledError)

        poll.addCallbacks(answer, gone)
        request.notifyFinish().addErrback(lambda _: poll.cancel())
        return NOT_DONE_YET

    @staticmethod
    def _take(poll) -> bytes:
        result: list[bytes] = []
        poll.addCallback(result.append)
        return result[0]

    def _post(self, request: IRequest, socket: EngineIOSocket) -> bytes:
        body = request.content.read(self.engine_settings.max_payload + 1)
        try:
            socket.post(body)
        except EngineIOError:
            raise
        except Exception:
            self._log.failure("an Engine.IO packet handler failed")
            socket.close("internal error")
            request.setResponseCode(500)
            self._headers(request)
            return b"internal error"
        self._headers(request)
        return b"ok"

    def _preflight(self, request: IRequest) -> bytes:
        self._cors(request)
        request.setResponseCode(204)
        request.setHeader("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        requested = request.getHeader("access-control-request-headers")
        request.setHeader("Access-Control-Allow-Headers", requested or "Content-Type")
        return b""

    def _headers(self, request: IRequest) -> None:
        self._cors(request)
        request.setHeader("Content-Type", _TEXT)
        request.setHeader("Cache-Control", "no-store")

    def _cors(self, request: IRequest) -> None:
        set_cors_headers(request, self.settings)

    def _error(self, request: IRequest, error: EngineIOError) -> bytes:
        if error.code != FORBIDDEN:
            self._cors(request)
        request.setResponseCode(error.status)
        request.setHeader("Content-Type", "application/json")
        return error.body()
