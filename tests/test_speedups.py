"""
Tests for the hot-path shortcuts: wsaccel masking, Autobahn's debug
formatting, whole text frames past Autobahn's parser, and writing frames
straight to an idle socket.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson
import txaio
from autobahn.websocket import protocol as autobahn_protocol
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from signaling import logs, speedups
from signaling.dialects.native import NativeSession
from signaling.hub import Hub
from signaling.websocket import SignalingFactory, WebSocketSettings, _write_through


class SpeedupsTests(SynchronousTestCase):
    def test_autobahn_masks_with_wsaccel(self):
        """
        Once installed, Autobahn unmasks frames with wsaccel's masker, which
        gives the same bytes as Autobahn's own.
        """
        from wsaccel.xormask import createXorMasker

        self.assertTrue(speedups.install())
        self.assertIs(autobahn_protocol.create_xor_masker, createXorMasker)
        masked = createXorMasker(b"\x01\x02\x03\x04", 6).process(b"abcdef")
        self.assertEqual(bytes(masked), bytes(b ^ m for b, m in zip(b"abcdef", b"\x01\x02\x03\x04\x01\x02")))

    def test_connection_options_formatted_only_when_debugging(self):
        """
        Autobahn's per-connection dump of its options is formatted only when
        the log level is debug.
        """
        speedups.install()
        self.addCleanup(logs.set_level, "info")
        logs.set_level("info")
        self.assertNotIn("maxFramePayloadSize", autobahn_protocol.pformat([("maxFramePayloadSize", 1)]))
        logs.set_level("debug")
        self.assertIn("maxFramePayloadSize", autobahn_protocol.pformat([("maxFramePayloadSize", 1)]))


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
        _write_through(self.transport, b"hello")
        self.assertEqual(self.received(5), b"hello")

    def test_what_the_socket_does_not_take_is_queued_in_order(self):
        """
        When the socket's buffer is full the rest is queued, later frames
        queue behind it, and all of it arrives in order once the reactor
        writes.
        """
        big = bytes(range(256)) * 4096  # 1 MiB: more than a socket buffer
        _write_through(self.transport, big)
        _write_through(self.transport, b"after")
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

        _write_through(Transport(), b"frame")
        self.assertEqual(written, [b"frame"])


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
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


class WholeFrameTests(SynchronousTestCase):
    """
    Whole text frames skip Autobahn's frame parser; everything else still
    goes through it, wherever the reads split the stream.
    """

    def setUp(self) -> None:
        self.loop = MemoryReactorClock()
        self.addCleanup(setattr, txaio.config, "loop", txaio.config.loop)
        txaio.config.loop = self.loop
        self.settings = WebSocketSettings(ping_interval=0)

    def connect(self) -> tuple[Any, StringTransport]:
        factory = SignalingFactory(Hub(clock=self.loop), NativeSession, self.settings)
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

    def replies(self, transport: StringTransport) -> list[tuple[int, Any]]:
        frames = _server_frames(transport.value())
        transport.clear()
        return [
            (opcode, orjson.loads(body) if opcode == 0x1 else body) for opcode, body in frames
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
            [(opcode, body["type"] if opcode == 0x1 else body) for opcode, body in expected],
            [(0x1, "joined"), (0xA, b"hello"), (0x1, "pong"), (0x1, "pong")],
        )
        for cut in range(1, len(stream)):
            protocol, transport = self.connect()
            protocol.dataReceived(stream[:cut])
            protocol.dataReceived(stream[cut:])
            replies = self.replies(transport)
            self.assertEqual(
                [(o, b) for o, b in replies if not (o == 0x1 and b["type"] == "joined")],
                [(o, b) for o, b in expected if not (o == 0x1 and b["type"] == "joined")],
                f"cut at {cut}",
            )

    def test_frame_over_the_limit_closes_1009(self):
        """
        A whole frame over the size limit is left to Autobahn, which closes
        the connection with 1009.
        """
        self.settings = WebSocketSettings(ping_interval=0, max_message_size=100)
        protocol, transport = self.connect()
        protocol.dataReceived(_client_frame(orjson.dumps({"type": "ping", "id": "x" * 200})))
        closes = [body for opcode, body in self.replies(transport) if opcode == 0x8]
        self.assertEqual(closes[0][:2], struct.pack("!H", 1009))
