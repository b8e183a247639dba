"""
The JavaScript client (signaling/static/signaling-client.js) in Node,
fetched from a running C{twistd -n signaling} at its served URL and driven
by tests/node/client-flows.mjs with the npm C{ws} package as its WebSocket:
its backoff on a fake clock, a resume through a connection cut by a TCP
proxy or gone silent there, and the directory operations.
"""

from __future__ import annotations

import os
import subprocess
import time

import jwt
import pytest

from .realsockets import NODE_DIR, TwistdServer, node_with_packages, twistd_servers

AUTH_SECRET = "the JavaScript client's test secret, long enough for HS256"


@pytest.fixture(scope="module")
def node():
    """
    The node binary, with tests/node's ws installed.
    """
    return node_with_packages("the JavaScript client's tests")


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
    server.start(tmp_path_factory.mktemp("js-client") / "twistd.log")
    server.http_url = server.urls[0].replace("ws://", "http://").rsplit("/", 1)[0]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
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
    server.start(tmp_path_factory.mktemp("js-client-auth") / "twistd.log")
    server.http_url = server.urls[0].replace("ws://", "http://").rsplit("/", 1)[0]
    yield server
    server.stop()


def test_javascript_client_with_a_token(node, auth_server):
    """
    On a server with --auth required, the client's token (a function, asked
    again for every connection) makes it a verified peer, and it resumes
    its verified session after a cut.
    """
    token = jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 600}, AUTH_SECRET, algorithm="HS256"
    )
    result = subprocess.run(
        [node, str(NODE_DIR / "client-flows.mjs"), auth_server.http_url, "auth"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOKEN": token},
    )
    assert result.returncode == 0, (
        result.stdout + result.stderr + auth_server.log()[-3000:]
    )
    assert result.stdout.strip().endswith("ok auth")


@pytest.mark.parametrize("flow", ["backoff", "resume", "heartbeat", "directory"])
def test_javascript_client(node, server, flow):
    """
    The served client backs off as documented (delays on a fake clock, a
    state of closed after maxTries), resumes after its connection is cut
    with the same peer id and every message exactly once while the other
    peer sees no leave, resumes the same way when its socket goes silent
    (its heartbeat unanswered), and keeps a directory registration across
    a cut.
    """
    result = subprocess.run(
        [node, str(NODE_DIR / "client-flows.mjs"), server.http_url, flow],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr + server.log()[-3000:]
    assert result.stdout.strip().endswith(f"ok {flow}")


@pytest.fixture
def twistd(tmp_path):
    yield from twistd_servers(tmp_path)


def test_javascript_client_follows_reconnect(node, twistd):
    """
    SIGTERM to one of two servers: the served client is told to reconnect,
    waits the server's hint with jitter, and comes back to the next URL of
    its list, rejoining its room there; a URL that refuses is passed over.
    """
    draining, other = (
        twistd("--port", "tcp:0:interface=127.0.0.1", "--ping-interval", "0")
        for _ in range(2)
    )
    result = subprocess.run(
        [
            node,
            str(NODE_DIR / "client-flows.mjs"),
            draining.urls[0].replace("ws://", "http://").rsplit("/", 1)[0],
            "drain",
        ],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DRAIN_PID": str(draining.process.pid),
            "SECOND_WS_URL": other.urls[0],
        },
    )
    assert result.returncode == 0, (
        result.stdout + result.stderr + draining.log()[-3000:]
    )
    assert result.stdout.strip().endswith("ok drain")
    assert draining.process.wait(10) is not None
