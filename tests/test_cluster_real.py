"""
Rooms across nodes: real C{twistd} processes sharing one real
C{redis-server} (on a unix socket in a temporary directory), each started
with C{--redis} and stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest
import websocket

from .realsockets import TwistdServer
from .redis_support import RedisServer
from .test_one_namespace_real import every_dialect_in_one_room
from .test_verified_rooms_real import SECRET, make_token
from .realsockets import SocketIOQueueClient

TIMEOUT = 10


def start_node(redis: RedisServer, directory, name: str, *args: str) -> TwistdServer:
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--redis",
        redis.url,
        "--node-id",
        name,
        *args,
        env={"JWT_SECRET": ""},
    )
    server.start(directory / f"{name}.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    server.http = server.base.replace("ws://", "http://")
    return server


class Cluster:
    def __init__(self, directory, *args: str) -> None:
        self.directory = directory
        self.args = args
        self.redis = RedisServer(directory)
        self.nodes: list[TwistdServer] = []

    def start(self, count: int) -> Cluster:
        self.redis.start()
        for index in range(count):
            self.add(f"node{index + 1}")
        return self

    def add(self, name: str) -> TwistdServer:
        node = start_node(self.redis, self.directory, name, *self.args)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), "--max-peers-per-room", "5")
    try:
        yield cluster.start(2)
    finally:
        cluster.stop()


@pytest.fixture
def faulty(tmp_path):
    """
    A cluster of its own, for tests that kill a node or Redis (and verify
    tokens).
    """
    cluster = Cluster(tmp_path, "--jwt-secret", SECRET)
    try:
        yield cluster.start(2)
    finally:
        cluster.stop()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(predicate, timeout: float = 5, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        time.sleep(interval)


def room_sizes(node: TwistdServer) -> dict[str, int]:
    return {
        room["id"]: room["peer_count"]
        for room in get_json(node.http + "/api/rooms")["rooms"]
    }


def wait_room(nodes, room: str, count: int, timeout: float = 5) -> None:
    """
    Wait until every node's C{/api/rooms} shows C{count} peers in C{room}.
    """
    wait_for(
        lambda: all(room_sizes(node).get(room, 0) == count for node in nodes), timeout
    )


class NativePeer:
    def __init__(self, node: TwistdServer, token: str | None = None) -> None:
        query = f"?token={token}" if token is not None else ""
        self.ws = websocket.create_connection(
            f"{node.base}/signal{query}", timeout=TIMEOUT
        )
        self.id = self.next()["peerId"]

    def send(self, message) -> None:
        self.ws.send(json.dumps(message))

    def next(self):
        message = json.loads(self.ws.recv())
        # Session resume's sequence number is not what these tests are about.
        message.pop("seq", None)
        return message

    def join(self, room: str):
        self.send({"type": "join", "room": room})
        return self.next()

    def offer(self, room: str, to: str, payload) -> None:
        self.send({"type": "offer", "room": room, "to": to, "payload": payload})

    def close(self) -> None:
        self.ws.close()


def test_every_dialect_across_two_nodes(cluster):
    """
    Topic, envelope, native, Socket.IO rooms and calls peers, spread over
    two nodes, see each other and exchange offers, answers and candidates
    as in one process; /api/rooms on both nodes shows the whole room.
    """
    nodes = cluster.nodes
    every_dialect_in_one_room(
        nodes, settled=lambda count: wait_room(nodes, "lobby", count)
    )
    wait_room(nodes, "lobby", 0)


def test_capacity_is_cluster_wide(cluster):
    """
    A room full with members on two nodes refuses a newcomer on either.
    """
    one, two = cluster.nodes
    peers = [NativePeer(one if index % 2 else two) for index in range(7)]
    try:
        for peer in peers[:5]:
            assert peer.join("full")["type"] == "joined"
            wait_room(cluster.nodes, "full", peers.index(peer) + 1)
        for peer in peers[5:]:
            refused = peer.join("full")
            assert refused["type"] == "error" and refused["code"] == "room-full", (
                refused
            )
    finally:
        for peer in peers:
            peer.close()


def test_a_verified_room_is_verified_only_on_every_node(faulty):
    """
    A room a verified user created on one node refuses a tokenless peer on
    the other, and admits a verified one there.
    """
    cluster = faulty
    one, two = cluster.nodes
    alice = SocketIOQueueClient(one.http, {"token": make_token("alice")}, TIMEOUT)
    bob = SocketIOQueueClient(two.http, {"token": make_token("bob")}, TIMEOUT)
    intruder = NativePeer(two)
    try:
        alice.emit("webrtc:join-room", {"callRoomId": "vip", "callType": "video"})
        assert alice.next()[0] == "webrtc:room-joined"
        wait_room(cluster.nodes, "vip", 1)
        refused = intruder.join("vip")
        assert (refused["type"], refused["code"]) == ("error", "forbidden"), refused
        bob.emit("webrtc:join-room", {"callRoomId": "vip", "callType": "video"})
        event, data = bob.next()
        assert event == "webrtc:room-joined", (event, data)
        assert [p["socketId"] for p in data["existingParticipants"]] == [alice.id]
        event, data = alice.next()
        assert (event, data["participant"]["socketId"]) == (
            "webrtc:participant-joined",
            bob.id,
        )
        wait_room(cluster.nodes, "vip", 2)
    finally:
        for client in (alice, bob, intruder):
            client.close()


def test_room_grants_hold_on_every_node(tmp_path):
    """
    Under C{--auth optional}, a token's C{rooms} grant limits its holder on
    whichever node it connects to: a peer granted C{team-*} on node two is
    refused a room a verified user made on node one, and meets that user in
    a granted room, shown with its verified user id.
    """
    cluster = Cluster(tmp_path, "--jwt-secret", SECRET, "--auth", "optional").start(2)
    one, two = cluster.nodes
    alice = NativePeer(one, make_token("alice"))
    bob = NativePeer(two, make_token("bob", rooms=["team-*"]))
    try:
        assert alice.join("vip")["type"] == "joined"
        assert alice.join("team-a")["type"] == "joined"
        wait_room(cluster.nodes, "team-a", 1)
        refused = bob.join("vip")
        assert (refused["type"], refused["code"]) == ("error", "forbidden"), refused
        joined = bob.join("team-a")
        assert joined["type"] == "joined", joined
        assert [(peer["id"], peer.get("userId")) for peer in joined["peers"]] == [
            (alice.id, "alice")
        ]
        announced = alice.next()
        assert announced["type"] == "peer-joined", announced
        assert (announced["peer"]["id"], announced["peer"].get("userId")) == (
            bob.id,
            "bob",
        ), announced
    finally:
        alice.close()
        bob.close()
        cluster.stop()


def test_concurrent_joins_never_overfill_a_room(cluster):
    """
    Joins racing on two nodes for the last places: Redis decides, and the
    room never holds more than its capacity once they settle.
    """
    one, two = cluster.nodes
    peers = [NativePeer(one if index % 2 else two) for index in range(8)]
    try:
        for peer in peers:
            peer.send({"type": "join", "room": "race"})
        time.sleep(0.5)
        sizes = room_sizes(one).get("race"), room_sizes(two).get("race")
        assert sizes[0] == sizes[1] and 1 <= sizes[0] <= 5, sizes
        stats = get_json(one.http + "/api/stats")
        assert stats["rooms"]["total_peers"] >= 5
    finally:
        for peer in peers:
            peer.close()


def test_stats_count_the_whole_cluster(cluster):
    """
    /api/stats on one node counts the peers of the other, in rooms or not.
    """
    one, two = cluster.nodes

    def total():
        return get_json(one.http + "/api/stats")["peers"]["total"]

    # The earlier tests' peers are gone.
    wait_for(lambda: total() == 0)
    peers = [NativePeer(two) for _ in range(3)]
    try:
        peers[0].join("counted")
        wait_for(lambda: total() == 3)
        stats = get_json(one.http + "/api/stats")
        assert stats["peers"]["without_room"] == 2
        assert stats["rooms"] == {"total": 1, "total_peers": 1}
    finally:
        for peer in peers:
            peer.close()


def test_a_killed_node_is_announced_gone(faulty):
    """
    kill -9 of a node: its peers are announced gone on the other node
    within two heartbeats after the timeout, and nothing of it is left in
    /api/rooms.
    """
    one, two = faulty.nodes
    here, there = NativePeer(one), NativePeer(two)
    try:
        here.join("doomed")
        there.join("doomed")
        assert here.next() == {
            "type": "peer-joined",
            "room": "doomed",
            "peer": {"id": there.id, "metadata": {}},
        }
        os.kill(two.process.pid, signal.SIGKILL)
        two.process.wait()
        killed = time.monotonic()
        here.ws.settimeout(5)
        assert here.next() == {
            "type": "peer-left",
            "room": "doomed",
            "peer": {"id": there.id, "metadata": {}},
        }
        assert time.monotonic() - killed < 2.0 + 2 * 0.5 + 0.5
        assert room_sizes(one) == {"doomed": 1}
    finally:
        here.close()


def test_redis_restart(faulty):
    """
    Redis stopped: relays on one node go on, a relay to the other node is
    refused in the sender's dialect; Redis back: cross-node relays work
    again within 5 s, with the room whole.
    """
    one, two = faulty.nodes
    first, second, remote = NativePeer(one), NativePeer(one), NativePeer(two)
    peers = [first, second, remote]
    try:
        for peer in (first, second, remote):
            peer.join("steady")
        wait_room(faulty.nodes, "steady", 3)
        faulty.redis.stop()
        time.sleep(0.3)
        first.offer("steady", second.id, {"n": 1})
        wait_for(
            lambda: (
                _next_of_type(second, "offer")
                == {
                    "type": "offer",
                    "room": "steady",
                    "from": first.id,
                    "payload": {"n": 1},
                }
            )
        )
        first.offer("steady", remote.id, {"n": 2})
        refused = _next_of_type(first, "error")
        assert refused["code"] == "peer-not-found", refused
        # A peer that comes and joins while Redis is away.
        late = NativePeer(two)
        peers.append(late)
        assert late.join("steady")["type"] == "joined"
        faulty.redis.start()
        restarted = time.monotonic()

        def relayed():
            first.offer("steady", remote.id, {"n": 3})
            try:
                remote.ws.settimeout(0.3)
                return _next_of_type(remote, "offer")
            except websocket.WebSocketTimeoutException:
                return None

        assert wait_for(relayed, timeout=5, interval=0.1)["payload"] == {"n": 3}
        assert time.monotonic() - restarted < 5
        # The late peer is put in the directory and announced to node one.
        wait_room(faulty.nodes, "steady", 4)
        wait_for(
            lambda: b"node2" in faulty.redis.command("HGET", "signaling:peers", late.id)
        )
        assert "Traceback" not in one.log() + two.log()
    finally:
        for peer in peers:
            peer.close()


def _next_of_type(peer: NativePeer, kind: str):
    while True:
        message = peer.next()
        if message["type"] == kind:
            return message


def test_a_stalled_node_is_cut_off_and_comes_back(tmp_path):
    """
    A node that stops reading (SIGSTOP) while messages pile up for it is
    cut off by Redis's pub/sub output-buffer limit instead of growing
    Redis's memory, and reaped; resumed, it reconnects, registers its peers
    again and they are announced back, and relays reach it again.
    """
    cluster = Cluster(tmp_path)
    cluster.redis.options = ("--client-output-buffer-limit", "pubsub 256kb 64kb 1")
    cluster.start(2)
    one, two = cluster.nodes
    # Past the nodes' second reading of the directory after they start,
    # which would bring the peer back by itself.
    time.sleep(1.6)
    here, there = NativePeer(one), NativePeer(two)
    try:
        here.join("stall")
        there.join("stall")
        assert here.next()["type"] == "peer-joined"
        os.kill(two.process.pid, signal.SIGSTOP)
        try:
            blob = "x" * 8000
            for n in range(100):
                here.offer("stall", there.id, {"n": n, "blob": blob})
            here.ws.settimeout(5)
            assert _next_of_type(here, "peer-left")["peer"]["id"] == there.id
        finally:
            os.kill(two.process.pid, signal.SIGCONT)
        assert _next_of_type(here, "peer-joined")["peer"]["id"] == there.id
        # Redis cut the stalled subscriber off rather than buffer for it.
        assert "output buffer limits" in cluster.redis.log()

        def relayed():
            here.offer("stall", there.id, {"n": "after"})
            try:
                there.ws.settimeout(0.3)
                message = there.next()
                while message.get("payload", {}).get("n") != "after":
                    message = there.next()
                return message
            except websocket.WebSocketTimeoutException:
                return None

        assert wait_for(relayed, timeout=5, interval=0.1)["payload"] == {"n": "after"}
        assert "Traceback" not in one.log() + two.log()
    finally:
        here.close()
        there.close()
        cluster.stop()


def test_bus_metrics_of_a_node(tmp_path):
    """
    A node of a 2-node cluster counts on /metrics what it published to the
    other node, the live nodes, Redis reconnections and the time of its
    probes through Redis; no label names a peer or a node.
    """
    from .test_operations_real import scrape

    cluster = Cluster(tmp_path, "--metrics-port", "tcp:0:interface=127.0.0.1").start(2)
    one, two = cluster.nodes
    here, there = NativePeer(one), NativePeer(two)
    try:
        here.join("bus")
        there.join("bus")
        wait_room(cluster.nodes, "bus", 2)
        before = scrape(one)["signaling_bus_published_total"]
        here.offer("bus", there.id, {"n": 1})
        assert _next_of_type(there, "offer")["payload"] == {"n": 1}
        # Both read at a heartbeat of node one, which may have come before
        # node two joined.
        samples = wait_for(
            lambda: (
                lambda s: (
                    s.get("signaling_bus_latency_seconds_count", 0) >= 1
                    and s["signaling_bus_nodes_alive"] == 2
                    and s
                )
            )(scrape(one))
        )
        assert samples["signaling_bus_published_total"] >= before + 1
        assert samples["signaling_bus_publish_dropped_total"] == 0
        assert samples["signaling_bus_reconnects_total"] == 0
        assert samples['signaling_bus_latency_seconds_bucket{le="+Inf"}'] >= 1
        names = " ".join(samples)
        assert here.id not in names and there.id not in names and "node2" not in names
        cluster.redis.stop()
        time.sleep(0.3)
        cluster.redis.start()
        wait_for(lambda: scrape(one)["signaling_bus_reconnects_total"] >= 1)
    finally:
        here.close()
        there.close()
        cluster.stop()
