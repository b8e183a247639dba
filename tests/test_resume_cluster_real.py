"""
Session resume across nodes: a native peer whose socket dies on one node
resumes on another (two C{twistd --redis} nodes sharing a real
C{redis-server}, and C{twistd --workers 2}), keeping its id, its rooms and
the messages sent to it meanwhile; all processes are stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest
import websocket

from .test_cluster_real import Cluster, room_sizes, wait_for
from .test_workers_real import node_of, start_workers

TIMEOUT = 10
GRACE = 1.0


class Client:
    """
    A native client that keeps the C{seq} of what it receives.
    """

    def __init__(
        self, base: str, token: str | None = None, last: int | None = None
    ) -> None:
        url = f"{base}/signal"
        if token is not None:
            url += f"?resume={token}" + ("" if last is None else f"&last={last}")
        self.ws = websocket.create_connection(url, timeout=TIMEOUT)
        self.welcome = self.next()
        assert self.welcome["type"] == "welcome"
        self.id = self.welcome["peerId"]
        self.token = self.welcome["resumeToken"]
        self.last = 0

    def send(self, message) -> None:
        self.ws.send(json.dumps(message))

    def next(self):
        message = json.loads(self.ws.recv())
        self.last = message.get("seq", getattr(self, "last", 0))
        return message

    def join(self, room: str) -> dict:
        self.send({"type": "join", "room": room})
        joined = self.next()
        assert joined["type"] == "joined"
        return joined

    def message(self, room: str, to: str | None, text: str) -> None:
        body = {"type": "message", "room": room, "payload": text}
        if to is not None:
            body["to"] = to
        self.send(body)

    def received(self, count: int) -> list[tuple[str, str, int]]:
        """
        The next C{count} messages as (payload, sender, seq).
        """
        out = []
        for _ in range(count):
            message = self.next()
            assert message["type"] == "message", message
            out.append((message["payload"], message["from"], message["seq"]))
        return out

    def quiet(self, seconds: float = 0.3) -> None:
        """
        Nothing (no peer-left, no peer-joined) arrives for C{seconds}.
        """
        self.ws.settimeout(seconds)
        try:
            with pytest.raises(websocket.WebSocketTimeoutException):
                message = self.ws.recv()
                raise AssertionError(f"unexpected {message}")
        finally:
            self.ws.settimeout(TIMEOUT)

    def lose(self) -> None:
        """
        End the TCP connection with no close frame, as when Wi-Fi blinks.
        """
        self.ws.sock.shutdown(socket.SHUT_RDWR)
        self.ws.sock.close()

    def close_code(self) -> int | None:
        """
        The code of the close frame the server sends next.
        """
        opcode, frame = self.ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        return int.from_bytes(frame.data[:2], "big")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        tmp_path_factory.mktemp("resume-cluster"), "--resume-grace", str(GRACE)
    )
    try:
        yield cluster.start(2)
    finally:
        cluster.stop()


def in_room(nodes, room: str, clients) -> None:
    """
    The clients join C{room} one after the other; each is then told of
    every other once, in its join's list or in a C{peer-joined}, and has
    read those notices.
    """
    listed = {}
    for count, client in enumerate(clients, 1):
        listed[client.id] = {peer["id"] for peer in client.join(room)["peers"]}
        wait_for(
            lambda count=count: all(
                room_sizes(node).get(room, 0) == count for node in nodes
            )
        )
    for client in clients:
        # Those who came after it, and, under --workers, one that came
        # before but whose join reached the client's worker after its own
        # (the room count above is the cluster's, not each worker's view).
        expected = {other.id for other in clients if other is not client}
        expected -= listed[client.id]
        told = set()
        for _ in expected:
            notice = client.next()
            assert notice["type"] == "peer-joined", notice
            told.add(notice["peer"]["id"])
        assert told == expected


def test_resume_on_another_node(cluster):
    """
    A peer lost on node 1 resumes on node 2: same id, its room, and what
    peers of both nodes sent it meanwhile, in order and once; afterwards
    peers of both nodes reach it, and nobody saw it leave or join.
    """
    node1, node2 = cluster.nodes
    alice, bob, carol = Client(node1.base), Client(node1.base), Client(node2.base)
    in_room(cluster.nodes, "r", [alice, carol, bob])
    alice.message("r", bob.id, "before")
    assert bob.received(1) == [("before", alice.id, 1)]

    bob.lose()
    time.sleep(0.2)
    alice.message("r", bob.id, "a1")
    time.sleep(0.1)
    carol.message("r", bob.id, "c1")
    time.sleep(0.1)
    alice.message("r", None, "a2")
    assert carol.received(1)[0][:2] == ("a2", alice.id)
    time.sleep(0.2)

    back = Client(node2.base, bob.token, last=bob.last)
    assert (back.id, back.welcome["resumed"], back.welcome["rooms"]) == (
        bob.id,
        True,
        ["r"],
    )
    assert back.token != bob.token
    assert back.received(3) == [
        ("a1", alice.id, 2),
        ("c1", carol.id, 3),
        ("a2", alice.id, 4),
    ]
    alice.message("r", bob.id, "a3")
    carol.message("r", bob.id, "c2")
    got = back.received(2)
    assert sorted(got) == [("a3", alice.id, 5), ("c2", carol.id, 6)] or sorted(got) == [
        ("a3", alice.id, 6),
        ("c2", carol.id, 5),
    ]
    back.message("r", None, "hello")
    assert alice.received(1)[0][:2] == ("hello", bob.id)
    assert carol.received(1)[0][:2] == ("hello", bob.id)
    assert all(room_sizes(node)["r"] == 3 for node in cluster.nodes)
    for client in (alice, carol, back):
        client.quiet()

    # A takeover from node 1 of the session now on node 2: the socket on
    # node 2 is closed with 4000.
    again = Client(node1.base, back.token, last=back.last)
    assert (again.id, again.welcome["resumed"]) == (bob.id, True)
    assert back.close_code() == 4000
    carol.message("r", bob.id, "c3")
    assert again.received(1)[0][:2] == ("c3", carol.id)

    # The used token gets a fresh session, on either node.
    replayed = Client(node2.base, bob.token)
    assert replayed.welcome["resumed"] is False and replayed.id != bob.id
    replayed.ws.close()

    # Past the grace the token is dead on every node, and the peer left.
    token = again.token
    again.lose()
    assert alice.next()["type"] == "peer-left"
    assert carol.next()["type"] == "peer-left"
    late = Client(node2.base, token)
    assert late.welcome["resumed"] is False and late.id != bob.id
    for client in (alice, carol, late):
        client.ws.close()
    for node in cluster.nodes:
        assert "Traceback" not in node.log()


def test_resume_on_another_worker(tmp_path):
    """
    Under C{--workers 2} a peer resumes on whichever worker takes the new
    socket: after a few resumes it has moved from one worker to the other,
    and every message sent meanwhile arrived once, in order.
    """
    server = start_workers(tmp_path / "twistd.log")
    try:
        alice, bob = Client(server.base), Client(server.base)
        in_room([server], "w", [alice, bob])
        nodes = {node_of(server, bob.id)}
        # Bob's seq so far: a peer-joined, if Alice's join reached his
        # worker after his own.
        first = bob.last
        sent = 0
        for _ in range(20):
            bob.lose()
            time.sleep(0.1)
            sent += 1
            alice.message("w", bob.id, f"m{sent}")
            time.sleep(0.1)
            back = Client(server.base, bob.token, last=bob.last)
            assert (back.id, back.welcome["resumed"]) == (bob.id, True)
            assert back.received(1) == [(f"m{sent}", alice.id, first + sent)]
            back.last = first + sent
            bob = back
            nodes.add(node_of(server, bob.id))
            if len(nodes) == 2:
                break
        assert len(nodes) == 2, "every resume landed on the same worker"
        bob.message("w", alice.id, "back")
        assert alice.received(1)[0][:2] == ("back", bob.id)
        alice.quiet(0.2)
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_a_draining_node_hands_its_sessions_over(tmp_path):
    """
    SIGTERM to node 1: its peers are told to reconnect, and their sessions
    wait there for them, kept frames and all. Bob resumes on node 2 with
    his id, his room and what was sent to him meanwhile; Alice, on node 2,
    sees him neither leave nor join. Dave never comes back: his session
    ends after its handover grace and he leaves. Node 1 then stops, its
    drain done before its timeout.
    """
    cluster = Cluster(tmp_path, "--drain-timeout", "20")
    try:
        node1, node2 = cluster.start(2).nodes
        alice, dave, bob = Client(node2.base), Client(node1.base), Client(node1.base)
        in_room(cluster.nodes, "h", [alice, dave, bob])
        alice.message("h", bob.id, "before")
        assert bob.received(1) == [("before", alice.id, 1)]

        os.kill(node1.process.pid, signal.SIGTERM)
        for client in (bob, dave):
            assert client.next() == {
                "type": "reconnect",
                "reason": "going-away",
                "delayMs": 1000,
            }
            assert client.close_code() == 1001
        # Bob is away: his session on node 1 keeps what comes for him.
        alice.message("h", bob.id, "while away")
        time.sleep(0.2)
        back = Client(node2.base, bob.token, last=bob.last)
        assert (back.id, back.welcome["resumed"], back.welcome["rooms"]) == (
            bob.id,
            True,
            ["h"],
        )
        assert back.received(1) == [("while away", alice.id, 2)]
        back.message("h", alice.id, "back")
        assert alice.received(1)[0][:2] == ("back", bob.id)
        left = alice.next()
        assert (left["type"], left["peer"]["id"]) == ("peer-left", dave.id)
        alice.quiet()
        assert node1.process.wait(20) is not None
        log = node1.log()
        assert "told 2 peers the server is going away" in log
        assert f"{bob.id} resumed on node" in log
        assert re.search(r"drained in \d", log)
        assert "Traceback" not in log + node2.log()
        for client in (alice, back):
            client.ws.close()
    finally:
        cluster.stop()
