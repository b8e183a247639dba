"""
The relay's fast paths: the only module that touches private Autobahn and
Twisted names.

Each fast path does what plain Autobahn does, with less work per message
(docs/performance.rst has the figures). They read names that are no part of
Autobahn's or Twisted's API, listed in L{PRIVATE_NAMES}, so L{install} turns
them on only for the versions they were verified against and with wsaccel
installed; anywhere else the server runs on plain Autobahn, after one log
line, and behaves the same on the wire (the relay and framing tests run in
both modes).

Outside the check, because they have no public equivalent and every mode
needs them: L{fail_connection} (C{sendClose} refuses 1007, 1008 and 1011)
and L{failed}.
"""

from __future__ import annotations

import base64
import collections
import errno
import functools
import hashlib
import math
import pprint
import re
import resource
import select
import types
from importlib import metadata

from typing import Any, Callable

import attrs
import txaio
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.wamp.types import TransportDetails
from autobahn.websocket import protocol as _autobahn_protocol
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.interfaces import ISSLTransport
from twisted.internet import tcp as _tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.tcp import Connection as _TCPConnection
from twisted.internet.tcp import Port as _TCPPort
from twisted.internet.tcp import Server as _TCPServer
from twisted.python import log as _legacy_log
from twisted.logger import FileLogObserver, _format, formatTime, timeFormatRFC3339

from . import logs
from .deadlines import DeadlineQueue
from .logs import Logger
from .transports.requesthead import RequestHead, parse_request_head

#: Every private name the code below reads or writes. A bare name is an
#: attribute of an Autobahn protocol or module; "transport.NAME" is an
#: attribute of a Twisted TCP transport (the prefix keeps a test's source
#: scan from matching our own C{.socket} or C{.offset}).
PRIVATE_NAMES = (
    # autobahn.websocket.protocol module globals, replaced at install
    "create_xor_masker",
    "pformat",
    # ... and of autobahn.twisted.websocket too: debug-log argument helpers
    "hltype",
    "hlval",
    # WebSocketProtocol: the frame parser's state and entry points
    "_dataReceived",
    "_fail_connection",
    "_perMessageCompress",
    "_cancelAutoPingTimeoutCall",
    # ... and its per-connection set-up (FastPaths._connectionMade,
    # connection_made)
    "_connectionMade",
    "_transport_details",
    "utf8validator",
    "openHandshakeTimeoutCall",
    "onOpenHandshakeTimeout",
    "current_frame",
    "inside_message",
    "self.data",
    "send_queue",
    "trafficStats",
    "autoPingTimeoutCall",
    "autoPingRestartOnAnyTraffic",
    "failedByMe",
    # ... and ObservableMixin's list of events and their results, which
    # WebSocketProtocol.__init__ makes for every connection
    "_valid_events",
    "_results",
    # WebSocketProtocol: the per-connection copies of the factory's options,
    # and what the opening handshake leaves behind (dropped by slim())
    "CONFIG_ATTRS",
    "http_request_data",
    "http_headers",
    "http_response_data",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "http_request_params",
    "_wskey",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_origin",
    # WebSocketServerFactory: the timer its protocols schedule on
    "factory._batched_timer",
    # twisted.logger._file and _format: the time and the text of each line of
    # twistd's text log
    "_file.formatTime",
    "_format.formatWithCall",
    "_format.CallMapping",
    "_file.formatEventAsClassicLogText",
    # ... and its observer: the method that writes a line, and the file and
    # encoding it writes with
    "FileLogObserver.__call__",
    "observer._outFile",
    "observer._encoding",
    # The server's opening handshake, on the fast paths (FastPaths
    # .processHandshake and .succeedHandshake): Autobahn's origin helpers,
    # the handshake's entry points and what they set.
    "_url_to_origin",
    "_is_same_origin",
    "processHandshake",
    "succeedHandshake",
    "_onOpen",
    "_sendAutoPing",
    "websocket_version",
    "websocket_extensions_in_use",
    "allowedOriginsPatterns",
    "trustXForwardedFor",
    # twisted.internet.tcp.Server (abstract.FileDescriptor)
    "transport._writeDisconnected",
    "transport._tempDataBuffer",
    "transport.offset",
    "transport.dataBuffer",
    "transport.socket",
    # ... its set-up, which LeanServer does without the log prefix and repr
    # made up front, and the class a listening port makes them of
    "self._getLogPrefix",
    "self._addressType",
    "Port.transport",
    # twisted.internet.epollreactor.EPollReactor (and _PollLikeMixin): its
    # poller, its sockets by descriptor, and how it handles one ready socket
    "reactor._poller",
    "reactor._selectables",
    "reactor._doReadOrWrite",
)

#: Versions the fast paths were verified against: [lowest, above highest).
AUTOBAHN_VERIFIED = ((26, 10), (27,))
TWISTED_VERIFIED = ((26, 4), (27,))

_log = Logger()
_OPEN = WebSocketProtocol.STATE_OPEN
_CONNECTING = WebSocketProtocol.STATE_CONNECTING


@attrs.frozen
class Versions:
    """
    What the fast paths depend on, as installed.

    :ivar autobahn: Autobahn's version string.
    :ivar twisted: Twisted's version string.
    :ivar wsaccel: Whether wsaccel's masker can be imported.
    """

    autobahn: str
    twisted: str
    wsaccel: bool

    @classmethod
    @functools.cache
    def installed(cls) -> Versions:
        try:
            import wsaccel.xormask  # noqa: F401
        except ImportError:
            wsaccel = False
        else:
            wsaccel = True
        return cls(metadata.version("autobahn"), metadata.version("twisted"), wsaccel)


def _release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    if numbers is None:
        return ()
    return tuple(int(part) for part in numbers.group().split("."))


