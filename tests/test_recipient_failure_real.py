"""
A recipient whose render raises, over real sockets: an in-process site on a
listening port of 127.0.0.1 (the broken render is put into one recipient's
connection there), reached by native WebSocket, Socket.IO over WebSocket and
Socket.IO over long-polling clients.
"""

from __future__ import annotations


import orjson
import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.web.server import Site

from signaling.hub import Hub
from signaling.transports.websocket import WebSocketSettings

from .realsockets import open_websocket
from .support import BrokenEventSet, broken_render, make_site

TIMEOUT = 5


class EngineIOClient(WebSocketClientProtocol):
    """
    A raw Engine.IO WebSocket client: its text frames wait in a queue.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frames: DeferredQueue = DeferredQueue()
        self.closed: Deferred = Deferred()

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.put(payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.closed.called:
            self.closed.callback(code)

    def send_text(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"))

    def next(self) -> Deferred:
        return self.frames.get().addTimeout(TIMEOUT, reactor)


@pytest.fixture
def server():
    hub = Hub(clock=reactor)
    site = make_site(hub, WebSocketSettings(ping_interval=0))
    port = reactor.listenTCP(0, Site(site.resource()), interface="127.0.0.1")
    yield hub, f"127.0.0.1:{port.getHost().port}"
    port.stopListening()


async def native_member(base: str, name: str):
    client = await open_websocket(f"ws://{base}/signal")
    welcome = await client.next()
    client.id = welcome["peerId"]
    client.send_json({"type": "join", "room": "room", "metadata": {"name": name}})
    assert (await client.next())["type"] == "joined"
    return client


async def broadcast_and_check(hub: Hub, sender, other, failed_id: str) -> None:
    """
    The sender relays a candidate to the room; the other member gets it and
    then hears the failed peer leave; the sender stays open; the hub has
    forgotten the failed peer.
    """
    sender.send_json(
        {"type": "candidate", "room": "room", "payload": {"candidate": "c"}}
    )
    candidate = await other.next()
    assert candidate == {
        "type": "candidate",
        "room": "room",
        "from": sender.id,
        "payload": {"candidate": "c"},
    }
    left = await other.next()
    assert (left["type"], left["peer"]["id"]) == ("peer-left", failed_id)
    assert (await sender.next())["type"] == "peer-left"
    assert not sender.closed.called
    assert hub.find(failed_id) is None
    assert set(hub.room("room").members) == {sender.id, other.id}


async def close_all(*clients) -> None:
    for client in clients:
        client.sendClose()
        await client.closed.addTimeout(TIMEOUT, reactor)


async def two_natives(base: str):
    sender = await native_member(base, "sender")
    other = await native_member(base, "other")
    assert (await sender.next())["type"] == "peer-joined"
    return sender, other


@pytest_twisted.ensureDeferred
async def test_native_websocket_recipient(server):
    """
    A native recipient whose render fails is closed with 1011.
    """
    hub, base = server
    sender, other = await two_natives(base)
    broken = await native_member(base, "broken")
    for client in (sender, other):
        assert (await client.next())["type"] == "peer-joined"
    hub.find(broken.id).connection.session.render = broken_render
    await broadcast_and_check(hub, sender, other, broken.id)
    assert await broken.closed.addTimeout(TIMEOUT, reactor) == 1011
    await close_all(sender, other)


@pytest_twisted.ensureDeferred
async def test_socketio_websocket_recipient(server):
    """
    A Socket.IO recipient on a WebSocket whose render fails is closed with
    1011 and gets no Socket.IO DISCONNECT.
    """
    hub, base = server
    sender, other = await two_natives(base)
    factory = WebSocketClientFactory(
        f"ws://{base}/socket.io/?EIO=4&transport=websocket"
    )
    factory.protocol = EngineIOClient
    factory.setProtocolOptions(autoPingInterval=0, failByDrop=False)
    factory.opened = Deferred()
    connectWS(factory, timeout=TIMEOUT)
    broken = await factory.opened.addTimeout(TIMEOUT, reactor)
    assert (await broken.next())[0] == "0"
    broken.send_text("40")
    connected = await broken.next()
    socket_id = orjson.loads(connected[2:])["sid"]
    broken.send_text('42["join-room",{"roomId":"room"}]')
    assert (await broken.next()).startswith('42["room-users"')
    for client in (sender, other):
        assert (await client.next())["type"] == "peer-joined"
    hub.find(socket_id).connection._room_sets["room"] = BrokenEventSet
    await broadcast_and_check(hub, sender, other, socket_id)
    assert await broken.closed.addTimeout(TIMEOUT, reactor) == 1011
    assert broken.frames.pending == []
    await close_all(sender, other)


@pytest_twisted.ensureDeferred
async def test_socketio_polling_recipient(server):
    """
    A Socket.IO recipient on long-polling whose render fails gets an
    Engine.IO close packet and no Socket.IO DISCONNECT; its session is gone.
    """
    hub, base = server
    sender, other = await two_natives(base)
    url = f"http://{base}/socket.io/?EIO=4&transport=polling"

    async def request(
        method: str, query: str = "", body: bytes | None = None
    ) -> tuple[int, str]:
        response = await treq.request(method, url + query, data=body).addTimeout(
            TIMEOUT, reactor
        )
        return response.code, (await treq.text_content(response, "utf-8"))

    code, opened = await request("GET")
    sid = orjson.loads(opened[1:])["sid"]
    query = f"&sid={sid}"
    assert (await request("POST", query, b"40"))[0] == 200
    code, connected = await request("GET", query)
    socket_id = orjson.loads(connected[2:])["sid"]
    assert (await request("POST", query, b'42["join-room",{"roomId":"room"}]'))[
        0
    ] == 200
    code, joined = await request("GET", query)
    assert joined.startswith('42["room-users"')
    for client in (sender, other):
        assert (await client.next())["type"] == "peer-joined"
    hub.find(socket_id).connection._room_sets["room"] = BrokenEventSet
    await broadcast_and_check(hub, sender, other, socket_id)
    assert await request("GET", query) == (200, "1")
    assert (await request("GET", query))[0] == 400
    await close_all(sender, other)
