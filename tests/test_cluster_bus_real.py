"""
The cluster bus against a real C{redis-server}: two nodes (two buses in
this process) relaying in order, sharing a room's capacity and the id space,
reaping a node that stopped heartbeating, and surviving a Redis restart.
"""

from __future__ import annotations

import socket
import time

import pytest
import pytest_twisted
import trustme
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

from signaling.cluster import (
    BusSettings,
    BusUnavailable,
    ClusterStats,
    DirectoryRefused,
    Envelope,
    RedisBus,
    parse_redis_url,
)
from signaling.errors import AlreadyInRoom, RoomFull, VerifiedOnly
from signaling.hub import Member
from signaling.ids import IdShape, IdSource

from .realsockets import sleep
from .redis_support import RedisServer

#: Short heartbeats keep the tests fast; the defaults are 0.5 s and 2 s.
SETTINGS = BusSettings(
    heartbeat_interval=0.1, node_timeout=0.4, reconnect_max_delay=0.3, reply_timeout=2
)


@pytest.fixture
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def buses(redis):
    """
    Makes started buses on C{redis}; stops them all at teardown.
    """
    started: list[RedisBus] = []

    async def make(node_id: str, ids: IdSource | None = None) -> RedisBus:
        bus = RedisBus(
            parse_redis_url(redis.url), node_id, reactor, SETTINGS, ids or IdSource()
        )
        started.append(bus)
        await bus.start()
        return bus

    yield make
    pytest_twisted.blockon(
        defer.gatherResults([bus.stop() for bus in started], consumeErrors=True)
    )


@pytest.fixture
def log_events():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def member(peer_id: str, verified_user: str | None = None) -> Member:
    return Member(peer_id, "native", {"name": peer_id}, 1700000000.5, verified_user)


async def until(predicate, timeout: float = 5.0, step: float = 0.02) -> float:
    """
    Wait until C{predicate()} is true; return the seconds it took.
    """
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("timed out waiting")
        await sleep(step)
    return time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_envelopes_arrive_in_order(buses):
    """
    Three thousand envelopes sent back to back from one node to another all
    arrive, in the order they were sent, with every field intact; each
    send reports it delivered.
    """
    alice_node, bob_node = await buses("node-a"), await buses("node-b")
    received: list[Envelope] = []
    bob_node.on_envelope(received.append)
    sender = member("alice")
    count = 3000
    sends = [
        alice_node.send(
            "node-b",
            Envelope(
                "message", "lobby", sender, ("bob",), {"seq": seq}, {"msgId": str(seq)}
            ),
        )
        for seq in range(count)
    ]
    results = await defer.gatherResults(sends)
    await until(lambda: len(received) >= count)
    assert results == [True] * count
    assert [envelope.payload["seq"] for envelope in received] == list(range(count))
    assert received[7] == Envelope(
        "message", "lobby", sender, ("bob",), {"seq": 7}, {"msgId": "7"}
    )


@pytest_twisted.ensureDeferred
async def test_room_capacity_is_cluster_wide(buses):
    """
    Twenty peers on two nodes join a room of three at the same moment:
    exactly three get in, the others are told the room is full, and every
    node sees the same three members. A room made by a verified peer admits
    only verified peers, and nobody joins twice.
    """
    node_a, node_b = await buses("node-a"), await buses("node-b")
    peers = {}
    for index in range(20):
        bus = (node_a, node_b)[index % 2]
        peer_id = f"peer-{index}"
        assert await bus.claim_peer(peer_id)
        peers[peer_id] = bus

    async def join(peer_id, bus):
        try:
            await bus.join("small", member(peer_id), max_peers=3)
        except RoomFull:
            return False
        return True

    outcomes = await defer.gatherResults(
        [defer.ensureDeferred(join(peer_id, bus)) for peer_id, bus in peers.items()]
    )
    assert outcomes.count(True) == 3
    members_a = await node_a.members("small")
    members_b = await node_b.members("small")
    assert len(members_a) == 3
    assert sorted(m.member.peer_id for m in members_a) == sorted(
        m.member.peer_id for m in members_b
    )
    winner = members_a[0]
    assert winner.node == peers[winner.member.peer_id].node_id
    assert winner.member == member(winner.member.peer_id)
    assert await node_b.stats() == ClusterStats(nodes=2, peers=20, rooms=1)

    await node_a.join("verified", member("peer-0", verified_user="alice"))
    with pytest.raises(VerifiedOnly):
        await node_b.join("verified", member("peer-1"))
    with pytest.raises(AlreadyInRoom):
        await node_a.join("verified", member("peer-0", verified_user="alice"))


