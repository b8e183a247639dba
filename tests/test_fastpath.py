"""
Tests for the fast paths (signaling/fastpath.py): the version check and its
fallback, wsaccel masking, Autobahn's debug formatting, whole text frames
past Autobahn's parser, and writing frames straight to an idle socket. The
framing tests run on the fast paths and on plain Autobahn.
"""

from __future__ import annotations

import inspect
import io

import pprint
import re
import socket
import sys
import struct
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from unittest import SkipTest, skipUnless

import attrs
import orjson
import txaio
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.xormasker import create_xor_masker as autobahn_masker
from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.address import IPv4Address, IPv6Address
from autobahn.twisted.util import peer2str
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.protocol import Protocol
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import (
    MemoryReactor,
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.web.resource import Resource
from zope.interface import implementer
from twisted.trial.unittest import SynchronousTestCase
from twisted import logger as twisted_logger
from twisted.logger import _file as twisted_file
from twisted.logger import _format as twisted_format

from signaling import fastpath, logs
from signaling.dialects.native import NativeSession
from signaling.hub import Hub
from signaling.ids import IdSource
from signaling.logs import Logger
from signaling.transports.limits import SendBuffer
from signaling.transports.site import (
    GuardedChannel,
    GuardedSite,
    HTTPLimits,
    UpgradeRoutes,
)
from signaling.transports.websocket import (
    FastSignalingProtocol,
    SignalingFactory,
    SignalingProtocol,
    WebSocketSettings,
)

from .support import counting_random_bytes

INSTALLED = fastpath.Versions.installed()
#: Whether the fast paths can run here. Outside the verified versions the
#: tests of their workings are skipped: the fast paths are off there on
#: purpose, and the rest of the suite tests the fallback.
VERIFIED = fastpath.check(INSTALLED) is None
only_where_verified = skipUnless(
    VERIFIED, "the fast paths are off for the installed versions"
)


class InstallTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Whatever a test switches, the next one starts with the default.
        self.addCleanup(fastpath.install)

    @only_where_verified
    def test_autobahn_masks_with_wsaccel(self):
        """
        Once installed, Autobahn unmasks frames with wsaccel's masker, which
        gives the same bytes as Autobahn's own.
        """
        from wsaccel.xormask import createXorMasker

        self.assertTrue(fastpath.install())
        self.assertIs(autobahn_protocol.create_xor_masker, createXorMasker)
        masked = createXorMasker(b"\x01\x02\x03\x04", 6).process(b"abcdef")
        self.assertEqual(
            bytes(masked),
            bytes(autobahn_masker(b"\x01\x02\x03\x04", 6).process(b"abcdef")),
        )

    @only_where_verified
    def test_connection_options_formatted_only_when_debugging(self):
        """
        Autobahn's per-connection dump of its options is formatted only when
        the log level is debug.
        """
        fastpath.install()
        self.addCleanup(logs.set_level, "info")
        logs.set_level("info")
        self.assertNotIn(
            "maxFramePayloadSize",
            autobahn_protocol.pformat([("maxFramePayloadSize", 1)]),
        )
        logs.set_level("debug")
        self.assertIn(
            "maxFramePayloadSize",
            autobahn_protocol.pformat([("maxFramePayloadSize", 1)]),
        )

    def test_turned_off_autobahn_is_left_as_it_is(self):
        """
        Turned off, Autobahn's own masker and formatter are back in place, and
        factories make protocols without the fast paths.
        """
        fastpath.install()
        self.assertFalse(fastpath.install(enabled=False))
        self.assertIs(autobahn_protocol.create_xor_masker, autobahn_masker)
        self.assertIs(autobahn_protocol.pformat, pprint.pformat)
        factory = SignalingFactory(
            Hub(clock=MemoryReactorClock()),
            NativeSession,
            WebSocketSettings(fast_paths=False),
        )
        self.assertFalse(factory.fast_paths)
        self.assertIs(factory.protocol, SignalingProtocol)
        self.assertNotIsInstance(factory.buildProtocol(None), fastpath.FastPaths)

    def test_factory_uses_the_fast_paths_where_verified(self):
        factory = SignalingFactory(Hub(clock=MemoryReactorClock()), NativeSession)
        self.assertEqual(factory.fast_paths, VERIFIED)
        self.assertTrue(
            issubclass(
                factory.protocol,
                FastSignalingProtocol if VERIFIED else SignalingProtocol,
            )
        )
        self.assertEqual(issubclass(factory.protocol, FastSignalingProtocol), VERIFIED)

    def test_unverified_versions_fall_back_with_one_log_line(self):
        """
        Outside the verified versions the fast paths stay off, Autobahn is
        left as it is, and one line says why however often it is asked.
        """
        events: list[dict] = []
        log = Logger(observer=events.append)
        fastpath.install()
        newer = attrs.evolve(INSTALLED, autobahn="27.1.0")
        self.assertFalse(fastpath.install(versions=newer, log=log))
        self.assertFalse(fastpath.install(versions=newer, log=log))
        self.assertIs(autobahn_protocol.create_xor_masker, autobahn_masker)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"].name, "info")
        self.assertIn("Autobahn 27.1.0 is outside", events[0]["reason"])

    def test_check(self):
        """
        The installed versions pass; an older or newer Autobahn or Twisted
        outside the verified range, or no wsaccel, is refused with the reason.
        """
        verified = fastpath.Versions(
            autobahn="26.10.2", twisted="26.10.0", wsaccel=True
        )
        self.assertIsNone(fastpath.check(verified))
        self.assertIsNone(
            fastpath.check(attrs.evolve(verified, autobahn="26.99", twisted="26.4.0"))
        )
        for versions, reason in [
            (attrs.evolve(verified, autobahn="26.7.1"), "Autobahn 26.7.1 is outside"),
            (attrs.evolve(verified, autobahn="27.0.0"), "Autobahn 27.0.0 is outside"),
            (
                attrs.evolve(verified, autobahn="27.0.0rc1"),
                "Autobahn 27.0.0rc1 is outside",
            ),
            (attrs.evolve(verified, twisted="25.5.0"), "Twisted 25.5.0 is outside"),
            (attrs.evolve(verified, twisted="27.1.0"), "Twisted 27.1.0 is outside"),
            (attrs.evolve(verified, autobahn="unknown"), "Autobahn unknown is outside"),
            (attrs.evolve(verified, wsaccel=False), "wsaccel is not installed"),
        ]:
            self.assertIn(reason, fastpath.check(versions) or "", versions)


class PrivateNamesTests(SynchronousTestCase):
    @staticmethod
    def pattern(name: str) -> re.Pattern:
        return re.compile(r"\b" + re.escape(name) + r"\b")

    def test_only_fastpath_uses_private_names(self):
        """
        No module of the package but fastpath.py names a private Autobahn or
        Twisted name of fastpath's list.
        """
        package = Path(fastpath.__file__).parent
        found = []
        for path in sorted(package.rglob("*.py")):
            if path.name == "fastpath.py" and path.parent == package:
                continue
            source = path.read_text()
            for name in fastpath.PRIVATE_NAMES:
                if self.pattern(name).search(source):
                    found.append(f"{path.relative_to(package)}: {name}")
        self.assertEqual(found, [])

    def test_the_list_names_what_fastpath_touches(self):
        """
        Every private name fastpath.py uses is on its list, and every name on
        the list is in fastpath.py.
        """
        source = Path(fastpath.__file__).read_text()
        code = source.split("_log = Logger()", 1)[1]
        for name in fastpath.PRIVATE_NAMES:
            self.assertRegex(code, self.pattern(name))
        listed = {name.rsplit(".", 1)[-1] for name in fastpath.PRIVATE_NAMES}
        used = set(re.findall(r"(?:self|transport|protocol)\.(_[A-Za-z]\w*)", code))
        self.assertEqual(used - listed - _OWN_NAMES, set())

    @only_where_verified
    def test_listed_names_exist_in_the_installed_versions(self):
        """
        The installed Autobahn and Twisted, inside the verified range, have
        every listed name where fastpath reads it.
        """
        loop = MemoryReactorClock()
        self.addCleanup(setattr, txaio.config, "loop", txaio.config.loop)
        txaio.config.loop = loop
        protocol = _connect(SignalingFactory(Hub(clock=loop), NativeSession))[0]
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        transport = tcp.Server(
            ours, Protocol(), ("127.0.0.1", 40000), None, 1, MemoryReactor()
        )
        handshake_source = inspect.getsource(autobahn_protocol.WebSocketServerProtocol)
        epoll_reactor = EPollReactor()
        self.addCleanup(epoll_reactor._poller.close)
        for name in fastpath.PRIVATE_NAMES:
            owner, _, attribute = name.rpartition(".")
            if owner == "transport":
                self.assertTrue(hasattr(transport, attribute), name)
            elif owner == "factory":
                self.assertTrue(hasattr(protocol.factory, attribute), name)
            elif owner == "_file":
                self.assertTrue(hasattr(twisted_file, attribute), name)
            elif owner == "_format":
                self.assertTrue(hasattr(twisted_format, attribute), name)
            elif owner == "reactor":
                self.assertTrue(hasattr(epoll_reactor, attribute), name)
            elif owner == "Port":
                self.assertTrue(hasattr(tcp.Port, attribute), name)
            elif owner == "FileLogObserver":
                self.assertIn(attribute, vars(twisted_file.FileLogObserver), name)
            elif owner == "observer":
                observer = twisted_file.FileLogObserver(io.StringIO(), str)
                self.assertTrue(hasattr(observer, attribute), name)
            elif attribute in ("_getLogPrefix", "_addressType"):
                # LeanServer's own, from tcp.Server.
                self.assertTrue(hasattr(tcp.Server, attribute), name)
            elif attribute in (
                "create_xor_masker",
                "pformat",
                "hltype",
                "hlval",
                "_url_to_origin",
                "_is_same_origin",
            ):
                self.assertTrue(hasattr(autobahn_protocol, attribute), name)
            elif attribute in fastpath._HANDSHAKE_LEFTOVERS:
                # Gone once open (slim): the server's handshake sets them.
                self.assertRegex(
                    handshake_source, rf"self\.{attribute}\b[^=\n]*= ", name
                )
            else:
                self.assertTrue(hasattr(protocol, attribute), name)


#: Private names of fastpath's own classes (not Autobahn's or Twisted's).
_OWN_NAMES = {
    "_whole_text_frames",
    # SlicedPoll's own steps
    "_handle",
    "_start_backlog",
    "_next_slice",
    "_end_backlog",
    "_limit_accepts",
    "_common_upgrade",
    "_as_autobahns",
    "_refused",
    "_accept",
    "_queues",
}


def _connect(factory) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"GET /signal HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    transport.clear()
    return protocol, transport


class LoggerTests(SynchronousTestCase):
    def test_events_are_twisteds(self):
        """
        Our logger's events carry what Twisted's logger puts in them; an
        invalid level is Twisted's error, as before.
        """
        events: list[dict] = []
        ours = Logger(namespace="n", source=self, observer=events.append)
        theirs = twisted_logger.Logger(
            namespace="n", source=self, observer=events.append
        )
        for logger in (ours, theirs):
            logger.info("{a} and {b}", a=1, b="two")
        mine, twisteds = events
        self.assertLessEqual(abs(mine.pop("log_time") - twisteds.pop("log_time")), 1)
        self.assertIs(mine.pop("log_logger"), ours)
        self.assertIs(twisteds.pop("log_logger"), theirs)
        self.assertEqual(mine, twisteds)
        events.clear()
        ours.emit("not a level", "x")
        [failure] = events
        self.assertIn("invalid log level", failure["log_format"])
        self.flushLoggedErrors()


@skipUnless(VERIFIED, "the fast paths are off for the installed versions")
class LogTimeTests(SynchronousTestCase):
    def test_log_lines_are_as_twisteds(self):
        """
        With the fast paths on, twistd's text log shows the same time for
        each line as Twisted formats it, across seconds and time formats;
        off, Twisted's own function is back.
        """
        self.addCleanup(fastpath.install)
        fastpath.install()
        formatted = twisted_file.formatTime
        self.assertIsNot(formatted, twisted_logger.formatTime)
        for when in [0.0, 1703894400.0, 1703894400.999, 1703894401.5, 1703894400.2]:
            for time_format in [twisted_logger.timeFormatRFC3339, "%H:%M:%S.%f", None]:
                self.assertEqual(
                    formatted(when, time_format),
                    twisted_logger.formatTime(when, time_format),
                    (when, time_format),
                )
        self.assertEqual(formatted(None), "-")
        fastpath.install(enabled=False)
        self.assertIs(twisted_file.formatTime, twisted_logger.formatTime)

    def test_log_text_is_as_twisteds(self):
        """
        With the fast paths on, an event's text is what Twisted makes of it:
        fields, calls, conversions, nested specs, escaped braces, and the
        same error for what cannot be formatted; off, Twisted's own
        function is back.
        """
        self.addCleanup(fastpath.install)
        fastpath.install()
        formatted = twisted_format.formatWithCall
        self.assertIsNot(formatted, fastpath._format_with_call)
        for text, fields in [
            (
                "{dialect} connection {what}: peer {peer}",
                dict(dialect="topic", what="opened", peer="p"),
            ),
            ("{s}, {f()}.", dict(s="just", f=lambda: "called")),
            (
                "{a!r} {b:>5} {c.real} {d[k]} {{x}} {e:{w}}",
                dict(a="x", b=3, c=2, d={"k": 1}, e=1, w=4),
            ),
            ("{c.conjugate()} {d[k].real} {f()!r}", dict(c=2, d={"k": 1}, f=list)),
        ]:
            self.assertEqual(
                formatted(text, fields), fastpath._format_with_call(text, fields)
            )
        for text, fields in [("{missing}", {}), ("{}", {}), ("{a:z}", dict(a=1))]:
            with self.assertRaises(Exception) as ours:
                formatted(text, fields)
            with self.assertRaises(Exception) as theirs:
                fastpath._format_with_call(text, fields)
            self.assertEqual(repr(ours.exception), repr(theirs.exception))
        fastpath.install(enabled=False)
        self.assertIs(twisted_format.formatWithCall, fastpath._format_with_call)

    def test_log_line_is_as_twisteds(self):
        """
        With the fast paths on, twistd's text log writes each event's line
        as Twisted writes it: time, namespace and level, the text with its
        new lines indented; an event with a failure, a system of its own,
        flattened fields, a format of bytes or none, or text that cannot be
        formatted, too. Off, Twisted's own function is back.
        """
        self.addCleanup(fastpath.install)
        fastpath.install()
        written = twisted_file.formatEventAsClassicLogText
        self.assertIsNot(written, twisted_logger.formatEventAsClassicLogText)
        failure = Failure(ZeroDivisionError("boom"))
        common = dict(
            log_format="{dialect} connection {what}: peer {peer}",
            log_level=twisted_logger.LogLevel.info,
            log_namespace="signaling.transports.websocket.SignalingProtocol",
            log_time=1703894400.5,
            dialect="topic",
            what="opened",
            peer="p",
        )
        events = [
            common,
            dict(common, log_format="two\nlines {peer}"),
            dict(common, log_format=""),
            dict(common, log_format=None),
            dict(common, log_format=b"bytes {peer}"),
            dict(common, log_format="{missing}"),
            dict(common, log_format="{f()}", f=lambda: "called"),
            dict(common, log_system="a system"),
            dict(common, log_failure=failure),
            dict(common, log_flattened={"peer!:": "flat"}),
            dict(common, log_level=twisted_logger.LogLevel.critical),
            {k: v for k, v in common.items() if k != "log_namespace"},
            {k: v for k, v in common.items() if k != "log_time"},
            {k: v for k, v in common.items() if k != "log_level"},
        ]
        for event in events:
            for time_format in [twisted_logger.timeFormatRFC3339, None]:

                def format_time(when, time_format=time_format):
                    return twisted_logger.formatTime(when, time_format)

                self.assertEqual(
                    written(dict(event), format_time),
                    twisted_logger.formatEventAsClassicLogText(
                        dict(event), format_time
                    ),
                    event,
                )
        self.assertEqual(
            written(dict(common)), twisted_logger.formatEventAsClassicLogText(common)
        )
        fastpath.install(enabled=False)
        self.assertIs(
            twisted_file.formatEventAsClassicLogText,
            twisted_logger.formatEventAsClassicLogText,
        )


@skipUnless(VERIFIED, "the fast paths are off for the installed versions")
class DebugHelperTests(SynchronousTestCase):
    def test_debug_arguments_are_formatted_only_when_debugging(self):
        """
        Autobahn's debug-line helpers format nothing while debug logging is
        off, as before while it is on, and are Autobahn's own again when
        the fast paths are turned off.
        """
        from autobahn import util
        from autobahn.twisted import websocket as autobahn_twisted

        self.addCleanup(fastpath.install)
        self.addCleanup(logs.set_level, "info")
        fastpath.install()
        for module in (autobahn_protocol, autobahn_twisted):
            logs.set_level("info")
            self.assertEqual(module.hltype(SignalingFactory), "")
            self.assertEqual(module.hlval(42), "")
            logs.set_level("debug")
            self.assertEqual(
                module.hltype(SignalingFactory), util.hltype(SignalingFactory)
            )
            self.assertEqual(module.hlval(42), util.hlval(42))
        fastpath.install(enabled=False)
        self.assertIs(autobahn_protocol.hltype, util.hltype)
        self.assertIs(autobahn_twisted.hlval, util.hlval)


@skipUnless(VERIFIED, "the fast paths are off for the installed versions")
class FakeLoopTestCase(SynchronousTestCase):
    """
    Autobahn's timers (through txaio) on a fake clock, C{self.loop}, for
    the length of a test.
    """

    def setUp(self) -> None:
        self.loop = MemoryReactorClock()
        self.addCleanup(setattr, txaio.config, "loop", txaio.config.loop)
        txaio.config.loop = self.loop


class SlimTests(FakeLoopTestCase):
    def test_an_open_connection_drops_its_handshake_and_option_copies(self):
        """
        Once open, a connection keeps neither its opening handshake (the
        request, its headers and query, a token among them, and the
        response) nor its own copies of the factory's options, which its
        class holds; it answers as before.
        """
        factory = SignalingFactory(Hub(clock=self.loop), NativeSession)
        protocol, transport = _connect(factory)
        state = vars(protocol)
        for name in ("http_headers", "http_request_data", "http_response_data"):
            self.assertNotIn(name, state)
        for name in ("maxFramePayloadSize", "failByDrop", "autoPingInterval"):
            self.assertNotIn(name, state)
        self.assertNotIn("send_queue", state)
        for name in ("wasClean", "closedByMe", "localCloseCode", "autoPingPending"):
            self.assertNotIn(name, state)
        self.assertFalse(protocol.wasClean)
        self.assertIsNone(protocol.localCloseCode)
        self.assertEqual(protocol.maxFramePayloadSize, 64 * 1024)
        self.assertFalse(protocol.failByDrop)
        plain = SignalingFactory(
            Hub(clock=self.loop), NativeSession, WebSocketSettings(fast_paths=False)
        )
        before = _connect(plain)[0]
        self.assertLess(sys.getsizeof(state), sys.getsizeof(vars(before)) / 2)
        fastpath.install()
        protocol.dataReceived(_client_frame(b'{"type":"ping"}'))
        self.assertIn(b"pong", transport.value())

    def test_a_connection_set_up_by_autobahn_drops_the_same(self):
        """
        With debug logging on, Autobahn sets a connection up itself (its
        idle state copied onto it); once open it keeps what a connection set
        up on the fast paths keeps, and answers as before.
        """
        factory = SignalingFactory(Hub(clock=self.loop), NativeSession)
        fast = vars(_connect(factory)[0])
        self.addCleanup(logs.set_level, "info")
        logs.set_level("debug")
        protocol, transport = _connect(factory)
        logs.set_level("info")
        state = vars(protocol)
        # (Autobahn makes a UTF-8 validator and transport details for every
        # connection.)
        self.assertEqual(
            sorted(state), sorted([*fast, "utf8validator", "_transport_details"])
        )
        for name in ("maxFramePayloadSize", "wasClean", "http_headers", "data"):
            self.assertNotIn(name, state)
        self.assertEqual(protocol.maxFramePayloadSize, 64 * 1024)
        protocol.dataReceived(_client_frame(b'{"type":"ping"}'))
        self.assertIn(b"pong", transport.value())

    def test_a_client_offering_compression_is_answered(self):
        """
        The options the class holds work as the connection's own did: a
        client offering permessage-deflate (as browsers do) is told 101
        (compression declined) and the connection is open.
        """
        factory = SignalingFactory(Hub(clock=self.loop), NativeSession)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"GET /signal HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 101 "), response)
        self.assertNotIn(b"Sec-WebSocket-Extensions", response)
        self.assertIn(b'"welcome"', response)

    def test_handshake_and_ping_timers_are_reactor_calls(self):
        """
        On the fast paths a connection's timers run on txaio's loop, one
        reactor call per delay: the opening handshake's timeout is gone
        once open, pings go out at their interval, and a client that never
        answers is dropped after the ping timeout; cancelling twice is no
        error.
        """
        factory = SignalingFactory(
            Hub(clock=self.loop),
            NativeSession,
            WebSocketSettings(ping_interval=30, ping_timeout=10),
        )
        self.assertIsInstance(factory._batched_timer, fastpath.QueuedTimer)
        protocol, transport = _connect(factory)
        self.assertEqual(len(self.loop.getDelayedCalls()), 1)
        self.loop.advance(30)
        self.assertEqual(_server_frames(transport.value())[-1][0], 0x9)
        self.loop.advance(10)
        self.assertTrue(transport.disconnecting)
        call = factory._batched_timer.call_later(1, lambda: None)
        call.cancel()
        call.cancel()

    def test_an_option_changed_on_the_connection_stays(self):
        factory = SignalingFactory(Hub(clock=self.loop), NativeSession)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(StringTransport())
        protocol.maxMessagePayloadSize = 10
        fastpath.slim(protocol)
        self.assertEqual(protocol.maxMessagePayloadSize, 10)
        self.assertEqual(protocol.maxFramePayloadSize, 64 * 1024)


