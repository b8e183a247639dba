"""
The envelope dialect at /ws over real sockets, against a
C{twistd -n signaling} subprocess: the seed document's connection flow and
its JavaScript client example, and the cleanup timer in a real process.
"""

from __future__ import annotations

import time

import orjson
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from .realsockets import TwistdServer, open_websocket, sleep


@pytest.fixture
def twistd(tmp_path):
    servers = []

    def start(*args):
        server = TwistdServer(*args)
        servers.append(server)
        server.start(tmp_path / f"twistd-{len(servers)}.log")
        return server

    yield start
    for server in servers:
        server.stop()


def envelope_url(server: TwistdServer) -> str:
    [url] = server.urls
    return url.rsplit("/", 1)[0] + "/ws"


async def connect(url):
    client = await open_websocket(url)
    connected = await client.next()
    assert connected["type"] == "ACK"
    assert connected["payload"] == {"message": "connected"}
    client.peer_id = connected["peer_id"]
    return client


def assert_recent(timestamp):
    assert isinstance(timestamp, int)
    assert abs(timestamp / 1000 - time.time()) < 60


@pytest_twisted.ensureDeferred
async def test_connection_flow_and_javascript_client(twistd):
    """
    Two clients run the document's JavaScript example: JOIN with a display
    name and endpoint, ACK with the peers (the joiner included), PEER_JOINED,
    an OFFER to the new peer answered with an ANSWER for the same session;
    then DISCOVER, KEEP_ALIVE and LEAVE, and the room over the REST API.
    """
    server = twistd("--port", "tcp:0:interface=127.0.0.1")
    url = envelope_url(server)
    alice_endpoint = {"ip": "203.0.113.1", "port": 12345}
    bob_endpoint = {"ip": "198.51.100.1", "port": 54321}

    alice = await connect(url)
    assert len(alice.peer_id) == 8 and int(alice.peer_id, 16) >= 0
    alice.send_json(
        {
            "type": "JOIN",
            "room_id": "my-room",
            "payload": {"display_name": "Alice", "endpoint": alice_endpoint},
        }
    )
    ack = await alice.next()
    assert ack["type"] == "ACK"
    assert_recent(ack["timestamp"])
    [alice_info] = ack["payload"]["peers"]
    assert alice_info == {
        "peer_id": alice.peer_id,
        "display_name": "Alice",
        "endpoint": alice_endpoint,
        "joined_at": alice_info["joined_at"],
    }

    bob = await connect(url)
    bob.send_json(
        {
            "type": "JOIN",
            "room_id": "my-room",
            "payload": {"display_name": "Bob", "endpoint": bob_endpoint},
            "request_id": "req-123",
        }
    )
    ack = await bob.next()
    assert (ack["type"], ack["request_id"], ack["payload"]["room_id"]) == (
        "ACK",
        "req-123",
        "my-room",
    )
    assert [peer["peer_id"] for peer in ack["payload"]["peers"]] == [
        alice.peer_id,
        bob.peer_id,
    ]

    # case 'PEER_JOINED': send an offer to the new peer.
    joined = await alice.next()
    assert (joined["type"], joined["peer_id"], joined["room_id"]) == (
        "PEER_JOINED",
        bob.peer_id,
        "my-room",
    )
    assert joined["payload"]["display_name"] == "Bob"
    assert joined["payload"]["endpoint"] == bob_endpoint
    offer = {
        "endpoint": alice_endpoint,
        "session_id": "sess-abc123",
        "initiator_id": alice.peer_id,
    }
    alice.send_json({"type": "OFFER", "target_id": joined["peer_id"], "payload": offer})

    # case 'OFFER': answer it.
    received = await bob.next()
    assert (received["type"], received["peer_id"], received["target_id"]) == (
        "OFFER",
        alice.peer_id,
        bob.peer_id,
    )
    assert received["payload"] == offer
    assert_recent(received["timestamp"])
    bob.send_json(
        {
            "type": "ANSWER",
            "target_id": received["peer_id"],
            "payload": {
                "endpoint": bob_endpoint,
                "session_id": received["payload"]["session_id"],
                "accepted": True,
            },
        }
    )

    # case 'ANSWER': begin hole punching.
    answer = await alice.next()
    assert (answer["type"], answer["peer_id"]) == ("ANSWER", bob.peer_id)
    assert answer["payload"] == {
        "endpoint": bob_endpoint,
        "session_id": "sess-abc123",
        "accepted": True,
    }

    alice.send_json(
        {"type": "CANDIDATE", "target_id": bob.peer_id, "payload": {"candidate": "c1"}}
    )
    assert (await bob.next())["payload"] == {"candidate": "c1"}

    port = url.rsplit(":", 1)[1].split("/")[0]
    # Not from the shared pool: a later test's server may get the same port.
    response = await treq.get(
        f"http://127.0.0.1:{port}/api/rooms/my-room", persistent=False
    )
    room = orjson.loads(await response.content())
    assert [
        (p["peer_id"], p["display_name"], p["endpoint"]) for p in room["peers"]
    ] == [
        (alice.peer_id, "Alice", alice_endpoint),
        (bob.peer_id, "Bob", bob_endpoint),
    ]

    bob.send_json({"type": "DISCOVER", "request_id": "d"})
    peer_list = await bob.next()
    assert (peer_list["type"], peer_list["request_id"]) == ("PEER_LIST", "d")
    assert len(peer_list["payload"]["peers"]) == 2

    bob.send_json({"type": "KEEP_ALIVE", "request_id": "k"})
    kept = await bob.next()
    assert_recent(kept.pop("timestamp"))
    assert kept == {"type": "ACK", "peer_id": bob.peer_id, "request_id": "k"}

    bob.send_json({"type": "LEAVE"})
    left = await bob.next()
    assert (left["type"], left["payload"]) == ("ACK", {"message": "left room"})
    gone = await alice.next()
    assert (gone["type"], gone["peer_id"], gone["room_id"]) == (
        "PEER_LEFT",
        bob.peer_id,
        "my-room",
    )

    bob.send_json(
        {
            "type": "OFFER",
            "target_id": alice.peer_id,
            "payload": {},
            "request_id": "late",
        }
    )
    error = await bob.next()
    assert error["type"] == "ERROR"
    assert (error["payload"]["code"], error["request_id"]) == ("NOT_IN_ROOM", "late")

    for client in (alice, bob):
        client.sendClose()
        await client.closed


