"""
The Python client (signaling.client) and the aiortc example against
C{twistd -n signaling}, each in a process of its own: Autobahn picks its
async framework per process, and these run on asyncio while the tests run
on Twisted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from .realsockets import ROOT, TwistdServer, twistd_servers

FLOWS = Path(__file__).resolve().parent / "python_client_flows.py"
AUTH_SECRET = "the Python client's test secret, long enough for HS256"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--resume-grace",
        "5",
    )
    server.start(tmp_path_factory.mktemp("python-client") / "twistd.log")
    yield server
    server.stop()


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_python_client_with_a_token(tmp_path):
    """
    On a server with --auth required, the client's token (a function, asked
    again for every connection) makes it a verified peer, and it resumes
    its verified session after its connection is aborted.
    """
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--resume-grace",
        "5",
        "--auth",
        "required",
        "--jwt-secret",
        AUTH_SECRET,
    )
    server.start(tmp_path / "twistd.log")
    try:
        token = jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 600},
            AUTH_SECRET,
            algorithm="HS256",
        )
        result = run(str(FLOWS), server.urls[0], "auth", env={"TOKEN": token})
        assert result.returncode == 0, (
            result.stdout + result.stderr + server.log()[-3000:]
        )
        assert result.stdout.strip().endswith("ok auth")
    finally:
        server.stop()


@pytest.mark.parametrize("flow", ["backoff", "resume", "heartbeat"])
def test_python_client(server, flow):
    """
    The client backs off as documented (its delays, then state closed
    after max_tries), and resumes after its TCP connection is aborted with
    the same peer id and every message exactly once, the other peer seeing
    no leave; and when its socket goes silent, its unanswered ping makes it
    resume the same way.
    """
    result = run(str(FLOWS), server.urls[0], flow)
    assert result.returncode == 0, result.stdout + result.stderr + server.log()[-3000:]
    assert result.stdout.strip().endswith(f"ok {flow}")


@pytest.fixture
def twistd(tmp_path):
    yield from twistd_servers(tmp_path)


def test_python_client_follows_reconnect(twistd):
    """
    SIGTERM to one of two servers: the client is told to reconnect, waits
    the server's hint with jitter, and comes back to the next URL of its
    list, rejoining its room there; the drained server exits.
    """
    draining, other = (
        twistd("--port", "tcp:0:interface=127.0.0.1", "--ping-interval", "0")
        for _ in range(2)
    )
    result = run(
        str(FLOWS),
        f"{draining.urls[0]},{other.urls[0]}",
        "drain",
        env={"DRAIN_PID": str(draining.process.pid)},
    )
    assert result.returncode == 0, (
        result.stdout + result.stderr + draining.log()[-3000:]
    )
    assert result.stdout.strip().endswith("ok drain")
    assert draining.process.wait(10) is not None
    assert "told 1 peers the server is going away" in draining.log()


def test_aiortc_example(server):
    """
    examples/aiortc_datachannel.py: two aiortc peers meet through the
    server and a message crosses a real data channel, and its echo back.
    """
    # Loopback only: the test's traffic stays on 127.0.0.1.
    result = run(
        "examples/aiortc_datachannel.py",
        server.urls[0],
        "--timeout",
        "20",
        "--loopback",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "callee received over the data channel: hello over WebRTC",
        "caller received over the data channel: echo: hello over WebRTC",
    ]
