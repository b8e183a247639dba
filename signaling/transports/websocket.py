"""
The Autobahn protocol and factory that bind a dialect's sessions to the hub:
where the frames of every raw WebSocket dialect arrive and leave.
"""

from __future__ import annotations

from collections import deque
from typing import Callable
from urllib.parse import unquote
from weakref import WeakKeyDictionary

import attrs
from autobahn.exception import PayloadExceededError
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import fastpath
from ..auth import AuthPolicy, InvalidToken, MissingToken, presented_token
from ..dialects.base import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_REMOVED,
    HandshakeInfo,
    IFrameSink,
    Session,
)
from ..counters import RelayTimer
from ..errors import DeliveryRefused
from ..hub import CloseReason, Hub, IPeerConnection, Signal
from ..logs import Logger, log_connection
from .addresses import forwarded_address
from .limits import LimitedProtocol, RateLimit

SessionFactory = Callable[[Hub, IFrameSink, HandshakeInfo], Session]


@attrs.frozen
class WebSocketSettings:
    """
    :ivar max_message_size: Largest frame or message in bytes; larger closes
        the connection with 1009.
    :ivar ping_interval: Seconds between server pings; 0 turns them off.
    :ivar ping_timeout: Seconds to wait for the pong before the peer is gone.
    :ivar allowed_origins: Browser origins allowed to connect; empty allows any.
    :ivar max_send_buffer: Bytes a peer's connection may queue beyond the
        transport's own buffer before messages to it are refused.
    :ivar max_message_rate: Messages per second one connection may send,
        with bursts of twice that; 0 for unlimited. Each frame of a
        fragmented message counts as one.
    :ivar max_message_fragments: Frames one message may arrive in; more
        closes the connection with 1008. 0 for unlimited.
    :ivar upgrade_timeout: Seconds an Engine.IO WebSocket opened to upgrade
        a polling session may take to complete the upgrade.
    :ivar fast_paths: Whether to use L{fastpath}'s shortcuts past Autobahn
        where they were verified; off, plain Autobahn does the same work.
    :ivar trusted_hops: Reverse proxies in front of the server whose
        C{Forwarded}/C{X-Forwarded-For} name the client (C{--trust-forwarded}).
    :ivar closes_per_turn: Connections whose close is handled in one turn of
        the reactor; more closing at once (a mass drop) wait, in order, for
        the next turns (see L{CloseQueue}). 0 handles every close at once.
    """

    max_message_size: int = 64 * 1024
    ping_interval: float = 30
    ping_timeout: float = 10
    allowed_origins: tuple[str, ...] = ()
    max_send_buffer: int = 256 * 1024
    max_message_rate: float = 0
    max_message_fragments: int = 128
    upgrade_timeout: float = 10
    fast_paths: bool = True
    trusted_hops: int = 0
    closes_per_turn: int = 200

    def allows_origin(self, origin: str | None) -> bool:
        """
        Whether a browser from C{origin} may connect; clients that send no
        Origin (anything but a browser) may.
        """
        if origin is None or not self.allowed_origins:
            return True
        return origin.rstrip("/").lower() in self._allowed_lowercase

    @property
    def _allowed_lowercase(self) -> frozenset[str]:
        return frozenset(o.rstrip("/").lower() for o in self.allowed_origins)


_OPEN = WebSocketProtocol.STATE_OPEN


class CloseQueue:
    """
    Runs the close work of a hub's WebSocket connections (Autobahn's, the
    session's, the hub's leave and its C{peer-left}s, the log line): at
    once, unless C{per_turn} connections have already closed since the
    reactor last turned. The rest wait, in order, and run C{per_turn} a turn
    on later turns (calls after 0 seconds on C{clock}), so that when
    thousands of sockets drop together (epoll reports them in one turn) new
    handshakes are answered between the batches instead of after them all.

    A single close runs at once and schedules nothing; the count of closes
    is reset by a call scheduled only once L{ARM} of them have run.
    """

    #: Closes after which the count's reset is scheduled.
    ARM = 16
    _log = Logger()

    def __init__(self, clock: IReactorTime, per_turn: int) -> None:
        self._clock = clock
        self.per_turn = per_turn
        self._waiting: deque = deque()
        self._count = 0
        self._call: IDelayedCall | None = None

    def run(self, work: Callable[..., None], *args) -> None:
        per_turn = self.per_turn
        if per_turn <= 0:
            work(*args)
            return
        if not self._waiting and self._count < per_turn:
            self._count += 1
            if self._count >= min(self.ARM, per_turn):
                self._schedule()
            work(*args)
            return
        self._waiting.append((work, args))
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None:
            self._call = self._clock.callLater(0, self._turn)

    def _turn(self) -> None:
        self._call = None
        self._count = 0
        waiting = self._waiting
        while waiting and self._count < self.per_turn:
            work, args = waiting.popleft()
            self._count += 1
            try:
                work(*args)
            except Exception:
                self._log.failure("closing a connection failed")
        if self._count:
            # Closes arriving in this turn count against this batch.
            self._schedule()