class WriteThroughTests(SynchronousTestCase):
    def setUp(self) -> None:
        ours, self.theirs = socket.socketpair()
        ours.setblocking(False)
        self.theirs.settimeout(1)
        self.addCleanup(ours.close)
        self.addCleanup(self.theirs.close)
        self.transport = tcp.Server(
            ours, Protocol(), ("127.0.0.1", 40000), None, 1, MemoryReactor()
        )

    def received(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            data += self.theirs.recv(size - len(data))
        return data

    def test_idle_socket_gets_data_at_once(self):
        """
        With nothing queued, a frame is on the socket before the reactor
        turns.
        """
        fastpath.write_through(self.transport, b"hello")
        self.assertEqual(self.received(5), b"hello")

    def test_what_the_socket_does_not_take_is_queued_in_order(self):
        """
        When the socket's buffer is full the rest is queued, later frames
        queue behind it, and all of it arrives in order once the reactor
        writes.
        """
        big = bytes(range(256)) * 4096  # 1 MiB: more than a socket buffer
        fastpath.write_through(self.transport, big)
        fastpath.write_through(self.transport, b"after")
        expected = big + b"after"
        data = b""
        while len(data) < len(expected):
            self.transport.doWrite()
            data += self.theirs.recv(len(expected) - len(data))
        self.assertEqual(data, expected)

    def test_other_transports_write_as_usual(self):
        """
        A transport that is not a plain TCP connection (TLS, a test double)
        gets an ordinary write.
        """
        written = []

        class Transport:
            def write(self, data: bytes) -> None:
                written.append(data)

        fastpath.write_through(Transport(), b"frame")
        self.assertEqual(written, [b"frame"])


class LeanServerTests(SynchronousTestCase):
    def made(self, kind: type, client=("127.0.0.1", 40000)) -> Any:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)

        class Port:
            _realPortNumber = 8443

        return kind(ours, Protocol(), client, Port(), 7, MemoryReactor())

    def test_reads_as_twisteds(self):
        """
        A connection made as a LeanServer has Twisted's attributes and
        values, but for the log prefix and repr it has not made yet, which
        say what Twisted's say when asked for.
        """
        for client in [("127.0.0.1", 40000), ("::1", 40000, 0, 0)]:
            lean, theirs = (
                self.made(fastpath.LeanServer, client),
                self.made(tcp.Server, client),
            )
            mine = {
                k: v for k, v in vars(lean).items() if k not in ("socket", "fileno")
            }
            others = {
                k: v
                for k, v in vars(theirs).items()
                if k not in ("socket", "fileno", "logstr", "repstr", "reactor")
            }
            mine.pop("reactor")
            self.assertEqual(mine.keys(), others.keys())
            for name in ("client", "sessionno", "hostname", "connected"):
                self.assertEqual(mine[name], others[name], name)
            self.assertEqual(lean.getPeer(), theirs.getPeer())
            self.assertEqual(lean.logPrefix(), theirs.logPrefix())
            self.assertEqual(repr(lean), repr(theirs))
            self.assertNotIn("logstr", vars(lean))

    def test_the_client_address_is_made_once(self):
        """
        The client's address is made once for all who ask in a row, and a
        connection asking after another gets its own, equal to Twisted's.
        """
        first = self.made(fastpath.LeanServer)
        second = self.made(fastpath.LeanServer, ("::1", 40001, 0, 0))
        address = first.getPeer()
        self.assertIs(first.getPeer(), address)
        self.assertEqual(second.getPeer(), IPv6Address("TCP", "::1", 40001))
        again = first.getPeer()
        self.assertEqual(again, IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertIs(first.getPeer(), again)

    def test_peers_are_named_as_autobahn_names_them(self):
        """
        A WebSocket over a LeanServer has the peer name Autobahn gives it.
        """
        factory = SignalingFactory(Hub(clock=MemoryReactorClock()), NativeSession)
        listening = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listening.close)
        client_socket = socket.create_connection(listening.getsockname())
        self.addCleanup(client_socket.close)
        ours = listening.accept()[0]
        self.addCleanup(ours.close)
        for client in [("127.0.0.1", 40000), ("::1", 40000, 0, 0)]:
            transport = fastpath.LeanServer(
                ours, Protocol(), client, None, 7, MemoryReactor()
            )
            protocol = factory.buildProtocol(transport.getPeer())
            protocol.makeConnection(transport)
            self.assertTrue(protocol.holds_options)
            self.assertEqual(protocol.peer, peer2str(transport))
            self.assertEqual(
                protocol.peer.split(":")[0], "tcp4" if len(client) == 2 else "tcp6"
            )

    def test_ports_make_them_while_on(self):
        """
        Listening ports make their connections as LeanServers while the
        fast paths are on, as Twisted's Servers while they are off.
        """
        self.addCleanup(fastpath.install)
        if fastpath.install():
            self.assertIs(tcp.Port.transport, fastpath.LeanServer)
        fastpath.install(enabled=False)
        self.assertIs(tcp.Port.transport, tcp.Server)


