"""
The HTTP server under the Klein app: who may connect, how long a request
may take to arrive, how large its body may be, and what the access log says.

Each TCP connection is a L{GuardedChannel}, Twisted's HTTP channel taking a
slot of the client's address from the shared L{AddressLimiter}; it gives the
slot back when the socket closes, even after a WebSocket has taken the
connection over.

A WebSocket upgrade to a path of L{UpgradeRoutes} is handed by the channel
straight to its Autobahn factory, without twisted.web's request or the web
app's routing (Autobahn parses the request again anyway); anything else
(another path, a head in pieces, a body, proxies to trust) goes the whole
way through the web resource, which routes the same paths to the same
factories.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import resource as _rlimit
from typing import Any, Callable

import attrs
import orjson
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, ISSLTransport, ITCPTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site

from .addresses import AddressLimiter, Slot, forwarded_address, truncate_address
from .requesthead import RequestHead, parse_request_head
from .. import fastpath
from ..deadlines import Deadline, DeadlineQueue
from ..logs import Logger

_log = Logger()

#: Seconds a refused connection is kept half-closed so that the client reads
#: its answer before the socket closes (closing with unread input would send
#: a reset that can destroy the answer).
REFUSAL_LINGER = 2.0

#: Share of RLIMIT_NOFILE in use above which the fd warning is logged.
FD_WARNING_SHARE = 0.9

#: Seconds between two counts of the open files: counting lists
#: /proc/self/fd, which costs more than taking the connection in once
#: thousands are open.
FD_CHECK_INTERVAL = 1.0

_BODYLESS_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})
_SOCKETIO_PREFIX = b"/socket.io/"
_SECRET_PARAMETER = re.compile(
    rb"token|sid|auth|key|secret|pass|jwt|signature|credential|session|resume",
    re.IGNORECASE,
)


@attrs.frozen
class HTTPLimits:
    """
    :ivar request_timeout: Seconds a client has to send a whole request (head
        and body) once the server waits for one; 0 for no deadline.
    :ivar max_body: Largest request body in bytes, where a route takes one.
    :ivar max_socketio_body: Largest Engine.IO polling body (its max payload).
    :ivar trusted_hops: Reverse proxies in front of the server whose
        C{Forwarded}/C{X-Forwarded-For} entries are believed; 0 believes none.
    :ivar access_log: Whether every request is logged (at info, secrets of
        the query redacted).
    :ivar fd_log_interval: Seconds between two warnings about open files.
    """

    request_timeout: float = 30
    max_body: int = 1024 * 1024
    max_socketio_body: int = 64 * 1024
    trusted_hops: int = 0
    access_log: bool = False
    fd_log_interval: float = 60

    def body_limit(self, method: bytes, path: bytes) -> int:
        """
        The largest body a request of C{method} on C{path} may carry.
        """
        if method in _BODYLESS_METHODS:
            return 0
        if path.startswith(_SOCKETIO_PREFIX):
            return self.max_socketio_body
        return self.max_body


def json_response(status: bytes, body: Any) -> bytes:
    """
    A whole HTTP response that closes the connection, for answers given
    before (or instead of) the web resource.
    """
    payload = orjson.dumps(body)
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode("ascii") + b"\r\n"
        b"Connection: close\r\n\r\n" + payload
    )


def redact_uri(uri: bytes) -> str:
    """
    C{uri} with the values of token-, sid- and auth-like query parameters
    replaced, for the access log.
    """
    path, question, query = uri.partition(b"?")
    if not question:
        return path.decode("utf-8", "replace")
    parameters = []
    for parameter in query.split(b"&"):
        name, equals, value = parameter.partition(b"=")
        if equals and _SECRET_PARAMETER.search(name):
            value = b"REDACTED"
        parameters.append(name + equals + value)
    return (path + b"?" + b"&".join(parameters)).decode("utf-8", "replace")


def set_cors_headers(request: IRequest, settings: Any) -> None:
    """
    The CORS headers of an answer: without configured origins
    (C{settings.allowed_origins}), any origin may read it but no credentials
    are sent (C{*}); with them, an allowed origin is reflected with
    credentials.
    """
    origin = request.getHeader("origin")
    if origin is None:
        return
    if not settings.allowed_origins:
        request.setHeader("Access-Control-Allow-Origin", "*")
        return
    if not settings.allows_origin(origin):
        return
    request.setHeader("Access-Control-Allow-Origin", origin)
    request.setHeader("Access-Control-Allow-Credentials", "true")
    request.setHeader("Vary", "Origin")


#: The longest request head taken the short way (twisted.web's own limit on
#: a header line; a longer head goes through twisted.web and its checks).
_MAX_UPGRADE_HEAD = 16384
#: The most header lines taken the short way.
_MAX_UPGRADE_HEADERS = 64
_PLACEHOLDER = re.compile(r"\{[A-Za-z_]+\}")
#: A channel's C{_fresh} while its idle timeout waits for the first bytes.
_IDLE_PENDING = "idle timeout pending"


class UpgradeRoutes:
    """
    The WebSocket paths of the web app, each with the Autobahn server
    factory that takes its connections: one table, filled where the web app
    defines its routes, read by L{GuardedChannel} on each connection's first
    request.
    """

    def __init__(self) -> None:
        self._exact: dict[bytes, Any] = {}
        self._patterns: list[tuple[re.Pattern[bytes], Any]] = []

    def add(self, path: str, factory: Any) -> None:
        """
        Send WebSocket upgrades at C{path} to C{factory}.

        :param path: An absolute path; C{{name}} stands for one segment that
            is not empty (a segment with C{%} escapes, or any other path,
            goes the whole way through the web resource).
        :param factory: An Autobahn C{WebSocketServerFactory}.
        """
        if not _PLACEHOLDER.search(path):
            self._exact[path.encode("utf-8")] = factory
            return
        pattern = "[^/%]+".join(re.escape(part) for part in _PLACEHOLDER.split(path))
        self._patterns.append((re.compile(pattern.encode("utf-8")), factory))

    def match(self, path: bytes) -> Any:
        """
        The factory of C{path} (without its query), or None.
        """
        factory = self._exact.get(path)
        if factory is not None:
            return factory
        for pattern, factory in self._patterns:
            if pattern.fullmatch(path):
                return factory
        return None

    def route(self, head: bytes) -> tuple[Any, RequestHead | None] | None:
        """
        Where to hand C{head}, a connection's first bytes: when they are one
        whole C{GET} request head asking to upgrade to a WebSocket at one of
        the paths, with no body, the path's factory and the parse of a
        common head (L{parse_request_head}; None for any other), for the
        handshake to take as it is; else None.
        """
        if (
            not head.startswith(b"GET /")
            or len(head) > _MAX_UPGRADE_HEAD
            or not head.endswith(b"\r\n\r\n")
        ):
            return None
        parsed = parse_request_head(head)
        if parsed is not None:
            fields = parsed.headers
            if (
                len(fields) > _MAX_UPGRADE_HEADERS
                or "content-length" in fields
                or "transfer-encoding" in fields
                or fields.get("upgrade", "").lower() != "websocket"
            ):
                return None
            factory = self.match(parsed.path.encode("ascii"))
            return None if factory is None else (factory, parsed)
        # An uncommon head (a byte outside printable ASCII, a header twice):
        # handed over all the same if it asks for an upgrade, for Autobahn
        # to judge as it judges any handshake.
        request_line, _, headers = head[:-4].partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1":
            return None
        factory = self.match(parts[1].partition(b"?")[0])
        if factory is None:
            return None
        lines = headers.split(b"\r\n")
        if len(lines) > _MAX_UPGRADE_HEADERS:
            return None
        upgrade = False
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                # Not a header line (or a second request): twisted.web says.
                return None
            name = name.lower()
            if name == b"upgrade":
                upgrade = value.strip().lower() == b"websocket"
            elif name in (b"content-length", b"transfer-encoding"):
                return None
        return (factory, None) if upgrade else None


def _host_of(address: Any) -> str | None:
    return getattr(address, "host", None)


def count_open_files() -> int | None:
    """
    The file descriptors this process has open, where the system tells.
    """
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as error:
        if error.errno in (errno.EMFILE, errno.ENFILE):
            # Not even one more to list them with: all are in use.
            return resource_file_limit()
        return None


class _SocketWatch(ProtocolWrapper):
    """
    Stands between the socket and its protocol (the HTTP channel, or the TLS
    layer above it) so that the end of the connection is seen whoever owns
    it by then: a WebSocket takes the socket over from the channel.
    """

    def __init__(
        self, site: Site, inner: Any, transport: Any, lost: Callable[[], None]
    ) -> None:
        super().__init__(site, inner)
        self.transport = transport
        self.connected = 1
        self._lost: Callable[[], None] | None = lost

    def connectionLost(self, reason: Any) -> None:
        lost, self._lost = self._lost, None
        try:
            self.wrappedProtocol.connectionLost(reason)
        finally:
            if lost is not None:
                lost()


def _socket_of(transport: Any) -> Any:
    # Under TLS the channel's transport is the TLS protocol over the socket.
    if isinstance(transport, ProtocolWrapper):
        return transport.transport
    return transport


class GuardedChannel(HTTPChannel):
    """
    Twisted's HTTP/1.1 channel for one TCP connection: it holds a slot of
    the client's address, has a deadline for each request, refuses a body
    over its limit from the head before reading any of it, and refuses
    cleanly (a JSON answer, then a half-close).
    """

    site: "GuardedSite"
    slot: Slot | None = None
    refused = False
    _linger: IDelayedCall | None = None
    _deadline: Deadline | None = None
    _request_started = False
    _closed = False
    #: Under TLS, a refusal waiting for the handshake to complete.
    _tls_refusal = b""
    #: No byte of a request has arrived yet (L{_IDLE_PENDING}: and the idle
    #: timeout waits for the first; not an attribute more, which a channel
    #: kept under a WebSocket would hold for good).
    _fresh: Any = True
    #: Whether Twisted's set-up of the channel has run (see
    #: L{connectionMade}).
    _set_up = True

    def connectionMade(self) -> None:
        if (
            self.site.upgrades is None
            or self.site.limits.trusted_hops
            # TLS: its handshake's writes go out with TCP_NODELAY, as ever.
            or isinstance(self.transport, ProtocolWrapper)
        ):
            super().connectionMade()
        else:
            # Twisted's set-up (TCP_NODELAY, the idle timeout, the channel
            # as the transport's producer) waits for the first bytes that
            # are not an upgrade handed over: most connections are
            # WebSockets, which set up the socket their own way.
            self._set_up = False
        self.site.connection_opened()
        socket = _socket_of(self.transport)
        if getattr(socket, "protocol", None) is not None:
            socket.protocol = _SocketWatch(
                self.site, socket.protocol, socket, self._socket_closed
            )
        if self.site.limits.trusted_hops:
            # The client is known only from the request's headers.
            self._start_deadline()
            return
        host = _host_of(self.transport.getPeer())
        if host is None or self.admit(host):
            self._start_deadline()
            if self.site.upgrades is not None:
                # On the fast paths: heard early during a mass close.
                fastpath.watch_while_slicing(self.transport)

    def setTimeout(self, period: float | None) -> float | None:
        """
        Twisted's idle timeout, armed only once the first bytes arrive when
        the request deadline, no later, covers a connection that has sent
        nothing: most connections send an upgrade at once and are handed to
        a WebSocket, and arming and cancelling a reactor call for nothing
        cost each of them a few microseconds.
        """
        if (
            self._fresh
            and period is not None
            and 0 < self.site.limits.request_timeout <= period
        ):
            previous, self.timeOut = self.timeOut, period
            self._fresh = _IDLE_PENDING
            return previous
        if self._fresh is _IDLE_PENDING:
            self._fresh = True
        return super().setTimeout(period)

    def _socket_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self.slot is not None:
            self.slot.release()
        self.site.connection_closed()

    def admit(self, address: str) -> bool:
        """
        Take a slot of C{address}'s for this connection.

        :return: Whether it may stay; if not, it is answered 429 and closed.
        """
        limiter = self.site.limiter
        if limiter is None or self.slot is not None:
            return True
        self.slot = limiter.acquire(address)
        if self.slot is None:
            self.refuse(
                json_response(
                    b"429 Too Many Requests",
                    {"error": "too many connections from this address"},
                )
            )
            return False
        return True

    def refuse(self, response: bytes) -> None:
        """
        Answer with C{response}, ignore whatever else the client sends, and
        close once it has read the answer (or after L{REFUSAL_LINGER}).
        """
        if self.refused:
            return
        self.refused = True
        self._stop_deadline()
        self.setTimeout(None)
        transport = self.transport
        self._linger = self.site.reactor.callLater(
            REFUSAL_LINGER, transport.abortConnection
        )
        if not ISSLTransport.providedBy(transport):
            transport.write(response)
            if ITCPTransport.providedBy(transport):
                transport.loseWriteConnection()
            else:
                transport.loseConnection()
        elif self._request_started or not response:
            # TLS has no half-close: it closes once the answer is sent.
            transport.write(response)
            transport.loseConnection()
        else:
            # Closing TLS before its handshake resets the connection: the
            # answer waits for the client's first request bytes.
            self._tls_refusal = response

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            if self._tls_refusal:
                response, self._tls_refusal = self._tls_refusal, b""
                self.transport.write(response)
                self.transport.loseConnection()
            return
        idle_pending = self._fresh is _IDLE_PENDING
        if self._fresh:
            self._fresh = False
            upgrades = self.site.upgrades
            if upgrades is not None and not self.site.limits.trusted_hops:
                route = upgrades.route(data)
                if route is not None and self._hand_over(data, *route):
                    return
            if not self._set_up:
                self._set_up = True
                # (Arms the idle timeout: the channel is no longer fresh.)
                HTTPChannel.connectionMade(self)
        if idle_pending:
            super().setTimeout(self.timeOut)
        if self._deadline is not None:
            self._request_started = True
        super().dataReceived(data)

    def _hand_over(
        self, head: bytes, factory: Any, parsed: RequestHead | None = None
    ) -> bool:
        """
        Give the connection to a protocol of C{factory}, an Autobahn
        WebSocket server factory, with C{head}, the upgrade request, as its
        first bytes (and C{parsed}, their parse, if common); this channel is
        done with it (and, once the protocol has taken the transport's
        producer over, unreferenced).

        :return: False if the factory made no protocol, or the socket is
            not watched (the request then goes through the web resource).
        """
        transport = self.transport
        watch = getattr(_socket_of(transport), "protocol", None)
        if not isinstance(watch, _SocketWatch):
            # Nothing would give the slot back when the socket closes.
            return False
        protocol = factory.buildProtocol(transport.getPeer())
        if protocol is None:
            return False
        self._stop_deadline()
        self.setTimeout(None)
        self._closed = True
        self.transport = None
        if isinstance(transport, ProtocolWrapper):
            # TLS: the socket's protocol is TLS, whose protocol was this.
            transport.wrappedProtocol = protocol
        else:
            watch.wrappedProtocol = protocol
        watch._lost = functools.partial(_released, self.site, self.slot)
        fastpath.open_with(protocol, transport, head, parsed)
        return True

    def _start_deadline(self) -> None:
        timeout = self.site.limits.request_timeout
        if timeout and self._deadline is None and not self.refused:
            self._request_started = False
            self._deadline = self.site.request_deadlines.call_later(
                self._request_too_slow
            )

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _request_too_slow(self) -> None:
        self._deadline = None
        if not self._request_started:
            # An idle keep-alive connection (or one that never spoke):
            # there is no request to answer.
            self.refuse(b"")
            return
        _log.debug("a request took too long to arrive; closing its connection")
        self.refuse(
            json_response(
                b"408 Request Timeout", {"error": "the request took too long to arrive"}
            )
        )

    def timeoutConnection(self) -> None:
        # Twisted's own line names the client's full address at info.
        _log.debug("closing an idle HTTP connection")
        self.refuse(b"")

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        if self.site.limits.trusted_hops and not self.admit(
            _host_of(request.getClientAddress()) or ""
        ):
            self.length = None
            return
        limit = self.site.limits.body_limit(self._command, self._path)
        request.body_limit = limit
        request.body_path = self._path
        if (
            self.length is None
            and not limit
            or self.length is not None
            and self.length > limit
        ):
            # Not a byte of the body is read: the answer comes at once.
            self.length = None
            self.refuse(_too_large(self._path, limit))
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        # The rest of a buffer already being parsed when a refusal came.
        if not self.refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._stop_deadline()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        if self.persistent:
            # Started before the buffered next request is parsed, which
            # stops it again if that request is already whole.
            self._start_deadline()
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)
        self._socket_closed()


def _released(site: "GuardedSite", slot: Slot | None) -> None:
    # The end of a connection a WebSocket took over from its channel.
    if slot is not None:
        slot.release()
    site.connection_closed()


def _too_large(path: bytes, limit: int) -> bytes:
    if path.startswith(_SOCKETIO_PREFIX):
        # Engine.IO's own error form.
        body: Any = {"code": 3, "message": "Payload too large"}
    elif limit:
        body = {"error": "request body too large", "limit": limit}
    else:
        body = {"error": "this request takes no body"}
    return json_response(b"413 Content Too Large", body)


class GuardedRequest(Request):
    """
    A request that stops taking a (chunked) body past its limit and knows
    its client's address behind trusted proxies.
    """

    body_limit: int = 0
    body_path: bytes = b""
    _body_received = 0
    _client_address: Any = None

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or channel.refused:
            return
        self._body_received += len(data)
        if self._body_received > self.body_limit:
            channel.refuse(_too_large(self.body_path, self.body_limit))
            return
        super().handleContentChunk(data)

    def getClientAddress(self) -> Any:
        if self._client_address is not None:
            return self._client_address
        peer = super().getClientAddress()
        host = _host_of(peer)
        hops = self.channel.site.limits.trusted_hops if self.channel is not None else 0
        if not hops or host is None:
            return peer
        client = forwarded_address(
            host,
            self.requestHeaders.getRawHeaders("forwarded", []),
            self.requestHeaders.getRawHeaders("x-forwarded-for", []),
            hops,
        )
        kind = IPv6Address if ":" in client else IPv4Address
        self._client_address = kind("TCP", client, 0)
        return self._client_address


class GuardedSite(Site):
    """
    The Klein app's site with per-address limits, request deadlines, body
    limits, an opt-in redacted access log, and a warning when the process
    runs short of file descriptors.

    :ivar open_connections: TCP connections open now.
    """

    protocol = GuardedChannel
    requestFactory = GuardedRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: Any,
        limits: HTTPLimits,
        limiter: AddressLimiter | None,
        reactor: Any,
        open_files: Callable[[], int | None] = count_open_files,
        file_limit: int | None = None,
        upgrades: UpgradeRoutes | None = None,
    ) -> None:
        """
        :param open_files: Counts the process's open file descriptors.
        :param file_limit: The most it may open; default RLIMIT_NOFILE.
        :param upgrades: WebSocket paths whose upgrades skip C{resource}
            (which must route them to the same factories); None for none.
        """
        super().__init__(resource, reactor=reactor)
        self.upgrades = upgrades
        self.limits = limits
        # Every connection's request deadline on one reactor call.
        self.request_deadlines = DeadlineQueue(
            limits.request_timeout, lambda: self.reactor
        )
        self.limiter = limiter
        self.open_files = open_files
        if file_limit is None:
            file_limit = resource_file_limit()
        self.file_limit = file_limit
        self.open_connections = 0
        self._fd_warned_at: float | None = None
        self._fd_checked_at: float | None = None
        self._fd_recheck: IDelayedCall | None = None

    def connection_opened(self) -> None:
        self.open_connections += 1
        self._check_open_files()

    def connection_closed(self) -> None:
        self.open_connections -= 1

    def _check_open_files(self) -> None:
        # Only worth a look when our own connections alone fill half the
        # budget, and only once per interval after a warning.
        if not self.file_limit or self.open_connections < self.file_limit // 2:
            return
        now = self.reactor.seconds()
        if (
            self._fd_warned_at is not None
            and now - self._fd_warned_at < self.limits.fd_log_interval
        ):
            return
        if (
            self._fd_checked_at is not None
            and now - self._fd_checked_at < FD_CHECK_INTERVAL
        ):
            # Counted once more when the interval is over, so that the last
            # connections of a burst are not missed.
            if self._fd_recheck is None:
                self._fd_recheck = self.reactor.callLater(
                    self._fd_checked_at + FD_CHECK_INTERVAL - now, self._recheck
                )
            return
        self._fd_checked_at = now
        in_use = None
        if self.open_connections < FD_WARNING_SHARE * self.file_limit:
            # (Past the share, the connections alone are count enough:
            # listing /proc/self/fd with thousands open takes milliseconds.)
            in_use = self.open_files()
        if in_use is None:
            in_use = self.open_connections
        if in_use < FD_WARNING_SHARE * self.file_limit:
            return
        self._fd_warned_at = now
        _log.warn(
            "{in_use} of {file_limit} file descriptors are open ({connections} "
            "connections): new connections will soon fail; raise the limit "
            "(ulimit -n, LimitNOFILE=) or lower --max-connections-per-address",
            in_use=in_use,
            file_limit=self.file_limit,
            connections=self.open_connections,
        )

    def _recheck(self) -> None:
        self._fd_recheck = None
        self._check_open_files()

    def log(self, request: Request) -> None:
        if not self.limits.access_log:
            return
        _log.info(
            '{address} "{method} {uri}" {code} {length}',
            address=truncate_address(_host_of(request.getClientAddress()) or ""),
            method=request.method.decode("ascii", "replace"),
            uri=redact_uri(request.uri),
            code=request.code,
            length=request.sentLength,
        )


def resource_file_limit() -> int:
    """
    The soft RLIMIT_NOFILE of this process (0 when unlimited).
    """
    soft, _hard = _rlimit.getrlimit(_rlimit.RLIMIT_NOFILE)
    return 0 if soft == _rlimit.RLIM_INFINITY else soft


__all__ = [
    "UpgradeRoutes",
    "GuardedSite",
    "HTTPLimits",
    "json_response",
    "redact_uri",
    "set_cors_headers",
]