def check(versions: Versions) -> str | None:
    """
    Why the fast paths cannot run with C{versions}, or None when they can.

    :param versions: The versions to judge, e.g. L{Versions.installed}.
    """
    for name, version, (lowest, above) in (
        ("Autobahn", versions.autobahn, AUTOBAHN_VERIFIED),
        ("Twisted", versions.twisted, TWISTED_VERIFIED),
    ):
        if not lowest <= _release(version) < above:
            return (
                f"{name} {version} is outside the versions they were verified against"
                f" ({'.'.join(map(str, lowest))} to before {'.'.join(map(str, above))})"
            )
    if not versions.wsaccel:
        return "wsaccel is not installed (the speedups extra)"
    return None


# What install() replaced in Autobahn's protocol module, to put it back.
_originals: dict[str, object] = {}
#: Why the fast paths are off ("" when they are on), as last installed.
_off_because: str | None = None
#: wsaccel's masker factory while the fast paths are on.
_create_masker = None


def install(
    enabled: bool = True, versions: Versions | None = None, log: Logger = _log
) -> bool:
    """
    Turn the fast paths on when C{enabled} and verified for C{versions},
    else leave Autobahn as it is, logging why once.

    On: Autobahn masks with wsaccel and formats its per-connection option
    dump only when debugging, and twistd's text log formats each second's
    time once. The protocol classes' own fast paths
    (L{FastPaths}) are chosen per factory, by this function's answer.

    :param enabled: False turns the fast paths off whatever the versions.
    :param versions: What to check; by default what is installed.
    :param log: Where the line saying why they are off goes.
    :return: Whether the fast paths are on.
    """
    global _off_because, _create_masker
    if not enabled:
        reason = "turned off (--no-fast-paths)"
    else:
        reason = check(versions or Versions.installed()) or ""
    if reason == _off_because:
        return not reason
    _off_because = reason
    from autobahn.twisted import websocket
    from autobahn.websocket import protocol
    from twisted.logger import _file, _format

    for name, original in _originals.items():
        module, _, attribute = name.rpartition(".")
        setattr(websocket if module == "websocket" else protocol, attribute, original)
    _originals.clear()
    _file.formatTime = _format_time
    _format.formatWithCall = _format_with_call
    _file.formatEventAsClassicLogText = _classic_log_text
    _file.FileLogObserver.__call__ = _file_observer_call
    _tcp.Port.transport = _TCPServer
    _create_masker = None
    if reason:
        log.info("fast paths off, plain Autobahn in use: {reason}", reason=reason)
        return False
    from wsaccel.xormask import createXorMasker

    _originals.update(
        create_xor_masker=protocol.create_xor_masker, pformat=protocol.pformat
    )
    # Autobahn 26 builds a cffi masker per frame (about 4 us); wsaccel's
    # Cython one takes under 2. wsaccel's own patch_autobahn() targets names
    # Autobahn no longer has.
    protocol.create_xor_masker = _create_masker = createXorMasker
    # Autobahn pretty-prints its 50 options on every connection, debug
    # logging or not: 10 % of accepting one.
    protocol.pformat = _pformat_when_debugging
    # Autobahn formats the arguments of its debug lines (the qualified name
    # of a method, a highlighted value) before the logger drops them: about
    # 5 % of accepting a connection.
    for module, prefix in ((protocol, ""), (websocket, "websocket.")):
        for name in ("hltype", "hlval"):
            original = getattr(module, name)
            _originals[prefix + name] = original
            setattr(module, name, _when_debugging(original))
    # twistd's text log formats the time of every line from scratch (a time
    # zone, a datetime, strftime): about a quarter of logging a connection.
    _file.formatTime = _time_once_a_second
    # ... and the text through string.Formatter, in Python, where
    # str.format_map does the same in C.
    _format.formatWithCall = _format_with_call_in_c
    # ... and the line around the text through generic helpers that check
    # types with typing.cast(Optional[...]) on every line.
    _file.formatEventAsClassicLogText = _plain_log_text
    # ... and flushes its file after every line.
    _file.FileLogObserver.__call__ = _write_log_line
    # Every listening TCP port's connections (this process has only ours).
    _tcp.Port.transport = LeanServer
    return True


_format_time = formatTime
_format_with_call = _format.formatWithCall
_file_observer_call = FileLogObserver.__call__


def _format_with_call_in_c(formatString: str, mapping) -> str:
    """
    L{twisted.logger.formatWithCall} by C{str.format_map}, which reads
    C{{name()}} fields through the same mapping; without them (or with an
    error) through the event itself.
    """
    try:
        # The event itself first: Twisted's mapping differs from it only
        # for "{name()}" fields (the event has no key "name()"), and wraps
        # every value in Python, a third of formatting a line.
        return str(formatString.format_map(mapping))
    except Exception:
        pass
    try:
        return str(formatString.format_map(_format.CallMapping(mapping)))
    except ValueError:
        # "{}" and malformed fields: Twisted's own error, as before.
        return _format_with_call(formatString, mapping)


#: The last second formatted: [second, format, text].
_last_time: list = [None, None, ""]


def _time_once_a_second(
    when: float | None, timeFormat: str | None = timeFormatRFC3339, default="-"
) -> str:
    """
    L{twisted.logger.formatTime}, formatting each second once for formats
    that show no fraction of one (twistd's shows whole seconds).
    """
    if when is None or timeFormat is None or "%f" in timeFormat:
        return _format_time(when, timeFormat, default)
    second = math.floor(when)
    last = _last_time
    if last[0] != second or last[1] != timeFormat:
        last[:] = [second, timeFormat, _format_time(second, timeFormat, default)]
    return last[2]


def _when_debugging(helper):
    @functools.wraps(helper)
    def helper_when_debugging(*args, **kwargs):
        if logs.debugging():
            return helper(*args, **kwargs)
        return ""

    return helper_when_debugging


def _pformat_when_debugging(value: object) -> str:
    if logs.debugging():
        return pprint.pformat(value)
    return "(not formatted: debug logging is off)"


def fail_connection(protocol, code: int, reason: str) -> None:
    """
    Close C{protocol}'s WebSocket with C{code} through Autobahn's failure
    path, the only one that sends 1007, 1008 or 1011.
    """
    protocol._fail_connection(code, reason)


def failed(protocol) -> bool:
    """
    Whether C{protocol} has failed its connection (through L{fail_connection}
    or a protocol error), so that what still arrives is to be ignored.
    """
    return protocol.failedByMe