_close_queues: WeakKeyDictionary[Hub, CloseQueue] = WeakKeyDictionary()


def close_queue(hub: Hub, per_turn: int) -> CloseQueue:
    """
    The L{CloseQueue} of C{hub}'s connections, shared by every factory of
    the hub (the first one's C{per_turn} holds).
    """
    queue = _close_queues.get(hub)
    if queue is None:
        queue = _close_queues[hub] = CloseQueue(hub.clock, per_turn)
    return queue


_class_logs: WeakKeyDictionary[type, Logger] = WeakKeyDictionary()


def _class_log(protocol: type) -> Logger:
    """
    The logger of C{protocol}'s connection lines: its C{_log} as the class
    has it, made once (read through a connection, a Twisted logger makes a
    new one each time, with the connection as its source), in the same
    namespace.
    """
    log = _class_logs.get(protocol)
    if log is None:
        log = _class_logs[protocol] = protocol._log
    return log


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def handshake_info(
    request,
    auth: AuthPolicy = AuthPolicy(),
    peer_host: str | None = None,
    trusted_hops: int = 0,
) -> HandshakeInfo:
    """
    What a session may know of an Autobahn C{ConnectionRequest}.

    :param peer_host: The socket's peer; the client's address is that, or
        behind C{trusted_hops} proxies the one their headers name.
    """
    address = peer_host
    if peer_host is not None and trusted_hops:
        address = forwarded_address(
            peer_host,
            [request.headers["forwarded"]] if "forwarded" in request.headers else [],
            [request.headers["x-forwarded-for"]]
            if "x-forwarded-for" in request.headers
            else [],
            trusted_hops,
        )
    params = {name: values[0] for name, values in request.params.items() if values}
    return HandshakeInfo(
        path=unquote(request.path),
        params=params,
        origin=request.headers.get("origin"),
        token=presented_token(params, request.headers.get("authorization")),
        auth=auth,
        address=address,
    )


def handshake_of(protocol, request, auth: AuthPolicy = AuthPolicy()) -> HandshakeInfo:
    """
    L{handshake_info} of a server protocol's C{request}, with its socket's
    peer behind its factory's C{settings.trusted_hops} proxies.
    """
    return handshake_info(
        request,
        auth,
        getattr(protocol.transport.getPeer(), "host", None),
        protocol.factory.settings.trusted_hops,
    )


