"""
Peers of the topic, envelope and native dialects in one room of a real
twistd: each is announced in the others' own shapes, under the id that
reaches it, and offers, answers and candidates pass between every pair.
"""

import pytest
import pytest_twisted

from .realsockets import TwistdServer, open_websocket


@pytest.fixture
def server(tmp_path):
    server = TwistdServer("--port", "tcp:0:interface=127.0.0.1", "--ping-interval", "0")
    server.start(tmp_path / "twistd.log")
    yield server
    server.stop()


class Native:
    """
    A native client: sends and reads the native shapes.
    """

    @classmethod
    async def join(cls, base, room):
        self = cls()
        self.client = await open_websocket(f"{base}/signal")
        self.id = (await self.client.next())["peerId"]
        self.client.send_json(
            {"type": "join", "room": room, "metadata": {"name": "native"}}
        )
        self.joined = await self.client.next()
        self.room = room
        return self

    def send(self, kind, to, payload):
        self.client.send_json(
            {"type": kind, "room": self.room, "to": to, "payload": payload}
        )

    async def receive(self):
        message = await self.client.next()
        return message["type"], message["from"], message["payload"]

    async def announced(self):
        message = await self.client.next()
        assert message["type"] == "peer-joined"
        return message["peer"]["id"]


class Topic:
    @classmethod
    async def join(cls, base, room):
        self = cls()
        self.client = await open_websocket(f"{base}/ws/{room}")
        self.id = (await self.client.next())["selfId"]
        self.peer_list = await self.client.next()
        return self

    def send(self, kind, to, payload):
        wire = {"candidate": "ice-candidate"}.get(kind, kind)
        self.client.send_json(
            {"type": wire, "to": to, "payload": payload, "msgId": "m"}
        )

    async def receive(self):
        message = await self.client.next()
        kind = {"ice-candidate": "candidate"}.get(message["type"], message["type"])
        return kind, message["from"], message["payload"]

    async def announced(self):
        message = await self.client.next()
        assert message["type"] == "peer-joined"
        return message["peerId"]


class Envelope:
    @classmethod
    async def join(cls, base, room):
        self = cls()
        self.client = await open_websocket(f"{base}/ws")
        self.id = (await self.client.next())["peer_id"]
        self.client.send_json(
            {
                "type": "JOIN",
                "room_id": room,
                "payload": {"display_name": "env"},
                "request_id": "j",
            }
        )
        self.ack = await self.client.next()
        return self

    def send(self, kind, to, payload):
        self.client.send_json(
            {"type": kind.upper(), "target_id": to, "payload": payload}
        )

    async def receive(self):
        message = await self.client.next()
        return message["type"].lower(), message["peer_id"], message["payload"]

    async def announced(self):
        message = await self.client.next()
        assert message["type"] == "PEER_JOINED"
        return message["peer_id"]


@pytest_twisted.ensureDeferred
async def test_three_dialects_in_one_room(server):
    base = server.urls[0].rsplit("/", 1)[0]
    topic = await Topic.join(base, "lobby")
    envelope = await Envelope.join(base, "lobby")
    native = await Native.join(base, "lobby")

    # Each newcomer is announced to those already there, in their shapes.
    assert await topic.announced() == envelope.id
    assert await topic.announced() == native.id
    assert await envelope.announced() == native.id
    # Each joiner's list names those already there, in its own shape.
    assert [peer["peer_id"] for peer in envelope.ack["payload"]["peers"]] == [
        topic.id,
        envelope.id,
    ]
    assert {
        "peer_id": topic.id,
        "joined_at": envelope.ack["payload"]["peers"][0]["joined_at"],
    } == envelope.ack["payload"]["peers"][0]
    assert [peer["id"] for peer in native.joined["peers"]] == [topic.id, envelope.id]
    assert native.joined["peers"][1]["metadata"] == {"display_name": "env"}

    peers = [topic, envelope, native]
    for sender in peers:
        for receiver in peers:
            if sender is receiver:
                continue
            for kind, payload in (
                ("offer", {"type": "offer", "sdp": f"v=0 {sender.id}"}),
                ("answer", {"type": "answer", "sdp": f"v=0 {receiver.id}"}),
                (
                    "candidate",
                    {
                        "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                        "sdpMid": "0",
                    },
                ),
            ):
                sender.send(kind, receiver.id, payload)
                assert await receiver.receive() == (kind, sender.id, payload)

    for peer in peers:
        peer.client.sendClose()
        await peer.client.closed
