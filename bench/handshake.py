"""
A repeatable measure of what taking one peer in costs the server in Python:
CPU per WebSocket handshake and join, and memory per idle peer, for
comparing one step with the next on a machine shared with other work.

N peers of the topic dialect (rooms of 8, or --room-size) connect to the guarded site the
server runs (``GuardedSite`` over the web app, as ``tap.py`` builds them)
through in-memory transports, with the connection log lines going through
twistd's text observer to /dev/null: the channel, the upgrade, Autobahn's
handshake, the dialect and the join. The process's own CPU time per peer is
printed (best of the rounds), and the memory tracemalloc sees held per idle
peer; what it leaves out is the reactor and the system calls, which
``bench/run.py --scenarios connections`` includes.

Run: C{python bench/handshake.py [-n N] [--rounds R] [--dialect
topic|native|peerjs]
[--no-fast-paths]}; C{peerjs} is the PeerJS dialect, each client with its
own id.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import globalLogBeginner, textFileLogObserver

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from signaling.dialects.peerjs import PeerJSRealm  # noqa: E402
from signaling.directory import Directory  # noqa: E402
from signaling.hub import Hub, HubLimits  # noqa: E402
from signaling.ids import IdSource  # noqa: E402
from signaling.resume import ResumeSettings  # noqa: E402
from signaling.transports.site import GuardedSite, HTTPLimits  # noqa: E402
from signaling.transports.websocket import WebSocketSettings  # noqa: E402
from signaling.web import SignalingSite  # noqa: E402


def handshake(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def build(fast_paths: bool, peerjs: bool = False) -> GuardedSite:
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    txaio.config.loop = clock
    hub = Hub(clock=clock, ids=IdSource(os.urandom), limits=HubLimits())
    settings = WebSocketSettings(ping_interval=0, fast_paths=fast_paths)
    app = SignalingSite(
        hub,
        settings,
        directory=Directory(hub),
        resume=ResumeSettings(grace=30),
        **({"peerjs": PeerJSRealm(hub)} if peerjs else {}),
    )
    upgrades = getattr(app, "upgrades", None)
    if upgrades is None:
        # A tree from before the upgrade routes (to compare with).
        return GuardedSite(app.resource(), HTTPLimits(), None, clock)
    return GuardedSite(
        app.resource(),
        HTTPLimits(),
        None,
        clock,
        upgrades=upgrades if fast_paths else None,
    )


def connect(
    site: GuardedSite, path: str, port: int
) -> StringTransportWithDisconnection:
    transport = StringTransportWithDisconnection(
        peerAddress=IPv4Address("TCP", "127.0.0.2", port)
    )
    channel = site.buildProtocol(None)
    transport.protocol = channel
    channel.makeConnection(transport)
    channel.dataReceived(handshake(path))
    if not transport.value().startswith(b"HTTP/1.1 101 "):
        raise RuntimeError(transport.value()[:300])
    transport.clear()
    return transport


def _path(dialect: str, i: int, room_size: int = 8) -> str:
    if dialect == "topic":
        return f"/ws/room{i // room_size}"
    if dialect == "peerjs":
        # Each PeerJS client brings its own id.
        return f"/peerjs/peerjs?key=peerjs&id=bench{i}&token=t{i}"
    return "/signal"


def one_round(
    count: int, dialect: str, fast_paths: bool, room_size: int = 8
) -> tuple[float, float]:
    """
    :return: CPU µs per peer taken in, bytes held per idle peer.
    """
    site = build(fast_paths, peerjs=dialect == "peerjs")
    paths = [_path(dialect, i, room_size) for i in range(count)]
    # One peer first (PeerJS ids must differ from the others').
    connect(site, _path(dialect, -1) if dialect == "peerjs" else paths[0], 1)
    gc.collect()
    gc.disable()
    started = time.process_time()
    transports = [connect(site, path, 2 + i) for i, path in enumerate(paths)]
    cpu = time.process_time() - started
    gc.enable()
    gc.collect()
    tracemalloc.start()
    # What the peers hold, measured apart from the CPU (tracemalloc slows
    # every allocation): a second batch of the same size.
    before = tracemalloc.get_traced_memory()[0]
    # (The same rooms again, of 16 then; PeerJS ids must be new.)
    if dialect == "peerjs":
        paths = [_path(dialect, count + i, room_size) for i in range(count)]
    more = [connect(site, path, 40000 + i) for i, path in enumerate(paths)]
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    for transport in transports + more:
        transport.loseConnection()
    return cpu * 1e6 / count, held / count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dialect", default="topic", choices=["topic", "native", "peerjs"]
    )
    parser.add_argument("--no-fast-paths", action="store_true")
    parser.add_argument(
        "--room-size", type=int, default=8, help="peers per topic room (8)"
    )
    options = parser.parse_args(argv)
    devnull = open(os.devnull, "w")
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(devnull)], redirectStandardIO=False
    )
    rounds = [
        one_round(
            options.n, options.dialect, not options.no_fast_paths, options.room_size
        )
        for _ in range(options.rounds)
    ]
    print(
        json.dumps(
            {
                "dialect": options.dialect,
                "fast_paths": not options.no_fast_paths,
                "peers": options.n,
                "room_size": options.room_size,
                "cpu_us_per_peer": round(min(cpu for cpu, _ in rounds), 1),
                "bytes_per_idle_peer": round(min(held for _, held in rounds)),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