class LeanServer(_TCPServer):
    """
    Twisted's server side of a TCP connection, whose log prefix and repr
    are made when asked for (an error's log line, a debugger), not for
    every connection: 1.2 µs and 160 bytes each. A listening port makes
    its connections of this class while the fast paths are on.
    """

    def __init__(
        self,
        sock: Any,
        protocol: Any,
        client: tuple,
        server: Any,
        sessionno: int,
        reactor: Any,
    ) -> None:
        # tcp.Server.__init__, but for its logstr and repstr.
        _TCPConnection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self.startReading()
        self.connected = 1

    def getPeer(self) -> Any:
        """
        Twisted's address of the client, made once for the four that ask in
        a connection's first turns (the site's slot, the hand-over,
        Autobahn's peer name, the handshake) and kept only until the next
        connection asks for its own.
        """
        last = _last_peer
        if last[0] is self.client:
            return last[1]
        address = super().getPeer()
        last[0], last[1] = self.client, address
        return address

    def logPrefix(self) -> str:
        return f"{self._getLogPrefix(self.protocol)},{self.sessionno},{self.hostname}"

    def __repr__(self) -> str:
        port = self.server._realPortNumber if self.server is not None else None
        return f"<{type(self.protocol).__name__} #{self.sessionno} on {port}>"


#: The client of the connection that last asked for its address (see
#: L{LeanServer.getPeer}): its address tuple, and its Twisted address.
_last_peer: list[Any] = [None, None]

#: The classes of plain TCP connections (a port's, ours or Twisted's).
_TCP_SERVERS = (_TCPServer, LeanServer)


