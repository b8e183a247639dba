"""
The PeerJS dialect against a real twistd, over raw WebSockets and HTTP:
what a peerjs client and a misbehaving one see on the wire.
"""

from __future__ import annotations

import os
import signal
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from .realsockets import TwistdServer, open_websocket, sleep


def start(tmp_path, name, *args):
    server = TwistdServer(
        "--port", "tcp:0:interface=127.0.0.1", "--ping-interval", "0", *args
    )
    server.start(tmp_path / f"{name}.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    server.http = server.base.replace("ws://", "http://")
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """
    The default mount and key, with short timeouts and small frame and
    rate limits.
    """
    server = start(
        tmp_path_factory.mktemp("peerjs"),
        "default",
        "--peerjs-expire-timeout",
        "0.5",
        "--max-message-size",
        "4096",
        "--max-message-rate",
        "20",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """
    Another mount and key, discovery on, and small PeerJS limits.
    """
    server = start(
        tmp_path_factory.mktemp("peerjs"),
        "tight",
        "--peerjs-path",
        "/rtc/pj/",
        "--peerjs-key",
        "k2",
        "--peerjs-discovery",
        "--peerjs-alive-timeout",
        "1",
        "--peerjs-concurrent-limit",
        "3",
        "--peerjs-queue-messages",
        "2",
        "--peerjs-expire-timeout",
        "30",
        "--peerjs-queue-bytes",
        "1500",
        "--peerjs-queue-total-bytes",
        "3000",
        "--max-send-buffer",
        "65536",
        # The stalled reader's socket may still be draining at the end.
        "--drain-timeout",
        "1",
    )
    yield server
    server.stop()


async def connect(server, peer_id, token="t0k", key="peerjs", path="/peerjs"):
    return await open_websocket(
        f"{server.base}{path}/peerjs?key={key}&id={peer_id}&token={token}&version=1.5.5"
    )


async def peer(server, peer_id, token="t0k", **kwargs):
    client = await connect(server, peer_id, token, **kwargs)
    assert await client.next() == {"type": "OPEN"}
    return client


async def closed(client, timeout=5):
    return await client.closed.addTimeout(timeout, reactor)


@pytest_twisted.ensureDeferred
async def test_relay(server):
    """
    OPEN, then OFFER/ANSWER/CANDIDATE by id with src written by the server.
    """
    alice = await peer(server, "alice1")
    bob = await peer(server, "bob1")
    alice.send_json({"type": "HEARTBEAT"})
    alice.send_json(
        {"type": "OFFER", "src": "mallory", "dst": "bob1", "payload": {"sdp": "o"}}
    )
    assert await bob.next() == {
        "type": "OFFER",
        "src": "alice1",
        "dst": "bob1",
        "payload": {"sdp": "o"},
    }
    bob.send_json({"type": "ANSWER", "dst": "alice1", "payload": {"sdp": "a"}})
    assert (await alice.next())["src"] == "bob1"
    for client in (alice, bob):
        client.sendClose()
        await closed(client)


@pytest_twisted.ensureDeferred
async def test_id_taken_and_same_token(server):
    """
    Another token gets ID-TAKEN and 1008; the same token takes the id over
    with OPEN, and the older socket is closed with 4000.
    """
    holder = await peer(server, "carol2", "one")
    intruder = await connect(server, "carol2", "two")
    assert await intruder.next() == {
        "type": "ID-TAKEN",
        "payload": {"msg": "ID is taken"},
    }
    assert await closed(intruder) == 1008
    again = await peer(server, "carol2", "one")
    assert await closed(holder) == 4000
    sender = await peer(server, "dave2")
    sender.send_json({"type": "CANDIDATE", "dst": "carol2", "payload": 1})
    assert (await again.next())["payload"] == 1
    for client in (again, sender):
        client.sendClose()
        await closed(client)


@pytest_twisted.ensureDeferred
async def test_offline_queue_and_expire(server):
    """
    A message for an id not connected is delivered when it connects; one
    whose id does not come within --peerjs-expire-timeout comes back as
    one EXPIRE.
    """
    alice = await peer(server, "alice3")
    alice.send_json({"type": "OFFER", "dst": "bob3", "payload": {"n": 1}})
    alice.send_json({"type": "OFFER", "dst": "nobody3", "payload": {"n": 2}})
    alice.send_json({"type": "CANDIDATE", "dst": "nobody3", "payload": {"n": 3}})
    bob = await connect(server, "bob3")
    assert await bob.next() == {"type": "OPEN"}
    assert await bob.next() == {
        "type": "OFFER",
        "src": "alice3",
        "dst": "bob3",
        "payload": {"n": 1},
    }
    assert await alice.next(timeout=5) == {
        "type": "EXPIRE",
        "src": "nobody3",
        "dst": "alice3",
    }
    await sleep(0.5)
    assert alice.messages.pending == []
    nobody = await peer(server, "nobody3")
    await sleep(0.2)
    assert nobody.messages.pending == []
    for client in (alice, bob, nobody):
        client.sendClose()
        await closed(client)


@pytest_twisted.ensureDeferred
async def test_bad_input(server):
    """
    Invalid JSON, wrong types and a flood get ERROR and leave the
    connection open and the others unaffected; a frame over the size limit
    gets ERROR and 1009.
    """
    alice = await peer(server, "alice4")
    bob = await peer(server, "bob4")
    alice.sendMessage(b"{oops")
    assert await alice.next() == {
        "type": "ERROR",
        "payload": {"msg": "Invalid message: not JSON"},
    }
    alice.send_json({"type": ["OFFER"], "dst": "bob4"})
    assert (await alice.next())["payload"]["msg"] == (
        "Invalid message: 'type' must be a string"
    )
    alice.send_json({"type": "OFFER", "dst": {"id": "bob4"}})
    assert (await alice.next())["payload"]["msg"] == (
        "Invalid message: 'dst' must be a peer id"
    )
    for _ in range(60):
        alice.send_json({"type": "HEARTBEAT"})
    assert (await alice.next())["payload"]["msg"] == (
        "Too many messages; this one was dropped"
    )
    # The rate limit lets it send again once its bucket refills.
    await sleep(0.5)
    while alice.messages.pending:
        alice.messages.pending.pop()
    alice.send_json({"type": "OFFER", "dst": "bob4", "payload": "still here"})
    assert (await bob.next())["payload"] == "still here"
    alice.send_json({"type": "OFFER", "dst": "bob4", "payload": "x" * 5000})
    assert await alice.next() == {
        "type": "ERROR",
        "payload": {"msg": "Message too large"},
    }
    assert await closed(alice) == 1009
    assert bob.messages.pending == []
    bob.sendClose()
    await closed(bob)


@pytest_twisted.ensureDeferred
async def test_refused_at_connect(server):
    missing = await open_websocket(f"{server.base}/peerjs/peerjs?key=peerjs&id=x")
    assert await missing.next() == {
        "type": "ERROR",
        "payload": {"msg": "No id, token, or key supplied to websocket server"},
    }
    assert await closed(missing) == 1008
    wrong = await connect(server, "x5", key="nope")
    assert (await wrong.next())["payload"]["msg"] == "Invalid key provided"
    assert await closed(wrong) == 1008


@pytest_twisted.ensureDeferred
async def test_http(server):
    """
    The banner, a fresh id as text/html with CORS, the peer list refused
    without --peerjs-discovery.
    """
    response = await treq.get(f"{server.http}/peerjs/", headers={"Origin": "http://a"})
    assert response.code == 200
    assert (await response.json())["name"] == "PeerJS Server"
    assert response.headers.getRawHeaders("Access-Control-Allow-Origin") == ["*"]
    response = await treq.get(f"{server.http}/peerjs/peerjs/id?ts=1&version=1.5.5")
    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Type")[0].startswith("text/html")
    assert len((await response.text()).strip()) == 36
    response = await treq.get(f"{server.http}/peerjs/peerjs/peers")
    assert response.code == 401
    await response.content()


@pytest_twisted.ensureDeferred
async def test_room_meets_native(server):
    """
    A PeerJS client whose path is /peerjs/room/NAME/ and a native peer in
    NAME meet: the native peer sees it in the room and offers to its id;
    the answer comes back; the native peer's leaving is a LEAVE.
    """
    alice = await peer(server, "alice6", path="/peerjs/room/lobby6")
    native = await open_websocket(f"{server.base}/signal")
    native_id = (await native.next())["peerId"]
    native.send_json({"type": "join", "room": "lobby6"})
    joined = await native.next()
    assert [member["id"] for member in joined["peers"]] == ["alice6"]
    native.send_json(
        {"type": "offer", "room": "lobby6", "to": "alice6", "payload": {"sdp": "o"}}
    )
    assert await alice.next() == {
        "type": "OFFER",
        "src": native_id,
        "dst": "alice6",
        "payload": {"sdp": "o"},
    }
    alice.send_json({"type": "ANSWER", "dst": native_id, "payload": {"sdp": "a"}})
    answer = await native.next()
    assert (answer["type"], answer["from"], answer["payload"]) == (
        "answer",
        "alice6",
        {"sdp": "a"},
    )
    native.sendClose()
    await closed(native)
    assert await alice.next() == {"type": "LEAVE", "src": native_id, "dst": "alice6"}
    alice.sendClose()
    await closed(alice)


@pytest_twisted.ensureDeferred
async def test_mount_key_discovery_and_limits(tight):
    """
    --peerjs-path and --peerjs-key move the dialect; --peerjs-discovery
    lists ids; --peerjs-queue-messages bounds the queue (EXPIRE at once
    beyond); --peerjs-concurrent-limit refuses the next client.
    """
    wrong_mount = await treq.get(f"{tight.http}/peerjs/")
    assert wrong_mount.code == 404
    await wrong_mount.content()
    alice = await peer(tight, "alice7", key="k2", path="/rtc/pj")
    bob = await peer(tight, "bob7", key="k2", path="/rtc/pj")
    response = await treq.get(f"{tight.http}/rtc/pj/k2/peers")
    assert sorted(await response.json()) == ["alice7", "bob7"]
    for n in range(3):
        alice.send_json({"type": "CANDIDATE", "dst": "absent7", "payload": n})
    assert await alice.next() == {"type": "EXPIRE", "src": "absent7", "dst": "alice7"}
    carol = await peer(tight, "carol7", key="k2", path="/rtc/pj")
    dave = await connect(tight, "dave7", key="k2", path="/rtc/pj")
    assert (await dave.next())["payload"]["msg"] == (
        "Server has reached its concurrent user limit"
    )
    assert await closed(dave) == 1008
    for client in (alice, bob, carol):
        client.sendClose()
        await closed(client)


@pytest_twisted.ensureDeferred
async def test_alive_timeout(tight):
    """
    A client without HEARTBEAT is closed with 4000 after
    --peerjs-alive-timeout, though it sent other messages, and its id is
    free at once; one sending HEARTBEAT stays.
    """
    quiet = await peer(tight, "quiet8", key="k2", path="/rtc/pj")
    beating = await peer(tight, "beating8", key="k2", path="/rtc/pj")
    for _ in range(6):
        beating.send_json({"type": "HEARTBEAT"})
        if not quiet.closed.called:
            quiet.send_json({"type": "CANDIDATE", "dst": "beating8", "payload": 0})
        await sleep(0.25)
    assert await closed(quiet, timeout=5) == 4000
    assert not beating.closed.called
    again = await peer(tight, "quiet8", "new-token", key="k2", path="/rtc/pj")
    for client in (beating, again):
        client.sendClose()
        await closed(client)


@pytest_twisted.ensureDeferred
async def test_auth_required_refuses_peerjs(tmp_path):
    """
    Under --auth required a PeerJS client, which can present no token of
    ours, is refused with ERROR; its own token is not taken for one.
    """
    server = start(
        tmp_path,
        "auth",
        "--auth",
        "required",
        "--jwt-secret",
        "the PeerJS test secret, long enough for HS256",
    )
    try:
        client = await connect(server, "alice9", token="random-peerjs-token")
        message = await client.next()
        assert message["type"] == "ERROR"
        assert "requires a token" in message["payload"]["msg"]
        assert await closed(client) == 1008
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_queue_bytes(tight):
    """
    --peerjs-queue-bytes bounds what waits for one id, and
    --peerjs-queue-total-bytes what waits for all: past either, EXPIRE at
    once.
    """
    alice = await peer(tight, "alice10", key="k2", path="/rtc/pj")
    kilobyte = "x" * 1000
    alice.send_json({"type": "OFFER", "dst": "absent10a", "payload": kilobyte})
    alice.send_json({"type": "OFFER", "dst": "absent10a", "payload": kilobyte})
    assert await alice.next() == {
        "type": "EXPIRE",
        "src": "absent10a",
        "dst": "alice10",
    }
    alice.send_json({"type": "OFFER", "dst": "absent10b", "payload": kilobyte})
    alice.send_json({"type": "OFFER", "dst": "absent10c", "payload": kilobyte})
    assert await alice.next() == {
        "type": "EXPIRE",
        "src": "absent10c",
        "dst": "alice10",
    }
    alice.sendClose()
    await closed(alice)


@pytest_twisted.ensureDeferred
async def test_stalled_reader(tight):
    """
    A client that stops reading does not make the server buffer without
    bound: once the buffers are full its sender is told EXPIRE, and others
    are still served.
    """
    slow = await peer(tight, "slow11", key="k2", path="/rtc/pj")
    sender = await peer(tight, "sender11", key="k2", path="/rtc/pj")
    slow.transport.pauseProducing()
    payload = "x" * 60000
    for _ in range(20):
        for _ in range(20):
            sender.send_json({"type": "OFFER", "dst": "slow11", "payload": payload})
        await sleep(0.05)
        if sender.messages.pending:
            break
    assert await sender.next() == {"type": "EXPIRE", "src": "slow11", "dst": "sender11"}
    third = await peer(tight, "third11", key="k2", path="/rtc/pj")
    sender.send_json({"type": "CANDIDATE", "dst": "third11", "payload": 1})
    assert (await third.next())["src"] == "sender11"
    for client in (third, sender):
        client.sendClose()
        await closed(client)
    slow.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_sigterm_closes_with_1001(tmp_path):
    """
    A draining server closes a PeerJS client with 1001 (going away), as
    every WebSocket dialect, and exits once it has gone.
    """
    server = start(tmp_path, "drain")
    try:
        alice = await peer(server, "alice12")
        os.kill(server.process.pid, signal.SIGTERM)
        assert await closed(alice) == 1001
        assert "told 1 peers the server is going away" in server.log()
    finally:
        server.stop()
