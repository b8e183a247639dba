"""
A repeatable measure of the relay hot path's Python cost, for comparing one
optimisation step with the next on a machine shared with other work.

Two peers of one server protocol (ours, or the naive relay) are connected
to in-memory transports, and one relays N offers of about 1 KB to the
other: WebSocket frame parsing and unmasking, the dialect, the hub, the
reply frame. The process's own CPU time (not wall time) per message is
printed, so other processes on the machine hardly move it; what it leaves
out is the reactor and the system calls, which the full benchmark
(bench/run.py) includes.

Run: C{python bench/micro.py [--server signaling|reference] [--dialect native|topic|peerjs] [-n N]
[--no-fast-paths] [--relay-time-sample N]}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import struct
import sys
import time
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SDP = ("a=candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host generation 0\r\n" * 16)[
    :1000
]


def client_frame(payload: bytes) -> bytes:
    """
    A masked text frame, as a browser sends it.
    """
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, 0x80 | length)
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def server_frames(data: bytes) -> list[bytes]:
    """
    The payloads of the unmasked frames in C{data}.
    """
    frames = []
    i = 0
    while i < len(data):
        length = data[i + 1] & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append(data[i : i + length])
        i += length
    return frames


def handshake(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Client:
    def __init__(self, factory, path: str) -> None:
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(handshake(path))

    def take(self) -> list[dict]:
        data = self.transport.value()
        self.transport.clear()
        if b"\r\n\r\n" in data and data.startswith(b"HTTP"):
            data = data.split(b"\r\n\r\n", 1)[1]
        return [json.loads(frame) for frame in server_frames(data)]

    def send(self, message: dict) -> None:
        self.protocol.dataReceived(client_frame(json.dumps(message).encode()))


def factory_for(server: str, fast_paths: bool = True, relay_sample: int = 0):
    if server == "signaling":
        from twisted.internet import reactor

        from signaling.dialects.native import NativeSession
        from signaling.hub import Hub, HubLimits
        from signaling.transports.websocket import SignalingFactory, WebSocketSettings

        hub = Hub(clock=reactor, limits=HubLimits(max_peers_per_room=0))
        if relay_sample:
            from signaling.metrics import MetricsService

            # What --metrics-port adds to the relay path: the relay timer.
            MetricsService(reactor, hub, relay_sample=relay_sample)
        sessions = {"native": NativeSession}
        try:
            from signaling.dialects.topic import TopicSession

            sessions["topic"] = TopicSession
        except ImportError:
            pass

        try:
            from signaling.dialects.peerjs import PeerJSRealm, PeerJSSession

            realm = PeerJSRealm(hub)
            sessions["peerjs"] = lambda hub, sink, handshake_info: PeerJSSession(
                hub, sink, handshake_info, realm
            )
        except ImportError:
            pass

        def session_factory(hub, sink, handshake_info):
            if handshake_info.path.startswith("/peerjs/"):
                return sessions["peerjs"](hub, sink, handshake_info)
            if handshake_info.path.startswith("/ws/"):
                return sessions["topic"](hub, sink, handshake_info)
            return sessions["native"](hub, sink, handshake_info)

        settings = WebSocketSettings(ping_interval=0, fast_paths=fast_paths)
        return SignalingFactory(hub, session_factory, settings)
    from autobahn.twisted.websocket import WebSocketServerFactory

    import reference_relay

    factory = WebSocketServerFactory()
    factory.protocol = reference_relay.RelayProtocol
    return factory


def run(
    server: str,
    dialect: str,
    count: int,
    fast_paths: bool = True,
    relay_sample: int = 0,
) -> float:
    factory = factory_for(server, fast_paths, relay_sample)
    if dialect == "native":
        a, b = Client(factory, "/signal"), Client(factory, "/signal")
        a.take()
        b_id = b.take()[0]["peerId"]
        a.send({"type": "join", "room": "r"})
        b.send({"type": "join", "room": "r"})
        message = {
            "type": "offer",
            "room": "r",
            "to": b_id,
            "payload": {"t": 1.5, "sdp": SDP},
        }
    elif dialect == "peerjs":
        url = "/peerjs/peerjs?key=peerjs&token=t&id="
        a, b = Client(factory, url + "a"), Client(factory, url + "b")
        b_id = "b"
        message = {"type": "OFFER", "dst": b_id, "payload": {"t": 1.5, "sdp": SDP}}
    else:
        a, b = Client(factory, "/ws/r"), Client(factory, "/ws/r")
        b_id = b.take()[0]["selfId"]
        message = {
            "type": "offer",
            "to": b_id,
            "payload": {"t": 1.5, "sdp": SDP},
            "msgId": "m",
        }
    a.take()
    b.take()
    # Frames are built (and masked) before the clock starts.
    frames = [client_frame(json.dumps(message).encode()) for _ in range(1000)]
    a.protocol.dataReceived(frames[0])
    delivered = b.take()
    assert delivered and delivered[0]["type"] in ("offer", "OFFER"), delivered
    gc.collect()
    started = time.process_time()
    for i in range(count):
        a.protocol.dataReceived(frames[i % 1000])
        if i % 100 == 99:
            b.transport.clear()
    elapsed = time.process_time() - started
    return elapsed * 1e6 / count


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="signaling")
    parser.add_argument("--dialect", default="native")
    parser.add_argument("-n", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--no-fast-paths",
        dest="fast_paths",
        action="store_false",
        help="measure our server on plain Autobahn (signaling/fastpath.py off)",
    )
    parser.add_argument(
        "--relay-time-sample",
        type=int,
        default=0,
        help="time one relay in this many, as --metrics-port does (default: 0, none)",
    )
    options = parser.parse_args(argv)
    results = [
        run(
            options.server,
            options.dialect,
            options.n,
            options.fast_paths,
            options.relay_time_sample,
        )
        for _ in range(options.rounds)
    ]
    print(
        json.dumps(
            {
                "server": options.server,
                "dialect": options.dialect,
                "fast_paths": options.fast_paths,
                "relay_time_sample": options.relay_time_sample,
                "us_per_msg_min": round(min(results), 2),
                "us_per_msg_median": round(sorted(results)[len(results) // 2], 2),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
