"""
The JavaScript client (signaling/static/signaling-client.js) in Node,
fetched from a running C{twistd -n signaling} at its served URL and driven
by tests/node/client-flows.mjs with the npm C{ws} package as its WebSocket:
its backoff on a fake clock, a resume through a connection cut by a TCP
proxy or gone silent there, and the directory operations.
"""

from __future__ import annotations

import subprocess

import pytest

from .realsockets import NODE_DIR, TwistdServer, node_with_packages



@pytest.fixture(scope="module")
def node():
    """
    The node binary, with tests/node's ws installed.
    """
    return node_with_packages("the JavaScript client's tests")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TwistdServer(
        "--port", "tcp:0:interface=127.0.0.1", "--ping-interval", "0", "--resume-grace", "5",
    )
    server.start(tmp_path_factory.mktemp("js-client") / "twistd.log")
    server.http_url = server.urls[0].replace("ws://", "http://").rsplit("/", 1)[0]
    yield server
    server.stop()


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
        cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr + server.log()[-3000:]
    assert result.stdout.strip().endswith(f"ok {flow}")
