"""
The y-webrtc dialect against real twistd processes: raw WebSockets on one
node and across two nodes sharing a real redis-server, and the npm y-webrtc
provider itself, two of them in separate Node processes syncing a Y.Text.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import urllib.error

import pytest
import websocket

from .realsockets import ROOT, TwistdServer, node_with_packages, stop_process
from .test_cluster_real import Cluster, get_json, wait_for
from .test_verified_rooms_real import SECRET, Raw, make_token

PROVIDER_DIR = ROOT / "tests" / "node" / "ywebrtc"
#: Milliseconds a provider waits for the other's text before it gives up.
PROVIDER_TIMEOUT = 30000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--max-message-size",
        "4096",
        "--y-webrtc-any-path",
        "--y-webrtc-max-topics",
        "2",
    )
    server.start(tmp_path_factory.mktemp("ywebrtc") / "twistd.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("ywebrtccluster"))
    try:
        yield cluster.start(2)
    finally:
        cluster.stop()


def subscribed(url: str, *topics: str) -> Raw:
    client = Raw(url)
    client.send({"type": "subscribe", "topics": list(topics)})
    return client


def publish(client: Raw, topic: str, data) -> None:
    client.send({"type": "publish", "topic": topic, "data": data})


def announce(peer: str) -> dict:
    return {"type": "announce", "from": peer}


# one node, raw WebSockets


def test_announce_echo_and_clients(server):
    """
    A newcomer's announce reaches the subscribers and comes back to the
    newcomer, with C{clients}; one who subscribes later does not get it.
    """
    url = server.base + "/y-webrtc"
    alice = subscribed(url, "doc-1")
    bob = subscribed(url, "doc-1")
    publish(bob, "doc-1", announce("bob"))
    expected = {
        "type": "publish",
        "topic": "doc-1",
        "data": announce("bob"),
        "clients": 2,
    }
    assert alice.next() == expected
    assert bob.next() == expected
    carol = subscribed(url, "doc-1")
    carol.send({"type": "ping"})
    assert carol.next() == {"type": "pong"}
    alice.send({"type": "unsubscribe", "topics": ["doc-1"]})
    alice.send({"type": "ping"})
    assert alice.next() == {"type": "pong"}
    publish(carol, "doc-1", "opaque")
    assert bob.next()["clients"] == 2
    for client in (alice, bob, carol):
        client.close()


def test_bad_input(server):
    """
    Invalid JSON (which crashes the original) and too many topics are
    answered with errors on an open connection; a frame over the size
    limit closes it with 1009.
    """
    client = subscribed(server.base + "/y-webrtc", "a", "b", "c")
    error = client.next()
    assert (error["code"], error["topics"]) == ("too-many-topics", ["c"])
    client.ws.send("{oops")
    assert client.next()["code"] == "invalid-json"
    publish(client, "a", "x" * 5000)
    assert client.next()["code"] == "too-large"
    opcode, frame = client.ws.recv_data(control_frame=True)
    assert (opcode, int.from_bytes(frame[:2], "big")) == (
        websocket.ABNF.OPCODE_CLOSE,
        1009,
    )
    client.close()


def test_any_path(server):
    """
    With --y-webrtc-any-path, a provider whose URL has any path no other
    route takes reaches the same topics.
    """
    alice = subscribed(server.base + "/", "any-1")
    bob = subscribed(server.base + "/some/app", "any-1")
    publish(alice, "any-1", announce("alice"))
    assert bob.next()["data"] == announce("alice")
    alice.close()
    bob.close()


def test_auth_required(tmp_path):
    """
    Under --auth required a provider without a token is refused; one with
    ?token= in its signaling URL subscribes, and a token's room grants
    bound its topics.
    """
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--auth",
        "required",
        "--jwt-secret",
        SECRET,
        env={"JWT_SECRET": ""},
    )
    server.start(tmp_path / "twistd.log")
    base = server.urls[0].rsplit("/", 1)[0]
    try:
        with pytest.raises(websocket.WebSocketBadStatusException):
            Raw(base + "/y-webrtc")
        token = make_token("alice", rooms=["doc-*"])
        client = subscribed(f"{base}/y-webrtc?token={token}", "doc-1", "other")
        error = client.next()
        assert (error["code"], error["topics"]) == ("forbidden", ["other"])
        publish(client, "doc-1", announce("alice"))
        assert client.next()["clients"] == 1
        client.close()
    finally:
        server.stop()


# two nodes


def test_publish_across_nodes(cluster):
    """
    Subscribers of a topic on two nodes hear each other's publishes, and
    C{clients} counts both.
    """
    node1, node2 = cluster.nodes
    alice = subscribed(node1.base + "/y-webrtc", "x-1")
    bob = subscribed(node2.base + "/y-webrtc", "x-1")
    deadline = time.monotonic() + 10
    while True:
        publish(bob, "x-1", announce("bob"))
        if bob.next()["clients"] == 2:
            break
        assert time.monotonic() < deadline, "node2 never saw alice subscribe"
        time.sleep(0.05)
    assert alice.next() == {
        "type": "publish",
        "topic": "x-1",
        "data": announce("bob"),
        "clients": 2,
    }
    publish(alice, "x-1", "sealed")
    assert bob.next()["data"] == "sealed"
    alice.close()
    bob.close()


def heard_announce(client: Raw, peer: str, seconds: float = 5) -> bool:
    """
    Whether C{client} is sent C{peer}'s announce within C{seconds}.
    """
    client.ws.settimeout(seconds)
    try:
        while True:
            message = client.next()
            if message.get("data") == announce(peer):
                return True
    except websocket.WebSocketTimeoutException:
        return False


def burst(client: Raw, topic: str, peer: str) -> None:
    """
    Subscribe and announce in one write, as fast as a client can.
    """
    frames = [
        {"type": "subscribe", "topics": [topic]},
        {"type": "publish", "topic": topic, "data": announce(peer)},
    ]
    client.ws.sock.sendall(
        b"".join(
            websocket.ABNF.create_frame(
                json.dumps(frame), websocket.ABNF.OPCODE_TEXT
            ).format()
            for frame in frames
        )
    )


def test_subscribers_on_two_nodes_find_each_other(cluster):
    """
    Alice subscribes and announces herself on node1, and Bob at once on
    node2, each before either node knows of the other's subscription (so
    neither announce reaches the other at first): one of them is still
    sent the other's announce.
    """
    node1, node2 = cluster.nodes
    for round in range(5):
        topic = f"race-{round}"
        alice = Raw(node1.base + "/y-webrtc")
        bob = Raw(node2.base + "/y-webrtc")
        burst(alice, topic, "alice")
        burst(bob, topic, "bob")
        assert heard_announce(alice, "bob") or heard_announce(bob, "alice", 0.5)
        alice.close()
        bob.close()


def test_late_subscriber_on_other_node_is_found(cluster):
    """
    Bob subscribes and announces himself on node2 just after Alice's
    announce passed on node1: one of them hears the other's announce.
    """
    node1, node2 = cluster.nodes
    for round in range(5):
        topic = f"late-{round}"
        alice = subscribed(node1.base + "/y-webrtc", topic)
        publish(alice, topic, announce("alice"))
        assert alice.next()["clients"] == 1
        bob = subscribed(node2.base + "/y-webrtc", topic)
        publish(bob, topic, announce("bob"))
        assert bob.next()["data"] == announce("bob")
        assert heard_announce(alice, "bob") or heard_announce(bob, "alice")
        alice.close()
        bob.close()


# the npm y-webrtc provider


class Provider:
    """
    One y-webrtc provider in its own Node process (tests/node/ywebrtc/).
    """

    def __init__(self, node: str, url: str, room: str, name: str, *args: str):
        self.process = subprocess.Popen(
            [node, "provider.mjs", url, room, name, *args],
            cwd=PROVIDER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "TIMEOUT": str(PROVIDER_TIMEOUT)},
        )

    def result(self) -> dict:
        """
        The line the provider prints once synced (or timed out).
        """
        ready, _, _ = select.select(
            [self.process.stdout], [], [], PROVIDER_TIMEOUT / 1000 + 10
        )
        line = self.process.stdout.readline() if ready else b""
        if not line:
            stop_process(self.process)
            raise AssertionError(
                "the provider printed nothing:\n"
                + self.process.stderr.read().decode(errors="replace")
            )
        return json.loads(line)

    def end(self) -> int:
        """
        Close its stdin, which it exits on; return its exit status.
        """
        self.process.stdin.close()
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.process)
            return -1


def room_size(url: str) -> int:
    try:
        return get_json(url)["peer_count"]
    except urllib.error.HTTPError:
        return 0


def sync(node: str, url1: str, url2: str, room: str, *password: str) -> None:
    """
    Two providers in separate processes, each writing its line into one
    Y.Text, both end up with both lines, through the signaling server at
    C{url1} and C{url2}, and exit cleanly.
    """
    providers = [Provider(node, url1, room, "alice", "alice,bob", *password)]
    # Bob starts once Alice has subscribed: two providers that announce
    # themselves at the same instant both call each other, a glare that
    # y-webrtc does not always get out of (with its own server too).
    rooms = url1.replace("ws://", "http://").rsplit("/", 1)[0] + "/api/rooms/"
    wait_for(lambda: room_size(rooms + room) == 1, timeout=10)
    providers.append(Provider(node, url2, room, "bob", "alice,bob", *password))
    try:
        results = [provider.result() for provider in providers]
    finally:
        statuses = [provider.end() for provider in providers]
    for result in results:
        assert result.get("timeout") is None, results
        assert result["lines"] == ["alice", "bob"]
        # The server echoes every publish to its sender.
        assert result["published"]
        # A room with a password sends only opaque strings.
        assert result["data"] == (["string"] if password else ["object"])
    assert statuses == [0, 0]


@pytest.fixture(scope="module")
def node():
    return node_with_packages("the y-webrtc provider", PROVIDER_DIR)


def test_providers_sync(node, server):
    url = server.base + "/y-webrtc"
    sync(node, url, url, "provider-plain")


def test_providers_sync_with_password(node, server):
    url = server.base + "/y-webrtc"
    sync(node, url, url, "provider-sealed", "s3cret")


def test_providers_sync_across_nodes(node, cluster):
    node1, node2 = cluster.nodes
    sync(node, node1.base + "/y-webrtc", node2.base + "/y-webrtc", "provider-cluster")
