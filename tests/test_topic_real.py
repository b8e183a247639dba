"""
The topic dialect's typical flow against a real twistd, and a stalled reader
over a real socket.
"""

import pytest
import pytest_twisted

from .realsockets import TwistdServer, open_websocket


@pytest.fixture
def server(tmp_path):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--max-send-buffer",
        "65536",
        "--max-message-rate",
        "0",
    )
    server.start(tmp_path / "twistd.log")
    yield server
    server.stop()


def base_url(server):
    return server.urls[0].rsplit("/", 1)[0]


async def connect(server, topic):
    client = await open_websocket(f"{base_url(server)}/ws/{topic}")
    welcome = await client.next()
    peer_list = await client.next()
    client.peer_id = welcome["selfId"]
    client.peer_list = peer_list
    return client


@pytest_twisted.ensureDeferred
async def test_typical_flow(server):
    """
    Steps 1 to 6 of the document's typical flow.
    """
    alice = await connect(server, "my-room")
    assert alice.peer_list == {"type": "peer-list", "peers": []}
    bob = await connect(server, "my-room")
    assert bob.peer_list == {"type": "peer-list", "peers": [{"id": alice.peer_id}]}
    assert await alice.next() == {"type": "peer-joined", "peerId": bob.peer_id}

    bob.send_json(
        {"type": "offer", "to": alice.peer_id, "payload": {"sdp": "o"}, "msgId": "1"}
    )
    # As the original's outbound message: {type, from, payload, msgId}, no "to".
    assert await alice.next() == {
        "type": "offer",
        "from": bob.peer_id,
        "payload": {"sdp": "o"},
        "msgId": "1",
    }
    alice.send_json(
        {"type": "answer", "to": bob.peer_id, "payload": {"sdp": "a"}, "msgId": "2"}
    )
    assert await bob.next() == {
        "type": "answer",
        "from": alice.peer_id,
        "payload": {"sdp": "a"},
        "msgId": "2",
    }
    alice.send_json(
        {"type": "ice-candidate", "to": bob.peer_id, "payload": {"candidate": "a1"}}
    )
    bob.send_json(
        {"type": "ice-candidate", "to": alice.peer_id, "payload": {"candidate": "b1"}}
    )
    assert (await bob.next())["payload"] == {"candidate": "a1"}
    assert (await alice.next())["payload"] == {"candidate": "b1"}

    bob.sendClose()
    await bob.closed
    assert await alice.next() == {"type": "peer-left", "peerId": bob.peer_id}
    alice.sendClose()
    await alice.closed


@pytest_twisted.ensureDeferred
async def test_stalled_reader_makes_the_sender_see_dropped(server):
    """
    A peer that stops reading does not make the server buffer without
    bound: once the kernel's and the server's buffers are full, the sender
    gets dropped, and a third peer is still served.
    """
    slow = await connect(server, "flood")
    sender = await connect(server, "flood")
    await slow.next()
    slow.transport.pauseProducing()
    payload = "x" * 60000
    dropped = None
    for index in range(400):
        sender.send_json(
            {"type": "offer", "to": slow.peer_id, "payload": payload, "msgId": index}
        )
        if index % 20 == 19:
            sender.send_json({"type": "offer", "to": "nobody", "msgId": "probe"})
            while True:
                reply = await sender.next(timeout=10)
                if reply["code"] == "dropped" and dropped is None:
                    dropped = reply["msgId"]
                if reply["msgId"] == "probe":
                    break
            if dropped is not None:
                break
    assert dropped is not None, "the sender never saw dropped"

    third = await connect(server, "flood")
    assert {peer["id"] for peer in third.peer_list["peers"]} == {
        slow.peer_id,
        sender.peer_id,
    }
    for client in (third, sender):
        client.sendClose()
        await client.closed
    slow.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_binary_frames_as_the_original(server):
    """
    JSON in a binary frame is handled like a text frame; a binary frame
    that is not JSON closes the connection with 1007.
    """
    alice = await connect(server, "binary")
    bob = await connect(server, "binary")
    await alice.next()
    bob.sendMessage(
        b'{"type":"offer","to":"%s","payload":{"sdp":"o"},"msgId":7}'
        % alice.peer_id.encode(),
        isBinary=True,
    )
    assert await alice.next() == {
        "type": "offer",
        "from": bob.peer_id,
        "payload": {"sdp": "o"},
        "msgId": 7,
    }
    bob.sendMessage(b'{"type":"offer","to":"nobody","msgId":8}', isBinary=True)
    assert await bob.next() == {
        "type": "error",
        "code": "target_not_found",
        "message": "peer not found",
        "msgId": 8,
    }
    bob.sendMessage(b"\x00\x01 not json", isBinary=True)
    assert await bob.closed == 1007
    assert await alice.next() == {"type": "peer-left", "peerId": bob.peer_id}
    alice.sendClose()
    await alice.closed