class HandshakeOutputTests(FakeLoopTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(fastpath.install)

    def handshake(self, fast_paths: bool, head: bytes) -> bytes:
        """
        What a client reads at once, before any reactor turn, after sending
        C{head} to a native server over a real socket.
        """
        # TCP, not a socketpair: Autobahn sets TCP_NODELAY.
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        theirs = socket.create_connection(listener.getsockname())
        ours = listener.accept()[0]
        ours.setblocking(False)
        theirs.setblocking(False)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        hub = Hub(clock=self.loop, ids=IdSource(counting_random_bytes()))
        settings = WebSocketSettings(ping_interval=0, fast_paths=fast_paths)
        factory = SignalingFactory(hub, NativeSession, settings)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = tcp.Server(
            ours, protocol, ("127.0.0.1", 40000), None, 1, MemoryReactor()
        )
        protocol.makeConnection(transport)
        protocol.dataReceived(head)
        try:
            return theirs.recv(65536)
        except BlockingIOError:
            return b""

    @only_where_verified
    def test_response_and_welcome_leave_at_once(self):
        """
        On the fast paths the 101 response and what the session sends on
        opening are on the socket before the reactor turns (plain Autobahn
        queues them for its next turn), the same bytes as Autobahn sends.
        """
        head = (
            b"GET /signal HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        fast = self.handshake(True, head)
        self.assertTrue(fast.startswith(b"HTTP/1.1 101 "), fast)
        response, _, frames = fast.partition(b"\r\n\r\n")
        self.assertIn(b'"welcome"', _server_frames(frames)[0][1])
        self.assertEqual(self.handshake(False, head), b"")
        wire = [self.answer(fast_paths, head) for fast_paths in (True, False)]
        self.assertEqual(wire[0], wire[1])
        self.assertEqual(wire[0], fast)

    def answer(self, fast_paths: bool, head: bytes) -> bytes:
        """
        What a native server writes for C{head}, on an in-memory transport.
        """
        hub = Hub(clock=self.loop, ids=IdSource(counting_random_bytes()))
        settings = WebSocketSettings(ping_interval=0, fast_paths=fast_paths)
        return _connect_raw(SignalingFactory(hub, NativeSession, settings), head)

    def test_a_refused_handshake_is_answered_as_before(self):
        """
        A handshake Autobahn refuses (a version it does not speak) gets the
        same answer in both modes.
        """
        head = (
            b"GET /signal HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 7\r\n\r\n"
        )
        wire = [self.answer(fast_paths, head) for fast_paths in (True, False)]
        self.assertTrue(wire[0].startswith(b"HTTP/1.1 400 "), wire[0])
        self.assertEqual(wire[0], wire[1])


def _connect_raw(factory, head: bytes) -> bytes:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(head)
    return transport.value()


def _client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    mask = b"\x11\x22\x33\x44"
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    else:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    i = 0
    while i < len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


class WholeFrameTests(FakeLoopTestCase):
    """
    Whole text frames skip Autobahn's frame parser; everything else still
    goes through it, wherever the reads split the stream.
    """

    fast_paths = True

    def setUp(self) -> None:
        if self.fast_paths and not VERIFIED:
            raise SkipTest("the fast paths are off for the installed versions")
        super().setUp()
        self.addCleanup(fastpath.install)
        self.settings = WebSocketSettings(ping_interval=0, fast_paths=self.fast_paths)

    def connect(self) -> tuple[Any, StringTransport]:
        factory = SignalingFactory(Hub(clock=self.loop), NativeSession, self.settings)
        self.assertEqual(factory.fast_paths, self.fast_paths)
        return _connect(factory)

    def replies(self, transport: StringTransport) -> list[tuple[int, Any]]:
        frames = _server_frames(transport.value())
        transport.clear()
        return [
            (opcode, orjson.loads(body) if opcode == 0x1 else body)
            for opcode, body in frames
        ]

    def test_any_split_of_the_stream_gives_the_same_replies(self):
        """
        A join, a ping control frame, a request fragmented in two and a
        request over 125 bytes, cut into two reads at every possible point,
        are answered exactly as when they arrive in one read.
        """
        stream = (
            _client_frame(orjson.dumps({"type": "join", "room": "r"}))
            + _client_frame(b"hello", opcode=0x9)
            + _client_frame(b'{"type":"pi', fin=False)
            + _client_frame(b'ng","id":1}', opcode=0x0)
            + _client_frame(orjson.dumps({"type": "ping", "id": "x" * 200}))
        )
        protocol, transport = self.connect()
        protocol.dataReceived(stream)
        expected = self.replies(transport)
        self.assertEqual(
            [
                (opcode, body["type"] if opcode == 0x1 else body)
                for opcode, body in expected
            ],
            [(0x1, "joined"), (0xA, b"hello"), (0x1, "pong"), (0x1, "pong")],
        )
        for cut in range(1, len(stream)):
            protocol, transport = self.connect()
            protocol.dataReceived(stream[:cut])
            protocol.dataReceived(stream[cut:])
            replies = self.replies(transport)
            self.assertEqual(
                [
                    (o, b)
                    for o, b in replies
                    if not (o == 0x1 and b["type"] == "joined")
                ],
                [
                    (o, b)
                    for o, b in expected
                    if not (o == 0x1 and b["type"] == "joined")
                ],
                f"cut at {cut}",
            )

    def test_frame_over_the_limit_closes_1009(self):
        """
        A whole frame over the size limit is left to Autobahn, which closes
        the connection with 1009.
        """
        self.settings = attrs.evolve(self.settings, max_message_size=100)
        protocol, transport = self.connect()
        protocol.dataReceived(
            _client_frame(orjson.dumps({"type": "ping", "id": "x" * 200}))
        )
        closes = [body for opcode, body in self.replies(transport) if opcode == 0x8]
        self.assertEqual(closes[0][:2], struct.pack("!H", 1009))


@only_where_verified
class ConnectionSetUpTests(FakeLoopTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.factory = SignalingFactory(Hub(clock=self.loop), NativeSession)

    def made(self, holds_options: bool) -> Any:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        if not holds_options:
            # Autobahn's own set-up, on the same class.
            protocol.holds_options = False
        protocol.makeConnection(StringTransport())
        return protocol

    def test_set_up_reads_as_autobahns(self):
        """
        A new connection on the fast paths reads, name by name, as one
        Autobahn set up: the factory's options, the starting state, its
        timers and counters (of the same kinds), with far fewer entries of
        its own.
        """
        fast, plain = self.made(True), self.made(False)
        del plain.holds_options
        for name, theirs in vars(plain).items():
            ours = getattr(fast, name)
            if isinstance(theirs, (type(None), bool, int, float, str, bytes)):
                self.assertEqual(ours, theirs, name)
            elif name == "utf8validator":
                # Made only where incoming UTF-8 is validated frame by frame.
                self.assertFalse(fast.utf8validateIncoming)
                self.assertIsNone(ours)
            elif name == "send_queue":
                self.assertEqual(list(ours), list(theirs), name)
            elif not callable(theirs):
                self.assertIs(type(ours), type(theirs), name)
        self.assertLess(len(vars(fast)), len(vars(plain)) / 2)

    def test_events_are_observed_as_autobahns(self):
        """
        A connection on the fast paths holds no list of events or table of
        results of its own until something listens; then it has its own,
        and the others are untouched.
        """
        listening, other = self.made(True), self.made(True)
        self.assertNotIn("_results", vars(listening))
        heard = []
        listening.on("message", heard.append)
        listening.fire("message", "hello")
        self.assertEqual(heard, ["hello"])
        self.assertIsNotNone(listening._results["message"])
        self.assertIsNone(other._results["message"])
        with self.assertRaises(RuntimeError):
            listening.on("no such event", heard.append)

    def test_transport_details_are_made_when_asked_for(self):
        """
        A connection on the fast paths makes its transport details only when
        asked for, and they say what Autobahn's say; its peer is named as
        Autobahn names it.
        """
        fast, plain = self.made(True), self.made(False)
        self.assertNotIn("_transport_details", vars(fast))
        self.assertEqual(fast.peer, plain.peer)
        ours = fast.transport_details
        self.assertEqual(ours.marshal(), plain.transport_details.marshal())
        self.assertEqual(ours.peer, "tcp4:192.168.1.1:54321")
        self.assertIs(fast.transport_details, ours)

    def test_connections_are_counted_as_autobahn_counts_them(self):
        """
        The factory counts open connections in both set-ups (Autobahn's
        C{maxConnections} reads the count).
        """
        fast, plain = self.made(True), self.made(False)
        self.assertEqual(self.factory.countConnections, 2)
        for protocol in (fast, plain):
            protocol.connectionLost(Failure(ConnectionDone()))
        self.loop.advance(0)
        self.assertEqual(self.factory.countConnections, 0)

    def test_a_handshake_that_never_comes_times_out(self):
        """
        The opening handshake's timeout runs from the fast set-up as from
        Autobahn's: a client that sends nothing is dropped after 10 s.
        """
        fast = self.made(True)
        self.loop.advance(9)
        self.assertFalse(fast.transport.disconnecting)
        self.loop.advance(1)
        self.assertTrue(fast.wasOpenHandshakeTimeout)
        self.assertTrue(fast.transport.disconnecting)

    def test_an_upgrade_answered_at_once_arms_no_timeout(self):
        """
        Handed its upgrade with the connection (as the HTTP channel hands
        it over), a connection answered at once leaves no timer behind;
        one whose handshake waits (a token being checked) still times out
        after 10 s.
        """
        factory = SignalingFactory(
            Hub(clock=self.loop), NativeSession, WebSocketSettings(ping_interval=0)
        )
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        fastpath.open_with(protocol, transport, _COMMON_UPGRADES[0] + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(self.loop.getDelayedCalls(), [])

        class Waiting(NativeSession):
            def prepare(self):
                return Deferred()

        factory = SignalingFactory(Hub(clock=self.loop), Waiting)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        fastpath.open_with(protocol, transport, _COMMON_UPGRADES[0] + b"\r\n")
        self.assertEqual(transport.value(), b"")
        self.loop.advance(9)
        self.assertFalse(transport.disconnecting)
        self.loop.advance(1)
        self.assertTrue(protocol.wasOpenHandshakeTimeout)
        self.assertTrue(transport.disconnecting)

    def test_the_socket_is_set_up_once(self):
        """
        Through the site, a socket's C{TCP_NODELAY} is set once and its
        producer registered once: by the WebSocket for an upgrade handed
        over, by the HTTP channel for any other request; a connection made
        directly sets it up itself.
        """

        @implementer(ITCPTransport)
        class Transport(StringTransportWithDisconnection):
            def setTcpNoDelay(self, enabled: bool) -> None:
                self.no_delay.append(enabled)

        class Page(Resource):
            isLeaf = True

            def render_GET(self, request):
                return b"page"

        routes = UpgradeRoutes()
        routes.add("/signal", self.factory)
        site = GuardedSite(Page(), HTTPLimits(), None, self.loop, upgrades=routes)
        answers = []
        for head in [_COMMON_UPGRADES[0] + b"\r\n", b"GET /page HTTP/1.1\r\n\r\n"]:
            transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
            transport.no_delay = []
            channel = site.buildProtocol(None)
            transport.protocol = channel
            channel.makeConnection(transport)
            channel.dataReceived(head)
            answers.append(transport.value().split(b"\r\n", 1)[0])
            self.assertEqual(transport.no_delay, [True])
            self.assertIs(
                type(transport.producer),
                SendBuffer if head.startswith(b"GET /signal") else GuardedChannel,
            )
        self.assertEqual(
            answers, [b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 200 OK"]
        )
        direct = Transport()
        direct.no_delay = []
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3))
        protocol.makeConnection(direct)
        self.assertEqual(direct.no_delay, [True])

    def test_the_routing_parse_serves_the_handshake(self):
        """
        The parse of the head that the site's routing hands over with it is
        what the handshake takes, not a parse of its own; a parse of other
        bytes is not taken.
        """
        head = _COMMON_UPGRADES[2] + b"\r\n"
        parses = []
        original = fastpath.parse_request_head
        self.patch(
            fastpath,
            "parse_request_head",
            lambda head: parses.append(head) or original(head),
        )
        requests = []

        def connected(port: int):
            protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
            connect = protocol.onConnect
            protocol.onConnect = lambda request: (
                requests.append(request) or connect(request)
            )
            return protocol

        parsed = original(head)
        transport = StringTransport()
        fastpath.open_with(connected(1), transport, head, parsed)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(parses, [])
        self.assertIs(requests[0].headers, parsed.headers)
        self.assertEqual(requests[0].params, {"room": ["a"], "x": ["1", "2"]})
        other = original(_COMMON_UPGRADES[0] + b"\r\n")
        transport = StringTransport()
        fastpath.open_with(connected(2), transport, head, other)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(parses, [head])
        self.assertEqual(requests[1].headers, parsed.headers)
        self.assertEqual(requests[1].path, "/signal")

    def test_debugging_shows_autobahns_option_dump(self):
        """
        With debug logging on, the set-up is Autobahn's, with its dump of
        the options the connection runs with.
        """
        formatted = []
        self.patch(logs, "debugging", lambda: True)
        self.patch(autobahn_protocol, "pformat", formatted.append)
        self.made(True)
        self.assertIn(
            ("maxFramePayloadSize", 64 * 1024),
            [(name, value) for name, value, _ in formatted[0]],
        )


class WholeFrameOnPlainAutobahnTests(WholeFrameTests):
    """
    The same streams with the fast paths off: Autobahn parses every frame.
    """

    fast_paths = False


@only_where_verified
class SameOnTheWireTests(FakeLoopTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(fastpath.install)

    def wire(self, fast_paths: bool, stream: bytes, cut: int) -> bytes:
        hub = Hub(clock=self.loop, ids=IdSource(counting_random_bytes()))
        settings = WebSocketSettings(
            ping_interval=0, max_message_size=300, fast_paths=fast_paths
        )
        protocol, transport = _connect(SignalingFactory(hub, NativeSession, settings))
        protocol.dataReceived(stream[:cut])
        protocol.dataReceived(stream[cut:])
        return transport.value()

    def test_messages_sent_are_framed_as_autobahn_frames_them(self):
        """
        Text messages of every length class (empty, up to 125 bytes, two
        length bytes, over the size limit) and a binary one leave as the
        same bytes in both modes, with the same traffic counts; one over the
        limit is refused in both.
        """
        sent = {}
        for fast_paths in (True, False):
            hub = Hub(clock=self.loop, ids=IdSource(counting_random_bytes()))
            settings = WebSocketSettings(
                ping_interval=0, max_message_size=70_000, fast_paths=fast_paths
            )
            factory = SignalingFactory(hub, NativeSession, settings)
            protocol, transport = _connect(factory)
            for size in (0, 1, 125, 126, 127, 300, 0xFFFF, 66_000):
                protocol.sendMessage(b"x" * size)
            protocol.sendMessage(b"\x00\x01", isBinary=True)
            with self.assertRaises(autobahn_protocol.PayloadExceededError):
                protocol.sendMessage(b"x" * 70_001)
            sent[fast_paths] = (transport.value(), vars(protocol.trafficStats))
        self.assertEqual(sent[True], sent[False])
        frames = _server_frames(sent[True][0])
        self.assertEqual([len(body) for _, body in frames][:3], [0, 1, 125])
        self.assertEqual(frames[-1], (0x2, b"\x00\x01"))

    def test_both_modes_send_the_same_bytes(self):
        """
        With and without the fast paths, a stream of text, control,
        fragmented, binary and oversized frames, in one read or two, gets the
        same bytes back, down to the close frame.
        """
        stream = (
            _client_frame(orjson.dumps({"type": "join", "room": "r"}))
            + _client_frame(orjson.dumps({"type": "ping", "id": "x" * 100}))
            + _client_frame(b"hello", opcode=0x9)
            + _client_frame(b'{"type":"pi', fin=False)
            + _client_frame(b'ng","id":1}', opcode=0x0)
            + _client_frame(b"not json")
            + _client_frame(orjson.dumps({"type": "ping", "id": "x" * 400}))
            + _client_frame(orjson.dumps({"type": "ping", "id": 2}))
        )
        for cut in (len(stream), 3, 40, 200):
            fast = self.wire(True, stream, cut)
            plain = self.wire(False, stream, cut)
            self.assertEqual(fast, plain, f"cut at {cut}")
        closes = [body for opcode, body in _server_frames(fast) if opcode == 0x8]
        self.assertEqual(closes[0][:2], struct.pack("!H", 1009))


class _CountingAutobahnHandshake:
    """
    Counts the handshakes the fast paths hand to Autobahn's own
    C{processHandshake} (it comes after L{fastpath.FastPaths} in the MRO).
    """

    autobahn_handshakes = 0

    def processHandshake(self) -> None:
        _CountingProtocol.autobahn_handshakes += 1
        super().processHandshake()


class _CountingProtocol(
    fastpath.FastPaths, _CountingAutobahnHandshake, SignalingProtocol
):
    pass


_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
_UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
_V13 = b"Sec-WebSocket-Version: 13\r\n"

#: Common valid upgrades, which the fast handshake takes.
_COMMON_UPGRADES = [
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n" + _UPGRADE + _KEY + _V13,
    # node's ws, as bench/loadgen.js sends it
    b"GET /signal HTTP/1.1\r\n" + _V13 + _KEY + b"Connection: Upgrade\r\n"
    b"Upgrade: websocket\r\nHost: 127.0.0.1:9400\r\n",
    # Firefox: more than one token, other cases, other headers
    b"GET /signal?room=a&x=1&x=2&empty= HTTP/1.1\r\nHost: localhost:8080\r\n"
    b"User-Agent: Mozilla/5.0\r\nAccept: */*\r\nUpgrade: WebSocket\r\n"
    b"connection: keep-alive, Upgrade\r\nsec-websocket-key: "
    b"x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version:13\r\n"
    b"Pragma: no-cache\r\nCache-Control: no-cache\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost:8080\r\nOrigin: http://localhost:8080"
    b"\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: [::1]:8080\r\nOrigin: https://example.com\r\n"
    + _UPGRADE
    + _KEY
    + _V13,
    b"GET /signal HTTP/1.1\r\nHost: [::1]\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nSec-WebSocket-Protocol: chat, "
    b"superchat\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost:  localhost \t\r\n" + _UPGRADE + _KEY + _V13,
]

#: Requests the fast handshake leaves to Autobahn: unusual but valid ones
#: (accepted) and invalid ones (refused).
_UNUSUAL_UPGRADES = [
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _KEY
    + b"Sec-WebSocket-Version: 8\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _KEY
    + b"Sec-WebSocket-Version: 7\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _KEY
    + b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _KEY
    + b"Sec-WebSocket-Version: +13\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _V13
    + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _V13
    + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ!==\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n" + _UPGRADE + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n" + _UPGRADE + _KEY + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost:http\r\n" + _UPGRADE + _KEY + _V13,
    b"POST /signal HTTP/1.1\r\nHost: localhost\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.0\r\nHost: localhost\r\n" + _UPGRADE + _KEY + _V13,
    b"GET  /signal HTTP/1.1\r\nHost: localhost\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal#here HTTP/1.1\r\nHost: localhost\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal;x HTTP/1.1\r\nHost: localhost\r\n" + _UPGRADE + _KEY + _V13,
    b"GET //other/signal HTTP/1.1\r\nHost: localhost\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive\r\n" + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n" + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\n"
    b"Connection: Upgrade\r\n" + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _KEY
    + _V13
    + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _KEY
    + _V13
    + b"Sec-WebSocket-Extensions: permessage-deflate; bogus=1\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nOrigin: null\r\n"
    + _UPGRADE
    + _KEY
    + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nOrigin: nothing\r\n"
    + _UPGRADE
    + _KEY
    + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nOrigin: http://a:99999\r\n"
    + _UPGRADE
    + _KEY
    + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nSec-WebSocket-Protocol: a, a\r\n"
    + _UPGRADE
    + _KEY
    + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nnot a header\r\n"
    + _UPGRADE
    + _KEY
    + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\nUser-Agent: caf\xe9\x85\r\n"
    + _UPGRADE
    + _KEY
    + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\nX: y\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n X-Folded: y\r\n"
    + _UPGRADE
    + _KEY
    + _V13,
    b"GET /signal HTTP/1.1\r\nHost : localhost\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n: y\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: local\x01host\r\n" + _UPGRADE + _KEY + _V13,
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _V13
    + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQE=\r\n",
    b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
    + _UPGRADE
    + _V13
    + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ===\r\n",
]


class FastHandshakeTests(FakeLoopTestCase):
    """
    The fast server handshake (L{fastpath.FastPaths.processHandshake}) says
    on the wire exactly what Autobahn's says, for the common upgrades it
    takes and for everything it leaves to Autobahn.
    """

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(fastpath.install)
        self.addCleanup(setattr, _CountingProtocol, "autobahn_handshakes", 0)

    def answer(
        self,
        fast_paths: bool,
        request: bytes,
        settings: WebSocketSettings,
        session: type = NativeSession,
    ) -> tuple[bytes, bool]:
        """
        What a native server writes for C{request} (a head, then a ping
        frame right behind it) and whether it closes the connection.
        """
        hub = Hub(clock=self.loop, ids=IdSource(counting_random_bytes()))
        settings = attrs.evolve(settings, ping_interval=0, fast_paths=fast_paths)
        factory = SignalingFactory(hub, session, settings)
        if fast_paths:
            factory.protocol = fastpath.with_options(_CountingProtocol, factory)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(
            request + b"\r\n" + _client_frame(b'{"type":"ping","id":1}')
        )
        return transport.value(), transport.disconnecting

    def assertSameAnswers(
        self,
        requests: list[bytes],
        settings: WebSocketSettings = WebSocketSettings(),
        session: type = NativeSession,
    ) -> list[bytes]:
        answers = []
        for request in requests:
            plain = self.answer(False, request, settings, session)
            fast = self.answer(True, request, settings, session)
            self.assertEqual(fast, plain, request)
            answers.append(fast[0])
        return answers

    def test_common_upgrades_are_answered_as_autobahn_answers_them(self):
        """
        Common valid upgrades are accepted by the fast handshake, with
        Autobahn's own bytes (the 101 response, the welcome, the answer to
        a message sent right behind the head).
        """
        answers = self.assertSameAnswers(_COMMON_UPGRADES)
        self.assertEqual(_CountingProtocol.autobahn_handshakes, 0)
        for answer in answers:
            self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer)
            frames = _server_frames(answer.partition(b"\r\n\r\n")[2])
            self.assertEqual(
                [orjson.loads(body)["type"] for _, body in frames], ["welcome", "pong"]
            )

    def test_anything_else_is_judged_by_autobahn(self):
        """
        Every request off the common path goes to Autobahn's handshake,
        which accepts or refuses it as before, with the same bytes.
        """
        answers = self.assertSameAnswers(_UNUSUAL_UPGRADES)
        self.assertEqual(_CountingProtocol.autobahn_handshakes, len(_UNUSUAL_UPGRADES))
        statuses = {answer.split(b" ", 2)[1] for answer in answers}
        self.assertEqual(statuses, {b"101", b"200", b"400", b"405", b"505"})

    def test_a_chosen_subprotocol_is_accepted_by_autobahn(self):
        """
        A common upgrade whose subprotocol the session chooses, read by the
        fast handshake, is accepted by Autobahn's own code with what the
        fast one read: the same bytes as Autobahn's handshake alone, the
        subprotocol named.
        """

        class Choosing(NativeSession):
            def prepare(self):
                return "signal.v2"

        requests = [
            b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
            b"Sec-WebSocket-Protocol: signal.v1, signal.v2\r\n" + _UPGRADE + _KEY + _V13
        ]
        [answer] = self.assertSameAnswers(requests, session=Choosing)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer)
        self.assertIn(b"\r\nSec-WebSocket-Protocol: signal.v2\r\n", answer)
        self.assertEqual(_CountingProtocol.autobahn_handshakes, 0)

    def test_the_version_is_the_clients(self):
        """
        A connection open after the fast handshake speaks version 13; one
        Autobahn's handshake read (version 8) keeps the client's version
        when the fast acceptance answers it.
        """
        hub = Hub(clock=self.loop, ids=IdSource(counting_random_bytes()))
        factory = SignalingFactory(
            hub, NativeSession, WebSocketSettings(ping_interval=0)
        )
        versions = []
        for version in (b"13", b"8"):
            protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(
                b"GET /signal HTTP/1.1\r\nHost: localhost\r\n"
                + _UPGRADE
                + _KEY
                + b"Sec-WebSocket-Version: "
                + version
                + b"\r\n\r\n"
            )
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
            versions.append(protocol.websocket_version)
        self.assertEqual(versions, [13, 8])

    def test_refusals_of_onconnect_are_autobahns(self):
        """
        A handshake our origin check refuses is answered 403 by both, and an
        origin Autobahn's own check refuses goes to Autobahn.
        """
        settings = WebSocketSettings(allowed_origins=("https://ok.example",))
        requests = [
            b"GET /signal HTTP/1.1\r\nHost: localhost\r\nOrigin: "
            + origin
            + b"\r\n"
            + _UPGRADE
            + _KEY
            + _V13
            for origin in (b"https://ok.example", b"https://evil.example")
        ]
        ok, evil = self.assertSameAnswers(requests, settings)
        self.assertTrue(ok.startswith(b"HTTP/1.1 101 "), ok)
        self.assertTrue(evil.startswith(b"HTTP/1.1 403 "), evil)
        self.assertEqual(_CountingProtocol.autobahn_handshakes, 0)

    def test_queries_are_read_as_autobahn_reads_them(self):
        """
        The query of a common upgrade is read as C{parse_qs} reads it for
        Autobahn: repeated names, blank and nameless fields, escapes.
        """
        for query in [
            "",
            "key=peerjs&id=a1&token=t1",
            "x=1&x=2&y=&z&=v&&w=a=b",
            "name=caf%C3%A9&plus=a+b&%41=1",
            "room=a;b",
        ]:
            self.assertEqual(fastpath._parse_query(query), parse_qs(query), query)

    def test_debugging_uses_autobahns_handshake(self):
        """
        With debug logging on, Autobahn's handshake runs, with its lines.
        """
        self.patch(logs, "debugging", lambda: True)
        self.answer(True, _COMMON_UPGRADES[0], WebSocketSettings())
        self.assertEqual(_CountingProtocol.autobahn_handshakes, 1)
