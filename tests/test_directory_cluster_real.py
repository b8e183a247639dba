"""
The directory dialect across nodes: two real C{twistd} processes sharing one
real C{redis-server}, clients on plain WebSockets.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import socket
import threading
import time

import pytest
import websocket

from signaling.keyproof import challenge_text

from .test_cluster_real import Cluster, wait_for
from .test_directory_real import ed25519_identity
from .test_workers_real import start_workers

TIMEOUT = 5
PROBE = 0.5
OFFER = {"type": "offer", "sdp": "v=0"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        tmp_path_factory.mktemp("dircluster"), "--directory-probe-timeout", str(PROBE)
    )
    try:
        yield cluster.start(2)
    finally:
        cluster.stop()


class User:
    """
    A directory client. websocket-client answers pings only while it
    reads: a reading user reads all the time (in a thread), so that it is
    alive to its node's pings; one that is not reading is silent.
    """

    def __init__(self, node, reading: bool = True) -> None:
        self.ws = websocket.create_connection(f"{node.base}/directory", timeout=TIMEOUT)
        self.received: queue.Queue = queue.Queue()
        self.reading = reading
        if reading:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self.received.put(self.ws.recv())
        except Exception:
            self.received.put(None)

    def send(self, message) -> None:
        self.ws.send(json.dumps(message))

    def next(self):
        if not self.reading:
            return json.loads(self.ws.recv())
        frame = self.received.get(timeout=TIMEOUT)
        assert frame is not None, "the connection closed"
        return json.loads(frame)

    def request(self, message):
        self.send(message)
        return self.next()

    def register(self, user_id: str, key: str):
        return self.request({"type": "register", "userId": user_id, "publicKey": key})

    def register_with_proof(self, user_id: str, private, public: str):
        challenge = self.request(
            {"type": "register", "userId": user_id, "publicKey": public, "proof": True}
        )
        assert challenge["type"] == "challenge", challenge
        signature = base64.b64encode(
            private.sign(challenge_text(user_id, challenge["nonce"]))
        ).decode()
        return self.request(
            {"type": "register-proof", "userId": user_id, "signature": signature}
        )

    def close(self) -> None:
        self.ws.close()


def registered(user_id: str, **extra):
    return {"type": "registered", "success": True, "userId": user_id, **extra}


def test_register_discover_relay_presence_across_nodes(cluster):
    """
    A userId held on one node cannot be taken from the other while its
    holder answers the ping its node sends; discover on the other node
    sees it online with its key; offers reach it by userId with C{from}
    set by the server; a watcher on the other node hears it go offline
    and come back.
    """
    one, two = cluster.nodes
    alice, bob, mallory = User(one), User(two), User(two)
    try:
        assert alice.register("alice", "alice-key") == registered("alice")
        assert bob.register("bob", "bob-key") == registered("bob")
        started = time.monotonic()
        refused = mallory.register("alice", "mallory-key")
        assert (refused["type"], refused["code"]) == ("error", "user-id-in-use"), (
            refused
        )
        assert time.monotonic() - started < 2 * PROBE + 1
        assert bob.request({"type": "discover", "userId": "alice", "watch": True}) == {
            "type": "discover-response",
            "userId": "alice",
            "online": True,
            "publicKey": "alice-key",
        }
        bob.send({"type": "offer", "to": "alice", "offer": OFFER, "from": "forged"})
        assert alice.next() == {
            "type": "offer",
            "from": "bob",
            "to": "alice",
            "offer": OFFER,
        }
        alice.send({"type": "answer", "to": "bob", "answer": {"sdp": "a"}})
        assert bob.next() == {
            "type": "answer",
            "from": "alice",
            "to": "bob",
            "answer": {"sdp": "a"},
        }
        refused = bob.request({"type": "offer", "to": "nobody", "offer": OFFER})
        assert (refused["type"], refused["code"]) == ("error", "user-not-online"), (
            refused
        )
        alice.close()
        assert bob.next() == {"type": "presence", "userId": "alice", "online": False}
        again = User(one)
        assert again.register("alice", "alice-key-2") == registered("alice")
        assert bob.next() == {"type": "presence", "userId": "alice", "online": True}
        again.close()
        assert bob.next() == {"type": "presence", "userId": "alice", "online": False}
    finally:
        for user in (alice, bob, mallory):
            user.close()


def test_a_silent_holder_on_another_node_loses_its_user_id(cluster):
    """
    The holder's node pings it; a holder that does not answer within the
    probe timeout loses the userId to the registration on the other node,
    and hears it was replaced.
    """
    one, two = cluster.nodes
    silent = User(one, reading=False)
    taker = User(two)
    try:
        assert silent.register("dave", "dave-key") == registered("dave")
        started = time.monotonic()
        assert taker.register("dave", "dave-new-key") == registered("dave")
        assert PROBE <= time.monotonic() - started < 2 * PROBE + 1
        assert silent.next()["code"] == "replaced"
        checker = User(one)
        assert checker.request({"type": "discover", "userId": "dave"}) == {
            "type": "discover-response",
            "userId": "dave",
            "online": True,
            "publicKey": "dave-new-key",
        }
        checker.close()
    finally:
        silent.close()
        taker.close()


def test_proven_user_ids_across_nodes(cluster):
    """
    A userId registered with proof on one node cannot be taken without
    proof, or with another key, on the other; proof of its key takes it
    over, and it stays held after its holder left.
    """
    one, two = cluster.nodes
    private, public = ed25519_identity()
    other_private, other_public = ed25519_identity()
    owner, intruder, forger, heir = User(one), User(two), User(two), User(two)
    try:
        assert owner.register_with_proof("erin", private, public) == registered(
            "erin", verified=True
        )
        refused = intruder.register("erin", public)
        assert (refused["type"], refused["code"]) == ("error", "proof-required"), (
            refused
        )
        refused = forger.register_with_proof("erin", other_private, other_public)
        assert (refused["type"], refused["code"]) == ("error", "key-mismatch"), refused
        assert heir.register_with_proof("erin", private, public) == registered(
            "erin", verified=True
        )
        assert owner.next()["code"] == "replaced"
        heir.close()
        checker = User(one)
        assert checker.request({"type": "discover", "userId": "erin"}) == {
            "type": "discover-response",
            "userId": "erin",
            "online": False,
            "publicKey": public,
            "verified": True,
        }
        refused = checker.register("erin", "another-key")
        assert (refused["type"], refused["code"]) == ("error", "proof-required"), (
            refused
        )
        checker.close()
    finally:
        for user in (owner, intruder, forger, heir):
            user.close()


def test_a_killed_node_frees_and_holds_its_user_ids(tmp_path):
    """
    kill -9 of a node: watchers on the other node hear its users go
    offline; an unproven userId is free, a proven one stays held.
    """
    cluster = Cluster(tmp_path, "--directory-probe-timeout", str(PROBE)).start(2)
    one, two = cluster.nodes
    private, public = ed25519_identity()
    watcher = User(one)
    try:
        frank, grace = User(two), User(two)
        assert frank.register("frank", "frank-key") == registered("frank")
        assert grace.register_with_proof("grace", private, public) == registered(
            "grace", verified=True
        )
        for user_id in ("frank", "grace"):
            reply = watcher.request(
                {"type": "discover", "userId": user_id, "watch": True}
            )
            assert reply["online"] is True, reply
        os.kill(two.process.pid, signal.SIGKILL)
        two.process.wait()
        notices = [watcher.next(), watcher.next()]
        assert sorted(notices, key=lambda notice: notice["userId"]) == [
            {"type": "presence", "userId": "frank", "online": False},
            {"type": "presence", "userId": "grace", "online": False},
        ]
        newcomer = User(one)
        assert newcomer.register("frank", "another-key") == registered("frank")
        refused = newcomer.register("grace", "another-key")
        assert (refused["type"], refused["code"]) == ("error", "proof-required"), (
            refused
        )
        newcomer.close()
    finally:
        watcher.close()
        cluster.stop()


def user_node(server, user_id: str) -> str | None:
    """
    The node holding C{user_id}, from the workers' private Redis.
    """
    path = re.search(
        r"joining the cluster at unix://(\S+) as node", server.log()
    ).group(1)
    key = f"signaling:user:{user_id}".encode()
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(path)
        client.sendall(
            b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n$4\r\nnode\r\n" % (len(key), key)
        )
        reply = client.recv(4096)
    return None if reply.startswith(b"$-1") else reply.split(b"\r\n")[1].decode()


def test_user_ids_across_workers(tmp_path):
    """
    With C{--workers 2}, users registered on different workers discover
    each other and exchange offers by userId; the userId of a live user on
    the other worker cannot be taken.
    """
    server = start_workers(
        tmp_path / "twistd.log", "--directory-probe-timeout", str(PROBE)
    )
    users: list[User] = []
    try:
        # Users until both workers hold one (the kernel decides which).
        first = User(server)
        users.append(first)
        assert first.register("u0", "key-0") == registered("u0")
        home = wait_for(lambda: user_node(server, "u0"))
        for index in range(1, 40):
            # A pause lets the other worker, if slower to wake, accept.
            time.sleep(0.05)
            other = User(server)
            users.append(other)
            assert other.register(f"u{index}", "key") == registered(f"u{index}")
            if user_node(server, f"u{index}") != home:
                break
        else:
            raise AssertionError("every user landed on one worker")
        assert other.request({"type": "discover", "userId": "u0"}) == {
            "type": "discover-response",
            "userId": "u0",
            "online": True,
            "publicKey": "key-0",
        }
        other.send({"type": "offer", "to": "u0", "offer": OFFER})
        assert first.next() == {
            "type": "offer",
            "from": f"u{index}",
            "to": "u0",
            "offer": OFFER,
        }
        refused = other.register("u0", "stolen")
        assert (refused["type"], refused["code"]) == ("error", "user-id-in-use"), (
            refused
        )
    finally:
        for user in users:
            user.close()
        server.stop()