@pytest_twisted.ensureDeferred
async def test_ids_are_unique_in_the_cluster(buses):
    """
    Two nodes whose id sources draw the same 8-hex id first: the second node
    gets another one, and the directory knows which node holds which.
    """

    def source(*draws: bytes) -> IdSource:
        queue = list(draws)
        return IdSource(lambda size: queue.pop(0))

    node_a = await buses("node-a", source(b"\x00\x00\x00\x2a"))
    node_b = await buses("node-b", source(b"\x00\x00\x00\x2a", b"\xde\xad\xbe\xef"))
    first = await node_a.allocate_id(IdShape.HEX8)
    second = await node_b.allocate_id(IdShape.HEX8)
    assert (first, second) == ("0000002a", "deadbeef")
    assert await node_a.node_of("deadbeef") == "node-b"
    assert await node_b.node_of("0000002a") == "node-a"
    assert await node_b.node_of("00000000") is None
    assert not await node_b.claim_peer("0000002a")


@pytest_twisted.ensureDeferred
async def test_dead_node_is_reaped_and_dropped(buses):
    """
    A node that stops heartbeating is reaped within two heartbeats after
    its timeout: every live node is told its peers, rooms and userIds once,
    the directory forgets them, and a message to it is reported dropped
    once it has gone.
    """
    node_a, node_b = await buses("node-a"), await buses("node-b")
    node_c = await buses("node-c")
    deaths_a, deaths_c = [], []
    node_a.on_node_dead(deaths_a.append)
    node_c.on_node_dead(deaths_c.append)
    for bus, peer_id in ((node_a, "alice"), (node_b, "bob"), (node_b, "bert")):
        assert await bus.claim_peer(peer_id)
        await bus.join("lobby", member(peer_id))
    await node_b.register_user("bob", "bob@example.org", "bob-key")

    node_b.stop_heartbeat()
    took = await until(lambda: deaths_a and deaths_c)
    assert took < SETTINGS.node_timeout + 2 * SETTINGS.heartbeat_interval + 0.3
    [death] = deaths_a
    assert deaths_c == [death]
    assert death.node == "node-b"
    assert sorted(death.peers) == ["bert", "bob"]
    assert sorted((room, m.peer_id) for room, m in death.left) == [
        ("lobby", "bert"),
        ("lobby", "bob"),
    ]
    assert death.user_ids == ("bob@example.org",)
    assert [m.member.peer_id for m in await node_a.members("lobby")] == ["alice"]
    assert await node_a.node_of("bob") is None
    assert await node_a.lookup_user("bob@example.org") is None
    assert "node-b" not in await node_a.nodes()
    assert await node_a.stats() == ClusterStats(nodes=2, peers=1, rooms=1)

    await node_b.stop()
    assert (
        await node_a.send("node-b", Envelope("message", None, None, ("bob",))) is False
    )


@pytest_twisted.ensureDeferred
async def test_directory_binding_is_cluster_wide(buses):
    """
    A userId proven on one node cannot be taken on another without proof
    or with another key; unproven, it is in use until its holder is found
    gone; a proven one is held after its holder leaves and is taken back
    with proof.
    """
    node_a, node_b = await buses("node-a"), await buses("node-b")
    for bus, peer_id in (
        (node_a, "a1"),
        (node_a, "a2"),
        (node_b, "b1"),
        (node_b, "b2"),
    ):
        assert await bus.claim_peer(peer_id)

    registered = await node_a.register_user("a1", "alice", "alice-key", proven=True)
    assert registered.went_online and registered.replaced is None
    with pytest.raises(DirectoryRefused) as refused:
        await node_b.register_user("b1", "alice", "other-key", proven=True)
    assert refused.value.code == "key-mismatch"
    with pytest.raises(DirectoryRefused) as refused:
        await node_b.register_user("b1", "alice", "alice-key")
    assert refused.value.code == "proof-required"

    taken = await node_b.register_user("b1", "alice", "alice-key", proven=True)
    assert not taken.went_online and taken.replaced == ("node-a", "a1")

    await node_a.register_user("a2", "carol", "carol-key")
    with pytest.raises(DirectoryRefused) as refused:
        await node_b.register_user("b2", "carol", "another-key")
    assert (refused.value.code, refused.value.holder) == (
        "user-id-in-use",
        ("node-a", "a2"),
    )
    taken = await node_b.register_user("b2", "carol", "another-key", gone="a2")
    assert taken.replaced == ("node-a", "a2")

    released = await node_b.release_peer("b1")
    assert released.user_id == "alice"
    held = await node_a.lookup_user("alice")
    assert (held.online, held.public_key, held.proven) == (False, "alice-key", True)
    with pytest.raises(DirectoryRefused):
        await node_a.register_user("a1", "alice", "other-key", proven=True)
    back = await node_a.register_user("a1", "alice", "alice-key", proven=True)
    assert back.went_online
    assert await node_b.unregister_user("b2") == "carol"
    assert await node_b.lookup_user("carol") is None


