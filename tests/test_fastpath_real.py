"""
The relay over a real listening server, on the fast paths and on plain
Autobahn (C{--no-fast-paths}): the same messages and close codes either way.
"""

from __future__ import annotations

import orjson
import pytest
import pytest_twisted

from signaling import fastpath

from .realsockets import TwistdServer, open_websocket


@pytest.fixture(params=[(), ("--no-fast-paths",)], ids=["fast-paths", "plain-autobahn"])
def server(request, tmp_path):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--max-message-size",
        "2000",
        *request.param,
    )
    server.start(tmp_path / "twistd.log")
    yield server
    server.stop()


async def join(url, room):
    client = await open_websocket(url)
    client.peer_id = (await client.next())["peerId"]
    client.send_json({"type": "join", "room": room})
    assert (await client.next())["type"] == "joined"
    return client


@pytest_twisted.ensureDeferred
async def test_relay_and_framing(server):
    """
    Offers of every frame-length form (7-bit, 16-bit, the boundaries
    between) and one sent in fragments arrive whole and in order; a message
    over the size limit gets the dialect's error and a 1009 close. Only
    with the fast paths off does the log say so, once.
    """
    [url] = server.urls
    alice = await join(url, "r")
    bob = await join(url, "r")
    assert (await alice.next())["type"] == "peer-joined"

    def offer(payload: str) -> dict:
        return {"type": "offer", "room": "r", "to": bob.peer_id, "payload": payload}

    # Frames of 125 and 126 bytes: the last 7-bit length and the first 16-bit one.
    overhead = len(orjson.dumps(offer("")))
    sizes = [1, 125 - overhead, 126 - overhead, 1000]
    for size in sizes:
        alice.send_json(offer("x" * size))
    alice.sendFrame(
        1, b'{"type":"offer","room":"r","to":"' + bob.peer_id.encode(), fin=False
    )
    alice.sendFrame(0, b'","payload":"fragmented"}', fin=True)
    received = [(await bob.next())["payload"] for _ in range(len(sizes) + 1)]
    assert received == ["x" * size for size in sizes] + ["fragmented"]

    alice.send_json(offer("x" * 3000))
    assert (await alice.next())["code"] == "message-too-large"
    assert await alice.closed == 1009
    assert (await bob.next())["type"] == "peer-left"
    bob.sendClose()
    await bob.closed

    off_lines = [line for line in server.log().splitlines() if "fast paths off" in line]
    if "--no-fast-paths" in server.args:
        assert len(off_lines) == 1, off_lines
        assert "plain Autobahn in use: turned off (--no-fast-paths)" in off_lines[0]
    elif fastpath.check(fastpath.Versions.installed()) is None:
        assert off_lines == []
    else:
        assert len(off_lines) == 1 and "outside the versions" in off_lines[0], off_lines