@pytest_twisted.ensureDeferred
async def test_cleanup_timer_removes_a_silent_peer(twistd):
    """
    With pings off, the cleanup timer of a real twistd removes a peer that
    sends nothing for --stale-timeout (closed with 4000) and tells its
    room; a peer sending KEEP_ALIVE stays.
    """
    server = twistd(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--stale-timeout",
        "1",
        "--cleanup-interval",
        "0.2",
    )
    url = envelope_url(server)
    alice = await connect(url)
    alice.send_json({"type": "JOIN", "room_id": "sweep"})
    assert (await alice.next())["type"] == "ACK"
    bob = await connect(url)
    bob.send_json({"type": "JOIN", "room_id": "sweep"})
    assert (await bob.next())["type"] == "ACK"
    assert (await alice.next())["type"] == "PEER_JOINED"

    while True:
        alice.send_json({"type": "KEEP_ALIVE"})
        message = await alice.next(timeout=10)
        if message["type"] == "PEER_LEFT":
            break
        assert message["type"] == "ACK"
        await sleep(0.3)
    assert message["peer_id"] == bob.peer_id
    assert await bob.closed.addTimeout(10, reactor) == 4000
    alice.send_json({"type": "DISCOVER"})
    peer_list = await alice.next()
    while peer_list["type"] == "ACK":
        peer_list = await alice.next()
    assert [peer["peer_id"] for peer in peer_list["payload"]["peers"]] == [
        alice.peer_id
    ]
    alice.sendClose()
    await alice.closed


@pytest_twisted.ensureDeferred
async def test_bad_input_leaves_others_unaffected(twistd):
    """
    Invalid JSON is answered with an ERROR; a binary frame closes its
    sender with 1003; the other peer keeps signaling.
    """
    server = twistd("--port", "tcp:0:interface=127.0.0.1")
    url = envelope_url(server)
    alice = await connect(url)
    alice.send_json({"type": "JOIN", "room_id": "rough"})
    await alice.next()
    mallory = await connect(url)
    mallory.send_json({"type": "JOIN", "room_id": "rough"})
    await mallory.next()
    assert (await alice.next())["type"] == "PEER_JOINED"

    mallory.sendMessage(b"{not json")
    error = await mallory.next()
    assert (error["type"], error["payload"]["code"]) == ("ERROR", "INVALID_MESSAGE")
    mallory.sendMessage(b"\x00\x01", isBinary=True)
    assert await mallory.closed.addTimeout(10, reactor) == 1003
    assert (await alice.next())["type"] == "PEER_LEFT"

    alice.send_json({"type": "KEEP_ALIVE", "request_id": 1})
    assert (await alice.next())["request_id"] == 1
    alice.sendClose()
    await alice.closed


@pytest_twisted.ensureDeferred
async def test_a_refused_join_keeps_the_room_one_is_in(twistd):
    """
    A JOIN of another room that the hub refuses (here: its metadata is over
    --max-metadata-size) leaves the client in the room it was in.
    """
    server = twistd("--port", "tcp:0:interface=127.0.0.1", "--max-metadata-size", "200")
    alice = await connect(envelope_url(server))
    alice.send_json(
        {"type": "JOIN", "room_id": "home", "payload": {"display_name": "Alice"}}
    )
    assert (await alice.next())["type"] == "ACK"
    alice.send_json(
        {
            "type": "JOIN",
            "room_id": "away",
            "payload": {"display_name": "A" * 300},
            "request_id": 2,
        }
    )
    refused = await alice.next()
    assert (refused["type"], refused["request_id"], refused["payload"]["code"]) == (
        "ERROR",
        2,
        "INVALID_MESSAGE",
    )
    alice.send_json({"type": "DISCOVER", "request_id": 3})
    listing = await alice.next()
    assert (listing["type"], listing["room_id"]) == ("PEER_LIST", "home")
    assert [peer["peer_id"] for peer in listing["payload"]["peers"]] == [alice.peer_id]
    alice.sendClose()
    await alice.closed