@pytest_twisted.ensureDeferred
async def test_redis_restart(redis, buses, log_events):
    """
    Redis stops: sends are reported dropped, directory calls fail with
    BusUnavailable, a peer that leaves meanwhile is released from what its
    node knows, and each node logs one warning and no traceback. Redis
    comes back empty: the nodes reconnect, subscribe again and re-register
    their remaining peers, rooms and userIds, and relaying works again.
    """
    node_a, node_b = await buses("node-a"), await buses("node-b")
    received: list[Envelope] = []
    node_b.on_envelope(received.append)
    deaths: list = []
    node_a.on_node_dead(deaths.append)
    for bus, peer_id in ((node_a, "alice"), (node_b, "bob"), (node_b, "bert")):
        assert await bus.claim_peer(peer_id)
        await bus.join("lobby", member(peer_id))
    await node_b.register_user("bob", "bob@example.org", "bob-key", proven=True)
    await node_b.leave("lobby", "bob")
    await node_b.join("lobby", member("bob"))

    redis.stop()
    await until(lambda: not node_a.available and not node_b.available)
    assert (
        await node_a.send("node-b", Envelope("message", None, None, ("bob",))) is False
    )
    with pytest.raises(BusUnavailable):
        await node_a.members("lobby")
    released = await node_b.release_peer("bert")
    assert released.left == (("lobby", member("bert")),)

    redis.start()
    took = await until(lambda: node_a.available and node_b.available)
    assert took < 5

    async def rebuilt():
        try:
            members = await node_a.members("lobby")
        except BusUnavailable:
            return False
        return sorted(m.member.peer_id for m in members) == ["alice", "bob"]

    deadline = time.monotonic() + 5
    while not await rebuilt():
        assert time.monotonic() < deadline, "the directory was not rebuilt"
        await sleep(0.05)
    assert await node_a.node_of("bob") == "node-b"
    binding = await node_a.lookup_user("bob@example.org")
    assert (binding.node, binding.peer, binding.proven) == ("node-b", "bob", True)

    # Relaying is back within 5 s of Redis: a send may still find node b's
    # subscriber reconnecting, so the offer is sent again until one arrives.
    envelope = Envelope("offer", "lobby", member("alice"), ("bob",), {"sdp": "v=0"})
    deadline = time.monotonic() + 5
    while not received:
        assert time.monotonic() < deadline, "relaying did not come back"
        if await node_a.send("node-b", envelope):
            try:
                await until(lambda: received, timeout=0.5)
            except AssertionError:
                pass
        else:
            await sleep(0.05)
    assert received and all(got == envelope for got in received)
    assert deaths == []

    failures = [event for event in log_events if "log_failure" in event]
    assert failures == []
    warnings = [
        event
        for event in log_events
        if event.get("log_format", "").startswith("redis unreachable")
    ]
    assert len(warnings) == 2


@pytest_twisted.ensureDeferred
async def test_release_while_disconnected_is_retried(redis, buses):
    """
    When Redis drops every client but keeps its data, a peer released
    before the node has reconnected is still taken out of the directory
    once it has: no ghost stays in its room.
    """
    node_a, node_b = await buses("node-a"), await buses("node-b")
    for bus, peer_id in ((node_a, "alice"), (node_b, "bert")):
        assert await bus.claim_peer(peer_id)
        await bus.join("lobby", member(peer_id))

    assert redis.command("CLIENT", "KILL", "SKIPME", "yes").startswith(b":")
    released = await node_b.release_peer("bert")
    assert released.left == (("lobby", member("bert")),)

    async def members():
        try:
            return [m.member.peer_id for m in await node_a.members("lobby")]
        except BusUnavailable:
            return None

    deadline = time.monotonic() + 5
    while await members() != ["alice"]:
        assert time.monotonic() < deadline, "bert stayed in the lobby"
        await sleep(0.05)
    assert await node_a.node_of("bert") is None


@pytest_twisted.ensureDeferred
async def test_password(tmp_path_factory):
    """
    A password in the URL is sent with AUTH on every connection; a wrong
    one fails start() with a clear error instead of retrying for ever.
    """
    redis = RedisServer(tmp_path_factory.mktemp("redis"), "--requirepass", "s3cret")
    redis.start()
    good = RedisBus(
        parse_redis_url(redis.url + "?password=s3cret"), "node-a", reactor, SETTINGS
    )
    bad = RedisBus(
        parse_redis_url(redis.url + "?password=wrong"), "node-b", reactor, SETTINGS
    )
    try:
        await good.start()
        assert await good.claim_peer("alice")
        assert (
            await good.send("node-a", Envelope("message", None, None, ("alice",)))
            is True
        )
        with pytest.raises(BusUnavailable) as refused:
            await bad.start()
        assert "WRONGPASS" in str(refused.value)
    finally:
        await good.stop()
        await bad.stop()
        redis.stop()