def write_through(transport, data: bytes) -> None:
    """
    Send C{data} at once when the TCP socket has nothing queued.

    Twisted queues every write until the next turn of the reactor and
    registers the socket for writability and unregisters it again (two
    epoll_ctl calls) each time; a socket with an empty queue can take the
    frame now. What the socket does not take is queued as usual, so flow
    control (the transport pausing its producer) is unchanged.
    """
    if (
        type(transport) in _TCP_SERVERS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and transport.offset >= len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, or an error Twisted reports on its own write.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def watch_while_slicing(transport) -> None:
    """
    Have a TCP connection accepted this moment heard early while
    L{SlicedPoll} works through a backlog: its request is read, and
    answered, between two slices of a mass close, not after all of them.

    (The connection's request used to be read at once, in the turn that
    accepted it. It was mostly not there yet, a C{recv} that failed with
    C{EAGAIN}, raised and caught in Python; and the accept loop, taking
    each connection's handshake on with it, drained the kernel's queue of
    waiting connections so slowly that in a storm it overflowed and the
    clients it dropped came back after TCP's one-second retransmission:
    docs/performance.rst, "Storms, fifth round".)
    """
    if _slicing is not None and type(transport) in _TCP_SERVERS and transport.connected:
        _slicing.watch(transport.fileno())


#: Ready sockets of a large batch one reactor turn handles (L{SlicedPoll}):
#: about 15 ms of a mass close. With 256 the storm benchmark's stretches
#: were as short but each turn's own work made the storm 10 % dearer; with
#: 2,048 the longest stretch was 160 ms (docs/performance.rst).
SOCKETS_PER_TURN = 1024

#: Descriptors L{SlicedPoll} leaves free for what is not a socket of the
#: reactor's (log files, the epoll itself) and for Twisted's own use.
DESCRIPTOR_RESERVE = 512


def _descriptor_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


#: The L{SlicedPoll} working through a backlog now, if any.
_slicing: SlicedPoll | None = None


class SlicedPoll:
    """
    An epoll reactor's C{doIteration} that spreads a large batch of ready
    sockets over several turns, taking new connections in between.

    When thousands of clients drop at once, epoll reports their sockets in
    one batch and Twisted handles them all before it polls again: for
    19,000 closes, about half a second in which no connection is taken in
    and no timer runs. A listening socket that became ready meanwhile comes
    after all of them, and so does the first request on each connection
    accepted then (epoll lists a socket behind those already ready).

    Here a turn handles at most L{SOCKETS_PER_TURN} sockets of a batch; the
    rest is the backlog, handled in later turns (timers run between them),
    without polling all sockets again (with 19,000 ready, a poll alone takes
    15 ms). While there is a backlog a second, small epoll (C{early})
    watches only the listening ports and the connections accepted since
    (L{watch_while_slicing} adds them); each turn first handles what it
    reports, up to as many again, so a new connection is accepted in one
    turn and its request read and answered in the next, between slices of a
    mass close. Other sockets are heard again once
    the backlog is done: no later than they would have been after Twisted's
    one long turn, plus the new connections' share. A batch up to the limit
    with no backlog is handled as Twisted does, at no cost.

    The backlog's sockets still hold their descriptors: a listening port
    accepts no more connections than leave L{DESCRIPTOR_RESERVE} free
    (accepted beyond the limit, Twisted would close them at once).
    """

    def __init__(
        self,
        reactor: Any,
        per_turn: int = SOCKETS_PER_TURN,
        descriptor_limit: Callable[[], int] = _descriptor_limit,
    ):
        self.reactor = reactor
        self.per_turn = per_turn
        self.descriptor_limit = descriptor_limit
        #: What the last large batch left to handle.
        self.backlog: list[tuple[int, int]] = []
        self.early: Any = None
        self.ports: dict[int, _TCPPort] = {}

    def install(self) -> None:
        # The reactor's main loop calls doIteration, which the class binds
        # to doPoll.
        self.reactor.doIteration = self.reactor.doPoll = self

    def watch(self, fd: int) -> None:
        """
        Watch C{fd}, a connection accepted while there is a backlog.
        """
        try:
            self.early.register(fd, select.EPOLLIN)
        except (OSError, ValueError):
            pass

    def __call__(self, timeout: float | None) -> None:
        if self.backlog:
            self._next_slice()
            return
        reactor = self.reactor
        try:
            events = reactor._poller.poll(
                -1 if timeout is None else timeout, len(reactor._selectables)
            )
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        if len(events) <= self.per_turn:
            self._handle(events)
            return
        self.backlog = events
        self._start_backlog()
        self._next_slice()

    def _start_backlog(self) -> None:
        global _slicing
        self.ports = {port.fileno(): port for port in self.listening_ports()}
        self.early = select.epoll()
        for fd in self.ports:
            self.early.register(fd, select.EPOLLIN)
        _slicing = self

    def _end_backlog(self) -> None:
        global _slicing
        _slicing = None
        self.early.close()
        self.early = None
        self.ports = {}

    def _next_slice(self) -> None:
        per_turn = self.per_turn
        try:
            early = self.early.poll(0, per_turn)
            if early:
                self._limit_accepts(early)
                self._handle(early)
            now, self.backlog = self.backlog[:per_turn], self.backlog[per_turn:]
            self._handle(now)
        finally:
            if not self.backlog:
                self._end_backlog()

    def _handle(self, events: list[tuple[int, int]]) -> None:
        # Twisted calls each through log.callWithLogger, which pushes the
        # socket's log prefix as the legacy log's context: 1.2 µs an event,
        # a twelfth of relaying a message, for a prefix only an error
        # logged by Twisted's own handler would show (it still logs the
        # error and closes the socket, as before).
        global _gathering_log
        selectables = self.reactor._selectables
        handle = self.reactor._doReadOrWrite
        _gathering_log = True
        try:
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    try:
                        handle(selectable, fd, event)
                    except Exception:
                        # Raised while closing it (connectionLost): logged
                        # as callWithLogger would, and the other sockets
                        # go on.
                        _legacy_log.err(system=_log_prefix(selectable))
        finally:
            _gathering_log = False
            if _unwritten:
                write_logs()

    def _limit_accepts(self, events: list[tuple[int, int]]) -> None:
        """
        Have each listening port among C{events} accept no more connections
        than leave the reserve of descriptors free.
        """
        room = (
            self.descriptor_limit()
            - DESCRIPTOR_RESERVE
            - len(self.reactor._selectables)
        )
        for fd, _ in events:
            port = self.ports.get(fd)
            if port is not None:
                # Twisted's accept loop takes up to numberAccepts; with none
                # it takes none (and tries 20 more next time).
                port.numberAccepts = max(0, min(port.numberAccepts, room))

    def listening_ports(self) -> list[_TCPPort]:
        """
        The reactor's listening TCP ports now (a pass over its sockets, made
        only when a backlog begins).
        """
        return [
            selectable
            for selectable in self.reactor._selectables.values()
            if isinstance(selectable, _TCPPort) and selectable.fileno() != -1
        ]


#: Whether L{SlicedPoll} is handling a batch of ready sockets: the lines
#: logged meanwhile are written once, at its end (L{_write_log_line}).
_gathering_log = False
#: The log lines of the batch so far, by the observer that writes them.
_unwritten: dict[Any, list[str]] = {}


def _write_log_line(observer: Any, event: dict) -> None:
    """
    L{twisted.logger.FileLogObserver}'s C{__call__} (twistd's log), which
    writes and flushes every line at once (one system call a line, or two):
    while L{SlicedPoll} handles a batch of sockets, the batch's lines are
    written together at its end, not one at a time (in a storm, one a
    connection).
    """
    text = observer.formatEvent(event)
    if not text:
        return
    if _gathering_log:
        lines = _unwritten.get(observer)
        if lines is None:
            lines = _unwritten[observer] = []
        lines.append(text)
        return
    _write_and_flush(observer, text)


def _write_and_flush(observer: Any, text: str) -> None:
    # As FileLogObserver writes: text, or UTF-8 to a file that takes bytes.
    output = observer._outFile
    encoding = observer._encoding
    output.write(text if encoding is None else text.encode(encoding))
    output.flush()


def write_logs() -> None:
    """
    Write what L{_write_log_line} gathered, each observer's lines in one
    write.
    """
    while _unwritten:
        observer, lines = _unwritten.popitem()
        try:
            _write_and_flush(observer, "".join(lines))
        except Exception:
            # As when Twisted's own write fails: logged, through the same
            # observer, whose failure Twisted's publisher then reports to
            # the others and answers by removing it.
            _log.failure("writing the log failed")


def _log_prefix(selectable: Any) -> str:
    try:
        return selectable.logPrefix()
    except Exception:
        return "(buggy logPrefix method)"


def slice_large_batches(reactor: Any) -> bool:
    """
    Install L{SlicedPoll} on C{reactor} if it is Twisted's epoll reactor and
    the fast paths are verified for the installed versions.

    :return: Whether it was installed.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    if type(reactor) is not EPollReactor or check(Versions.installed()):
        return False
    SlicedPoll(reactor).install()
    return True


def _txaio_loop():
    # What txaio.call_later calls on (Autobahn's timers follow it).
    loop = txaio.config.loop
    if loop is None:
        from twisted.internet import reactor as loop
    return loop


class QueuedTimer:
    """
    Autobahn's per-factory timer (the opening and closing handshake
    timeouts, pings) as one L{DeadlineQueue} per delay, on txaio's loop:
    every handshake arms its timeout and cancels it again, which with a
    reactor call each cost two operations on the reactor's heap of timed
    calls (thousands of ping timers), in Python.
    """

    #: Distinct delays given a queue each; calls of any other delay are
    #: reactor calls (L{DirectTimer}).
    MAX_QUEUES = 8

    def __init__(self) -> None:
        self._queues: dict[float, DeadlineQueue] = {}

    def call_later(self, delay: float, func, *args, **kwargs):
        queue = self._queues.get(delay)
        if queue is None:
            if kwargs or len(self._queues) >= self.MAX_QUEUES or delay <= 0:
                return _TimerCall(txaio.call_later(delay, func, *args, **kwargs))
            queue = self._queues[delay] = DeadlineQueue(delay, _txaio_loop)
        return queue.call_later(func, *args)


class _TimerCall:
    """
    A call of L{DirectTimer}: cancelling it again, or after it ran, is no
    error (as with Autobahn's batched calls).
    """

    __slots__ = ("delayed",)

    def __init__(self, delayed) -> None:
        self.delayed = delayed

    def cancel(self) -> None:
        delayed, self.delayed = self.delayed, None
        if delayed is not None and delayed.active():
            delayed.cancel()


class DirectTimer:
    """
    Autobahn's per-factory timer (the opening and closing handshake
    timeouts, pings), one reactor call each, on txaio's loop.

    Autobahn's own batches the calls of each second into a list and removes
    a cancelled one with C{list.remove}: every handshake cancels its
    timeout, so with thousands of handshakes a second each cancel scans
    thousands of calls.
    """

    def call_later(self, delay: float, func, *args, **kwargs) -> _TimerCall:
        return _TimerCall(txaio.call_later(delay, func, *args, **kwargs))


def direct_timers(factory) -> None:
    """
    Make C{factory}'s protocols schedule their timeouts and pings with a
    L{QueuedTimer}.
    """
    factory._batched_timer = QueuedTimer()


#: What Autobahn keeps of a server's opening handshake and never reads once
#: the connection is open.
_HANDSHAKE_LEFTOVERS = frozenset(
    {
        "http_request_data",
        "http_headers",
        "http_response_data",
        "http_status_line",
        "http_request_uri",
        "http_request_path",
        "http_request_host",
        "http_request_params",
        "_wskey",
        "websocket_protocols",
        "websocket_extensions",
        "websocket_origin",
    }
)


#: What Autobahn's opening handshake (or the fast one) may set to the value
#: the class holds for it (see L{_IDLE_STATE}).
_SET_BY_HANDSHAKE = (
    "_perMessageCompress",
    "autoPingPendingCall",
    "current_frame",
    "data",
    "inside_message",
    "openHandshakeTimeoutCall",
    "wasServingFlashSocketPolicyFile",
    "websocket_protocol_in_use",
)

#: Autobahn's per-connection state that every connection starts with (in
#: C{_connectionMade}) and most keep: held by the class too (see
#: L{with_options}), so that an open connection keeps only what differs.
#: It costs a little time (about 5 us of a 130 us handshake: CPython's
#: attribute caches do less for a name the class also has) for about 1.1 KB
#: of the 6 KB an idle peer held.
_IDLE_STATE = {
    "_perMessageCompress": None,
    "trackedTimings": None,
    "send_state": WebSocketProtocol.SEND_STATE_GROUND,
    "data": b"",
    "triggered": False,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "wasClean": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None,
    "autoPingPending": None,
    "autoPingPendingCall": None,
    "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
    "websocket_protocol_in_use": None,
    "inside_message": False,
    "current_frame": None,
}


def with_options(protocol: type, factory) -> type:
    """
    A subclass of C{protocol} (a L{FastPaths} one) holding C{factory}'s
    protocol options, and the state a connection starts with, as class
    attributes, so that L{FastPaths.onOpen} can drop the copies Autobahn
    makes of them on every connection.
    """
    options = {
        # A function (perMessageCompressionAccept) must not become a method.
        name: staticmethod(value) if isinstance(value, types.FunctionType) else value
        for name in protocol.CONFIG_ATTRS
        if hasattr(factory, name)
        for value in (getattr(factory, name),)
    }
    options.update(_IDLE_STATE, holds_options=True)
    options["__module__"] = protocol.__module__
    return type(protocol.__name__, (protocol,), options)


def slim(protocol) -> None:
    """
    Drop what an open server connection holds and no longer needs: the
    copies of its factory's options and of its idle state that its class
    already holds (see L{with_options}; what has since changed stays) and
    the opening handshake's request, headers and response.
    """
    state = protocol.__dict__
    held = type(protocol).__dict__
    get = held.get
    queue = state.get("send_queue")
    if "wasClean" in state:
        # Autobahn's own set-up (when debugging) copied its idle state,
        # and the options unless the class holds them: one pass over all,
        # into a new dict (a dict keeps its size when keys go).
        protocol.__dict__ = {
            name: value
            for name, value in state.items()
            if get(name, state) is not value and name not in _HANDSHAKE_LEFTOVERS
        }
    else:
        # FastPaths._connectionMade copied none: only what the handshake
        # set can go (the fast handshake set none of its leftovers), then
        # the dict is copied to its new size.
        if "http_headers" in state:
            pop = state.pop
            for name in _HANDSHAKE_LEFTOVERS:
                pop(name, None)
        for name in _SET_BY_HANDSHAKE:
            if get(name, state) is state.get(name, held):
                del state[name]
        protocol.__dict__ = dict(state)
    if queue is not None and not queue:
        # An empty deque is a block of 64 slots; FastPaths.send_queue (an
        # empty tuple) stands for it until something must be queued.
        del protocol.__dict__["send_queue"]


#: The transport details of a connection that has none yet.
_NO_DETAILS = TransportDetails()

#: The first two bytes of an unmasked text frame of 0 to 125 bytes.
_TEXT_HEADERS = [bytes((0x81, length)) for length in range(126)]


class FastPaths:
    """
    Autobahn's per-frame paths, minus what costs time on every message, for
    a L{WebSocketServerProtocol} subclass to inherit first; only for
    factories whose L{install} said yes.

    Whole text frames skip Autobahn's frame parser, and frames go straight
    to an idle socket; Autobahn's paths also built debug-log arguments even
    with debug logging off, and fired an observable "message" event (a
    Deferred per message) nobody listens to.
    """

    #: Autobahn's queue of frames to send, while empty (see L{slim}).
    send_queue: Any = ()
    #: What is sent while the opening handshake completes (see
    #: L{succeedHandshake}).
    handshake_output: list[bytes] | None = None
    #: Autobahn's incremental UTF-8 validator, made only where it is used.
    utf8validator = None
    #: Whether the class holds its factory's options and the idle state
    #: (L{with_options}).
    holds_options = False
    #: Whether the opening handshake's timeout waits for the request head
    #: (see L{open_with}).
    timeout_after_head = False
    #: The parse of the request head that L{open_with} hands over, for the
    #: handshake to take as it is.
    request_head: RequestHead | None = None

    #: ObservableMixin's events and their results, the same for every
    #: connection until something listens (L{on} then gives it its own):
    #: Autobahn's C{__init__} made a list and a dict for each.
    _valid_events = ["message"]
    _results = {"message": None}

    def __init__(self) -> None:
        if _create_masker is None:
            super().__init__()
            return
        # WebSocketProtocol.__init__, but for the events (above) and the
        # empty transport details (the class's, _transport_details).
        self.is_closed = txaio.create_future()
        self.is_open = txaio.create_future()

    def on(self, event, handler) -> None:
        if "_results" not in self.__dict__:
            self.set_valid_events(self._valid_events)
        super().on(event, handler)

    def _connectionMade(self) -> None:
        """
        Autobahn's per-connection set-up, without copying the factory's
        ~50 options and ~30 starting values onto the connection when the
        class holds them (L{with_options}): L{slim} dropped the copies again
        once open. Autobahn's dump of the options stays, when debugging.
        """
        if not self.holds_options or _create_masker is None or logs.debugging():
            super()._connectionMade()
            return
        self.trafficStats = TrafficStats()
        self.state = _CONNECTING
        # As Autobahn's server counts its connections (for maxConnections).
        self.factory.countConnections += 1
        if self.utf8validateIncoming:
            # Off in our factories: onMessage checks whole messages.
            self.utf8validator = Utf8Validator()
        if self.openHandshakeTimeout > 0 and not self.timeout_after_head:
            self.openHandshakeTimeoutCall = self.factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout
            )

    def onOpen(self) -> None:
        super().onOpen()
        if _create_masker is not None:
            slim(self)

    #: Until asked for, no transport details of its own (see
    #: L{connection_made}): what Autobahn reads of them meanwhile (that the
    #: connection is not secure) from an empty set.
    _transport_details = _NO_DETAILS

    @property
    def transport_details(self) -> TransportDetails:
        details = self._transport_details
        if details is _NO_DETAILS and self.transport is not None:
            details = self._transport_details = create_transport_details(
                self.transport, self.is_server
            )
            details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        return details

    def dataReceived(self, data: bytes) -> None:
        if (
            self.state == _OPEN
            and self.current_frame is None
            and not self.inside_message
            and not self.data
            # None if install() since turned the fast paths off (a test
            # switching modes): Autobahn parses as usual.
            and _create_masker is not None
            and self._perMessageCompress is None
            and not (self.utf8validateIncoming or self.logFrames or self.logOctets)
        ):
            data = self._whole_text_frames(data)
            if not data:
                return
        self._dataReceived(data)

    def _whole_text_frames(self, data: bytes) -> bytes:
        """
        Hand on the whole, unfragmented, masked text frames at the start of
        C{data} (what clients send for every signaling message) without
        Autobahn's general frame parser, which costs more than the rest of a
        relay together.

        :return: The rest of C{data}, from the first frame that is anything
            else (control, fragment, binary, over a limit, not all here), for
            Autobahn to parse and judge.
        """
        create_masker = _create_masker
        frame_limit = self.maxFramePayloadSize
        message_limit = self.maxMessagePayloadSize
        end = len(data)
        i = 0
        while end - i >= 6 and data[i] == 0x81 and self.state == _OPEN:
            second = data[i + 1]
            if second < 0x80:
                break
            length = second & 0x7F
            start = i + 6
            if length == 126:
                if end - i < 8:
                    break
                length = (data[i + 2] << 8) | data[i + 3]
                if length < 126:
                    break
                start = i + 8
            elif length == 127:
                break
            if (frame_limit and length > frame_limit) or (
                message_limit and length > message_limit
            ):
                break
            stop = start + length
            if stop > end:
                break
            payload = create_masker(data[start - 4 : start], length).process(
                data[start:stop]
            )
            self.trafficStats.incomingOctetsWireLevel += stop - i
            i = stop
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
            self.onMessage(payload, False)
        return data[i:] if i else data

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        length = len(payload)
        if (
            isBinary
            or fragmentSize is not None
            or sync
            or length > 0xFFFF
            or self.state != _OPEN
            or self._perMessageCompress is not None
            or self.trackedTimings
            or self.maskServerFrames
            or self.logFrames
            or self.autoFragmentSize
            or 0 < self.maxMessagePayloadSize < length
            or _create_masker is None
        ):
            super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
            return
        # One unmasked, unfragmented text frame (what every signaling
        # message is), framed as Autobahn's sendFrame frames it.
        stats = self.trafficStats
        stats.outgoingWebSocketMessages += 1
        stats.outgoingWebSocketFrames += 1
        stats.outgoingOctetsAppLevel += length
        stats.outgoingOctetsWebSocketLevel += length
        if length < 126:
            self.sendData(_TEXT_HEADERS[length] + payload)
        else:
            self.sendData(b"\x81\x7e" + length.to_bytes(2, "big") + payload)

    def succeedHandshake(self, res) -> None:
        """
        Autobahn's acceptance of the opening handshake, with what it and
        L{onOpen} send (the 101 response, a welcome, a peer list) gathered
        and written at once: one send, not a queued write that costs the
        reactor a turn and two epoll_ctl calls, then more.
        """
        fast = self.__dict__.pop("fast_request", None)
        if _create_masker is None or self.logOctets:
            if fast is not None:
                self._as_autobahns(*fast)
            super().succeedHandshake(res)
            return
        if fast is not None:
            key = fast[2]
            # (Read by Autobahn's frame code once open.)
            self.websocket_version = 13
        else:
            # Read by Autobahn's handshake: offered extensions are its to
            # negotiate.
            key = None if self.websocket_extensions else self._wskey
        self.handshake_output = output = []
        try:
            if (
                key is not None
                and res is None
                and not self.factory.headers
                and not self.trackedTimings
                and not logs.debugging()
            ):
                self._accept(key)
            else:
                if fast is not None:
                    self._as_autobahns(*fast)
                super().succeedHandshake(res)
        finally:
            del self.handshake_output
            if output:
                write_through(self.transport, b"".join(output))

    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        output = self.handshake_output
        if output is not None:
            if not (sync or chopsize or self.send_queue):
                output.append(data)
                if self.state == _OPEN:
                    self.trafficStats.outgoingOctetsWireLevel += len(data)
                elif self.state == _CONNECTING:
                    self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
                return
            # Anything queued goes after what was gathered.
            self.transport.write(b"".join(output))
            output.clear()
        if sync or chopsize or self.send_queue or self.state != _OPEN or self.logOctets:
            if type(self.send_queue) is tuple:
                self.send_queue = collections.deque()
            super().sendData(data, sync, chopsize)
            return
        write_through(self.transport, data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)

    def processHandshake(self) -> None:
        """
        Autobahn's server handshake, for the common valid upgrade (see
        L{_common_upgrade}) without its generic parsing and without the
        Deferred round trip when C{onConnect} answers at once; anything else
        (an unusual or invalid request, debug logging, a limit Autobahn
        checks that we do not set) goes to Autobahn's own, which judges and
        answers it as before.
        """
        data = self.data
        end = data.find(b"\r\n\r\n")
        if (
            end < 0
            or _create_masker is None
            or self.trustXForwardedFor
            or self.maxConnections > 0
            or logs.debugging()
        ):
            super().processHandshake()
            return
        parsed = self.request_head
        if parsed is not None and not (
            len(parsed.raw) == end + 4 and data.startswith(parsed.raw)
        ):
            parsed = None
        request = self._common_upgrade(data[: end + 4], parsed)
        if request is None:
            super().processHandshake()
            return
        self.data = data[end + 4 :]
        try:
            accepted = self.onConnect(request)
        except Exception:
            self._refused(txaio.create_failure())
            return
        if accepted is not None and type(accepted) not in (str, tuple):
            # A Deferred (or a coroutine): as Autobahn waits for it.
            txaio.add_callbacks(
                txaio.as_future(_identity, accepted),
                self.succeedHandshake,
                self._refused,
            )
            return
        self.succeedHandshake(accepted)

    def _refused(self, failure) -> None:
        """
        What Autobahn's handshake does when C{onConnect} raises or its
        Deferred fails: a L{ConnectionDeny} answers with its code, anything
        else with 500 after two warnings.
        """
        if isinstance(failure.value, ConnectionDeny):
            self.failHandshake(failure.value.reason, failure.value.code)
            return
        self.log.warn("Unexpected exception in onConnect ['{err.value}']", err=failure)
        self.log.warn("{tb}", tb=txaio.failure_format_traceback(failure))
        self.failHandshake(
            f"Internal server error: {failure.value}",
            ConnectionDeny.INTERNAL_SERVER_ERROR,
        )

    def _common_upgrade(
        self, head: bytes, parsed: RequestHead | None = None
    ) -> ConnectionRequest | None:
        """
        The request of C{head}, a whole request head, when it is a common
        valid upgrade that Autobahn would accept as it is, with what
        Autobahn's handshake sets on the connection set alike; else None
        (for Autobahn to judge).

        Common: a common head (L{parse_request_head}; C{parsed}, if the
        site's routing parsed it already) whose path has no fragment, no
        C{;} parameters and no C{//} at its start; a Host (a numeric port,
        if any, matching an external port set); Upgrade and Connection
        naming websocket and upgrade; version 13; one base64 key of 16
        bytes; no extensions offered; distinct subprotocols; an Origin, if
        any, that Autobahn's origin check allows.
        """
        if parsed is None:
            parsed = parse_request_head(head)
            if parsed is None:
                return None
        uri = parsed.uri
        path = parsed.path
        if path.startswith("//") or "#" in uri or ";" in path:
            return None
        headers = parsed.headers
        host = headers.get("host")
        upgrade = headers.get("upgrade")
        connection = headers.get("connection")
        key = headers.get("sec-websocket-key")
        if (
            host is None
            or upgrade is None
            or connection is None
            or key is None
            or headers.get("sec-websocket-version") != "13"
            or 13 not in self.versions
            or "sec-websocket-extensions" in headers
            or _KEY.fullmatch(key) is None
            or not _has_token(upgrade, "websocket")
            or not _has_token(connection, "upgrade")
        ):
            return None
        factory = self.factory
        if ":" in host and not host.endswith("]"):
            host, port = host.rsplit(":", 1)
            port = port.strip()
            if not (port.isdigit() and port.isascii()):
                return None
            if factory.externalPort and int(port) != factory.externalPort:
                return None
        protocols = []
        if "sec-websocket-protocol" in headers:
            protocols = [
                name.strip() for name in headers["sec-websocket-protocol"].split(",")
            ]
            if len(set(protocols)) != len(protocols):
                return None
        origin = headers.get("origin", "")
        if "origin" in headers:
            try:
                allowed = _autobahn_protocol._url_to_origin(origin)
            except ValueError:
                return None
            if not (
                allowed == "null"
                and factory.allowNullOrigin
                or _autobahn_protocol._is_same_origin(
                    allowed,
                    "https" if factory.isSecure else "http",
                    factory.externalPort or factory.port,
                    self.allowedOriginsPatterns,
                )
            ):
                return None
        params = _parse_query(parsed.query)
        request = ConnectionRequest(
            self.peer, headers, host, path, params, 13, origin, protocols, []
        )
        # What Autobahn's handshake would set on the connection, set only if
        # Autobahn's code is to read it (L{_as_autobahns}): the fast accept
        # needs the key alone, and L{slim} dropped the rest again.
        self.fast_request = (parsed, request, key)
        return request

    def _as_autobahns(
        self, parsed: RequestHead, request: ConnectionRequest, key: str
    ) -> None:
        """
        Set what Autobahn's server handshake sets on the connection, from
        what the fast one read, for Autobahn's own acceptance.
        """
        self.http_request_data = parsed.raw
        self.http_status_line = parsed.status_line
        self.http_headers = request.headers
        self.http_request_uri = parsed.uri
        self.http_request_path = request.path
        self.http_request_params = request.params
        self.http_request_host = request.host
        self.websocket_version = 13
        self.websocket_protocols = request.protocols
        self.websocket_origin = request.origin
        self.websocket_extensions = []
        self._wskey = key

    def _accept(self, key: str) -> None:
        """
        Autobahn's C{succeedHandshake} for a handshake with C{key} as its
        Sec-WebSocket-Key, no subprotocol chosen, no extension offered and
        no extra headers: the same 101 response, built without its generic
        code, and the same steps to open.
        """
        self.websocket_protocol_in_use = None
        self.websocket_extensions_in_use = []
        server = self.factory.server
        accept = base64.b64encode(
            hashlib.sha1(key.encode("utf8") + _WS_MAGIC).digest()
        ).decode()
        response = (
            "HTTP/1.1 101 Switching Protocols\r\n"
            + (f"Server: {server}\r\n" if server else "")
            + "Upgrade: WebSocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        self.sendData(response.encode("utf8"))
        self.state = _OPEN
        timeout = self.openHandshakeTimeoutCall
        if timeout is not None:
            timeout.cancel()
            self.openHandshakeTimeoutCall = None
        self.inside_message = False
        self.current_frame = None
        if self.autoPingInterval:
            self.autoPingPendingCall = self.factory._batched_timer.call_later(
                self.autoPingInterval, self._sendAutoPing
            )
        self._onOpen()
        txaio.resolve(self.is_open, None)
        if self.data:
            self.consumeData()


#: A key of 16 bytes in base64.
_KEY = re.compile("[A-Za-z0-9+/]{22}==")
#: RFC 6455's GUID for Sec-WebSocket-Accept.
_WS_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _parse_query(query: str) -> dict[str, list[str]]:
    """
    C{urllib.parse.parse_qs(query)}, as Autobahn reads a query, without its
    work for a query that has nothing to unquote (no C{%} or C{+}).
    """
    if "%" in query or "+" in query:
        return _autobahn_protocol.parse.parse_qs(query)
    params: dict[str, list[str]] = {}
    for field in query.split("&"):
        name, equals, value = field.partition("=")
        # parse_qs drops fields without a value (keep_blank_values off).
        if equals and value:
            values = params.get(name)
            if values is None:
                params[name] = [value]
            else:
                values.append(value)
    return params


def _identity(value):
    return value


def _has_token(value: str, token: str) -> bool:
    """
    Whether the comma-separated header C{value} names C{token}, compared as
    Autobahn compares it (stripped, case-insensitive).
    """
    lower = value.lower()
    # Mostly the token alone.
    return lower == token or any(part.strip() == token for part in lower.split(","))


def open_with(
    protocol, transport, head: bytes, parsed: RequestHead | None = None
) -> None:
    """
    Connect C{protocol}, a WebSocket server protocol, to C{transport} and
    hand it C{head}, the upgrade request that arrived: on the fast paths,
    its opening handshake's timeout is armed only if the handshake is still
    open after the head (most upgrades are answered at once, and the
    timeout was armed and cancelled for nothing), and C{parsed}, the parse
    of C{head} if it is common, is taken as it is.
    """
    if not isinstance(protocol, FastPaths) or _create_masker is None:
        protocol.makeConnection(transport)
        protocol.dataReceived(head)
        return
    protocol.timeout_after_head = True
    try:
        protocol.makeConnection(transport)
    finally:
        del protocol.timeout_after_head
    if parsed is None:
        protocol.dataReceived(head)
    else:
        protocol.request_head = parsed
        try:
            protocol.dataReceived(head)
        finally:
            del protocol.request_head
    if (
        protocol.state == _CONNECTING
        and protocol.openHandshakeTimeoutCall is None
        and protocol.openHandshakeTimeout > 0
    ):
        protocol.openHandshakeTimeoutCall = protocol.factory._batched_timer.call_later(
            protocol.openHandshakeTimeout, protocol.onOpenHandshakeTimeout
        )


_classic_log_text = _format.formatEventAsClassicLogText


def _plain_log_text(event: dict, formatTime: Callable = formatTime) -> str | None:
    """
    L{twisted.logger.formatEventAsClassicLogText} (twistd's text log: time,
    C{[namespace#level]}, text) for the common event, a text format with no
    failure, flattened fields or system of its own; any other event, or
    one whose text cannot be formatted, as Twisted formats it.
    """
    format = event.get("log_format")
    level = event.get("log_level")
    if (
        type(format) is not str
        or level not in logs.LEVELS
        or "log_failure" in event
        or "log_flattened" in event
        or "log_system" in event
    ):
        return _classic_log_text(event, formatTime)
    try:
        text = _format.formatWithCall(format, event)
    except BaseException:
        return _classic_log_text(event, formatTime)
    if not text:
        return None
    when = formatTime(event.get("log_time"))
    line = f"{when} [{event.get('log_namespace', '-')}#{level.name}] {text}"
    return line.replace("\n", "\n\t") + "\n"


def connection_made(protocol, autobahns: Callable[[], None]) -> None:
    """
    Autobahn's C{connectionMade} for C{protocol} (C{autobahns}, called
    instead off the fast paths, for a TLS connection, or when debugging),
    without building its transport details (about 2 us and 230 bytes a
    connection) until they are asked for (L{FastPaths.transport_details}):
    the peer's name, the socket's C{TCP_NODELAY}, the set-up.
    """
    if (
        not isinstance(protocol, FastPaths)
        or not protocol.holds_options
        or _create_masker is None
        or logs.debugging()
        or ISSLTransport.providedBy(protocol.transport)
    ):
        autobahns()
        return
    # The empty details Autobahn made with the connection.
    protocol.__dict__.pop("_transport_details", None)
    transport = protocol.transport
    if type(transport) is LeanServer:
        # peer2str's name of a TCP connection, without its interface checks.
        address = transport.getPeer()
        kind = "tcp4" if type(address) is IPv4Address else "tcp6"
        protocol.peer = f"{kind}:{address.host}:{address.port}"
    else:
        protocol.peer = peer2str(transport)
    try:
        transport.setTcpNoDelay(protocol.tcpNoDelay)
    except Exception:
        # As Autobahn: not every transport has the option.
        pass
    protocol._connectionMade()