@implementer(IPeerConnection, IFrameSink)
class SignalingProtocol(LimitedProtocol):
    """
    One WebSocket connection, speaking one dialect through its session.
    """

    _log = Logger()
    #: What carries the peer, for C{/metrics}.
    transport_name = "websocket"
    session: Session | None = None
    #: Deferreds of L{probe}s waiting for the client to answer.
    _probes: list[Deferred] | None = None
    _probe_timeout: IDelayedCall | None = None
    #: Whether the socket has gone, its close waiting in the L{CloseQueue}.
    _gone = False

    def connectionMade(self) -> None:
        super().connectionMade()
        # One attribute away on the relay path rather than three.
        self.counters = self.factory.hub.counters

    def onConnect(self, request):
        auth = self.factory.auth
        handshake = handshake_of(self, request, auth)
        if not self.factory.settings.allows_origin(handshake.origin):
            self.factory.hub.counters.count(
                self.factory.hub.counters.handshakes_refused, "origin"
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        if not auth.checks_tokens:
            self.session = self.factory.session_factory(
                self.factory.hub, self, handshake
            )
            return self.session.prepare()
        # A token whose key a key set lacks waits for the set to be fetched
        # again; Autobahn holds the handshake until this fires.
        identified = auth.identify_later(handshake.token, self.factory.clock)
        identified.addErrback(self._refuse)
        identified.addCallback(self._identified, handshake)
        identified.addCallback(
            lambda _: self.session.prepare() if self.session is not None else None
        )
        return identified

    def _refuse(self, failure):
        """
        Refuse the handshake with 401 when the token is invalid, or missing
        where one is required (except at a path whose dialect takes it in a
        message).
        """
        failure.trap(InvalidToken)
        if failure.check(MissingToken):
            if self.factory.token_in_message:
                return None
            raise ConnectionDeny(401, "a token is required")
        # The reason, never the token: it is the client's own.
        self._log.info("refused a WebSocket: {error}", error=failure.getErrorMessage())
        self.factory.hub.counters.count(
            self.factory.hub.counters.handshakes_refused, "auth"
        )
        raise ConnectionDeny(401, failure.getErrorMessage())

    def _identified(self, identity, handshake: HandshakeInfo) -> None:
        if identity is not None and identity.limits.max_message_rate is not None:
            # The token's rate instead of --max-message-rate.
            rate = identity.limits.max_message_rate
            self.rate_limit = (
                RateLimit(rate, self.factory.clock.seconds()) if rate else None
            )
        handshake = attrs.evolve(handshake, identity=identity)
        self.session = self.factory.session_factory(self.factory.hub, self, handshake)

    def onOpen(self) -> None:
        self._guarded(self.session.opened)
        peer = self.session.peer if self.session is not None else None
        if peer is not None:
            log_connection(
                _class_log(type(self)),
                "opened",
                peer.dialect,
                peer.id,
                self.session.handshake.address,
            )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        timer = self.counters.relay_timer
        if timer is not None:
            # Inline, not a method of RelayTimer: this runs for every frame.
            timer.countdown -= 1
            if timer.countdown <= 0:
                self._timed(timer, payload, isBinary)
                return
        self.counters.bytes_in += len(payload)
        self._mark_active()
        if self.over_rate():
            self.factory.hub.counters.count(self.factory.hub.counters.refused, "rate")
            if self.state == _OPEN:
                self._guarded(self.session.rate_limited)
            return
        if isBinary:
            self._guarded(self.session.binary_received, payload)
        elif payload.isascii() or _is_utf8(payload):
            self._guarded(self.session.text_received, payload)
        else:
            self.fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in a text message")

    def _timed(self, timer: RelayTimer, payload: bytes, isBinary: bool) -> None:
        """
        Handle the frame L{onMessage} picked to time, with its arrival
        stamped: through L{onMessage} again, whose countdown this sets so
        that the untimed path takes it without a call more.
        """
        timer.countdown = timer.every + 1
        session = self.session
        if session is None or session.peer is None:
            self.onMessage(payload, isBinary)
            return
        timer.arrived(session.peer.dialect)
        try:
            self.onMessage(payload, isBinary)
        finally:
            timer.done()

    def onPong(self, payload: bytes) -> None:
        self._mark_active()

    def _mark_active(self) -> None:
        if self._probes:
            self._end_probes(True)
        session = self.session
        if session is not None and session.peer is not None:
            self.factory.hub.touch(session.peer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Nothing more reaches the socket, even before its close is handled:
        # a peer-left to a peer that dropped in the same mass close is not
        # rendered.
        self._gone = True
        self.factory.closes.run(self._connection_lost, reason)

    def _connection_lost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            # Both fired with this protocol as their result: each would keep
            # it in a reference cycle that only a full collection frees.
            self.is_open = self.is_closed = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Not counted toward a full collection (gcpolicy.connection_closed):
        # a closed connection leaves no reference cycle (_connection_lost),
        # and garbage that does arise shows in the policy's memory check.
        if self._probes:
            self._end_probes(False)
        if self.session is not None:
            session, self.session = self.session, None
            session.stop_timers()
            if session.peer is not None:
                log_connection(
                    _class_log(type(self)),
                    "closed",
                    session.peer.dialect,
                    session.peer.id,
                    session.handshake.address,
                    code,
                )
            try:
                session.closed()
            except Exception:
                self._log.failure("closing a session failed")

    def _guarded(self, handler, *args) -> None:
        # A bug in a dialect ends only this connection, with 1011, and
        # never reaches the client as a traceback.
        try:
            handler(*args)
        except Exception:
            self._log.failure("a session handler failed")
            self.fail(CLOSE_INTERNAL_ERROR, "internal error")

    def message_too_large(self) -> None:
        if self.session is not None:
            self._guarded(self.session.too_large)

    # IFrameSink

    def send(self, frame: bytes) -> None:
        self.check_send(len(frame))
        try:
            self.sendMessage(frame)
            self.counters.bytes_out += len(frame)
        except PayloadExceededError:
            raise DeliveryRefused("too-large", "the message exceeds the size limit")

    def fail(self, code: int, reason: str) -> None:
        fastpath.fail_connection(self, code, reason)

    def lost(self) -> bool:
        return not self.wasClean and not fastpath.failed(self)

    def probe(self, timeout: float) -> Deferred:
        waiter: Deferred = Deferred()
        if self.state != _OPEN:
            waiter.callback(False)
            return waiter
        if not self._probes:
            # Probes that overlap share one ping, so asking often costs
            # the client no more than one ping per timeout.
            self._probes = []
            self.sendPing(b"probe")
            self._probe_timeout = self.factory.clock.callLater(
                timeout, self._end_probes, False
            )
        self._probes.append(waiter)
        return waiter

    def _end_probes(self, alive: bool) -> None:
        waiters, self._probes = self._probes or [], None
        timeout, self._probe_timeout = self._probe_timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()
        for waiter in waiters:
            waiter.callback(alive)

    # IPeerConnection

    def deliver(self, event) -> None:
        if self._gone:
            # Its close waits in the CloseQueue; the socket takes nothing.
            return
        session = self.session
        if session is None:
            raise DeliveryRefused("closed", "the connection is closed")
        try:
            frame = session.render(event)
        except Exception:
            # The recipient's bug: it ends the recipient's connection, not
            # the sender's.
            self._log.failure("rendering a hub event failed")
            self.close(CloseReason.FAILED)
            raise DeliveryRefused("closed", "the recipient failed")
        if frame is not None:
            self.send(frame)
            timer = self.counters.relay_timer
            if (
                timer is not None
                and timer.arrived_at is not None
                and type(event) is Signal
            ):
                timer.written()

    def close(self, reason: CloseReason) -> None:
        if self.state != _OPEN:
            return
        if reason is CloseReason.FAILED:
            self.fail(CLOSE_INTERNAL_ERROR, "internal error")
        elif reason is CloseReason.GOING_AWAY:
            if self.session is not None:
                self._guarded(self.session.going_away)
            # sendClose() refuses 1001; Autobahn's failure path sends it.
            self.fail(CLOSE_GOING_AWAY, reason.value)
        else:
            self.sendClose(CLOSE_REMOVED, reason.value)


class FastSignalingProtocol(fastpath.FastPaths, SignalingProtocol):
    """
    A L{SignalingProtocol} on L{fastpath}'s shortcuts.
    """


class SignalingFactory(WebSocketServerFactory):
    """
    Makes L{SignalingProtocol}s whose sessions come from C{session_factory},
    on the fast paths when C{settings} asks for them and L{fastpath.install}
    allows them.
    """

    protocol = SignalingProtocol

    def __init__(
        self,
        hub: Hub,
        session_factory: SessionFactory,
        settings: WebSocketSettings = WebSocketSettings(),
        auth: AuthPolicy = AuthPolicy(),
        token_in_message: bool = False,
    ) -> None:
        """
        :param auth: What is done with the tokens clients present.
        :param token_in_message: Whether the dialect takes a token in a
            message after the handshake (native C{auth}), so that a
            handshake without one is let through where one is required.
        """
        super().__init__()
        self.auth = auth
        self.token_in_message = token_in_message
        self.fast_paths = fastpath.install(enabled=settings.fast_paths)
        self.hub = hub
        self.clock = hub.clock
        self.session_factory = session_factory
        self.settings = settings
        self.closes = close_queue(hub, settings.closes_per_turn)
        self.setProtocolOptions(
            # A protocol error must end with a close frame, not a TCP drop.
            failByDrop=False,
            maxFramePayloadSize=settings.max_message_size,
            maxMessagePayloadSize=settings.max_message_size,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout if settings.ping_interval else 0,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            # Autobahn's incremental validator costs ~6 % of a relay; onMessage
            # checks whole messages instead, at almost no cost for ASCII.
            utf8validateIncoming=False,
        )
        if self.fast_paths:
            self.protocol = fastpath.with_options(FastSignalingProtocol, self)
            fastpath.direct_timers(self)