def free_loopback_port() -> int:
    """
    A port the kernel just handed out on 127.0.0.1: Redis cannot listen
    for TLS on port 0, so it is given one the kernel chose.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_tls(tmp_path_factory, log_events):
    """
    C{rediss://} speaks TLS and checks the server's certificate against the
    authority named by C{ssl_ca_certs}: a server whose certificate that
    authority did not sign is never used, and the node says why once.
    """
    directory = tmp_path_factory.mktemp("redis")
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    certificate.private_key_pem.write_to_path(str(directory / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    authority.cert_pem.write_to_path(str(directory / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(directory / "other-ca.pem"))
    port = free_loopback_port()
    redis = RedisServer(
        directory,
        "--bind",
        "127.0.0.1",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(directory / "cert.pem"),
        "--tls-key-file",
        str(directory / "key.pem"),
        "--tls-ca-cert-file",
        str(directory / "ca.pem"),
        "--tls-auth-clients",
        "no",
    )
    redis.start()
    url = f"rediss://localhost:{port}/0?ssl_ca_certs="
    trusted = RedisBus(
        parse_redis_url(url + str(directory / "ca.pem")), "node-a", reactor, SETTINGS
    )
    untrusted = RedisBus(
        parse_redis_url(url + str(directory / "other-ca.pem")),
        "node-b",
        reactor,
        SETTINGS,
    )
    try:
        await trusted.start()
        assert await trusted.claim_peer("alice")
        assert (
            await trusted.send("node-a", Envelope("message", None, None, ("alice",)))
            is True
        )
        starting = untrusted.start()
        await sleep(0.5)
        assert not starting.called
        assert await trusted.nodes() == ["node-a"]
        failures = [
            event
            for event in log_events
            if event.get("log_format", "").startswith("could not connect to redis")
        ]
        assert len(failures) == 1
        assert "certificate verify failed" in failures[0]["error"]
    finally:
        await trusted.stop()
        await untrusted.stop()
        redis.stop()


@pytest_twisted.ensureDeferred
async def test_bad_input_from_the_bus(redis, buses, log_events):
    """
    Bytes on a node's channel that are no envelope (another version, a
    malformed node death) are dropped with a warning; the envelopes after
    them still arrive.
    """
    node_a, node_b = await buses("node-a"), await buses("node-b")
    received: list[Envelope] = []
    node_b.on_envelope(received.append)
    deaths: list = []
    node_b.on_node_dead(deaths.append)
    channel = node_b.channel("node-b")
    assert redis.command("PUBLISH", channel, "\x02future") == b":1\r\n"
    death = '\x01["bus:node-dead", null, null, [], {"node": "x"}, null]'
    assert redis.command("PUBLISH", channel, death) == b":1\r\n"
    envelope = Envelope("message", None, None, ("bob",), "after")
    assert await node_a.send("node-b", envelope)
    await until(lambda: received)
    assert received == [envelope] and deaths == []
    warnings = [
        event["log_format"] for event in log_events if event["log_level"].name == "warn"
    ]
    assert warnings == [
        "dropped a message from the bus: {error}",
        "dropped a malformed node death: {error}",
    ]


@pytest_twisted.ensureDeferred
async def test_redis_refusing_writes(redis, buses, log_events):
    """
    Redis out of memory refuses the heartbeat's writes: the node says so
    once, with Redis's reason, and no traceback; it goes on when Redis
    takes writes again.
    """
    node_a = await buses("node-a")
    assert (
        redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction") == b"+OK\r\n"
    )
    assert redis.command("CONFIG", "SET", "maxmemory", "1") == b"+OK\r\n"
    await until(lambda: not node_a.available)
    await sleep(3 * SETTINGS.heartbeat_interval)
    assert redis.command("CONFIG", "SET", "maxmemory", "0") == b"+OK\r\n"
    await until(lambda: node_a.available)
    assert [event for event in log_events if "log_failure" in event] == []
    [warning] = [
        event
        for event in log_events
        if event.get("log_format", "").startswith("redis unreachable")
    ]
    assert "OOM" in warning["error"]


@pytest_twisted.ensureDeferred
async def test_stopped_node_is_reaped_at_once(buses):
    """
    A node that stops cleanly is reaped by the next heartbeat of another
    node, well before its timeout, with the peers it still held.
    """
    node_a, node_b = await buses("node-a"), await buses("node-b")
    deaths: list = []
    node_a.on_node_dead(deaths.append)
    assert await node_b.claim_peer("bob")
    await node_b.stop()
    took = await until(lambda: deaths)
    assert took < SETTINGS.node_timeout
    assert [(death.node, death.peers) for death in deaths] == [("node-b", ("bob",))]
