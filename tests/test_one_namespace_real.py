"""
Every room dialect in one room of a real twistd: a topic peer on
/ws/lobby, an envelope peer that JOINs lobby, a native peer, a Socket.IO
rooms client and a Socket.IO calls client. Each sees the others, announced in
its own shape under the id that reaches them, and offers, answers and
candidates pass between every pair with their payloads unchanged.
"""

from __future__ import annotations

import json
import queue

import pytest
import socketio
import websocket

from .realsockets import TwistdServer

TIMEOUT = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        env={"JWT_SECRET": ""},
    )
    server.start(tmp_path_factory.mktemp("namespace") / "twistd.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    server.http = server.base.replace("ws://", "http://")
    yield server
    server.stop()


class RawPeer:
    """
    A blocking WebSocket client of one of the raw-WebSocket dialects.
    """

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=TIMEOUT)

    def send_json(self, message) -> None:
        self.ws.send(json.dumps(message))

    def next(self):
        return json.loads(self.ws.recv())

    def close(self) -> None:
        self.ws.close()


class Native(RawPeer):
    name = "native"

    def __init__(self, server) -> None:
        super().__init__(f"{server.base}/signal")
        self.id = self.next()["peerId"]
        self.send_json(
            {"type": "join", "room": "lobby", "metadata": {"name": "native"}}
        )
        self.existing = [peer["id"] for peer in self.next()["peers"]]

    def announced(self) -> str:
        message = self.next()
        assert message["type"] == "peer-joined", message
        return message["peer"]["id"]

    def send(self, kind, to, payload) -> None:
        self.send_json({"type": kind, "room": "lobby", "to": to, "payload": payload})

    def receive(self):
        message = self.next()
        return message["type"], message["from"], message["payload"]


class Topic(RawPeer):
    name = "topic"

    def __init__(self, server) -> None:
        super().__init__(f"{server.base}/ws/lobby")
        self.id = self.next()["selfId"]
        self.existing = [peer["id"] for peer in self.next()["peers"]]

    def announced(self) -> str:
        message = self.next()
        assert message["type"] == "peer-joined", message
        return message["peerId"]

    def send(self, kind, to, payload) -> None:
        wire = "ice-candidate" if kind == "candidate" else kind
        self.send_json({"type": wire, "to": to, "payload": payload})

    def receive(self):
        message = self.next()
        kind = "candidate" if message["type"] == "ice-candidate" else message["type"]
        return kind, message["from"], message["payload"]


class Envelope(RawPeer):
    name = "envelope"

    def __init__(self, server) -> None:
        super().__init__(f"{server.base}/ws")
        self.id = self.next()["peer_id"]
        self.send_json(
            {
                "type": "JOIN",
                "room_id": "lobby",
                "payload": {"display_name": "envelope"},
            }
        )
        peers = self.next()["payload"]["peers"]
        self.existing = [
            peer["peer_id"] for peer in peers if peer["peer_id"] != self.id
        ]

    def announced(self) -> str:
        message = self.next()
        assert message["type"] == "PEER_JOINED", message
        return message["peer_id"]

    def send(self, kind, to, payload) -> None:
        self.send_json({"type": kind.upper(), "target_id": to, "payload": payload})

    def receive(self):
        message = self.next()
        return message["type"].lower(), message["peer_id"], message["payload"]


class SocketIOPeer:
    """
    A python-socketio client whose events wait in a queue.
    """

    events: tuple[str, ...] = ()

    def __init__(self, server) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self.client = socketio.Client(reconnection=False)
        for event in self.events:
            self.client.on(
                event, lambda data, event=event: self.inbox.put((event, data))
            )
        self.client.connect(
            server.http,
            transports=["websocket"],
            auth={"userId": self.name},
            wait_timeout=TIMEOUT,
        )
        self.id = self.client.get_sid()

    def next(self):
        return self.inbox.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()


class Rooms(SocketIOPeer):
    name = "rooms"
    events = ("room-users", "user-joined", "offer", "answer", "ice-candidate", "error")

    def __init__(self, server) -> None:
        super().__init__(server)
        self.client.emit("join-room", {"roomId": "lobby", "userId": "rooms"})
        event, data = self.next()
        assert event == "room-users", (event, data)
        self.existing = [user["socketId"] for user in data["users"]]

    def announced(self) -> str:
        event, data = self.next()
        assert event == "user-joined", (event, data)
        return data["socketId"]

    def send(self, kind, to, payload) -> None:
        event = "ice-candidate" if kind == "candidate" else kind
        self.client.emit(event, {"roomId": "lobby", "targetId": to, kind: payload})

    def receive(self):
        event, data = self.next()
        kind = "candidate" if event == "ice-candidate" else event
        return kind, data["senderId"], data[kind]


class Calls(SocketIOPeer):
    name = "calls"
    events = (
        "webrtc:room-joined",
        "webrtc:participant-joined",
        "webrtc:offer",
        "webrtc:answer",
        "webrtc:ice-candidate",
        "webrtc:signaling-error",
    )

    def __init__(self, server) -> None:
        super().__init__(server)
        self.client.emit(
            "webrtc:join-room", {"callRoomId": "lobby", "callType": "video"}
        )
        event, data = self.next()
        assert event == "webrtc:room-joined", (event, data)
        self.existing = [p["socketId"] for p in data["existingParticipants"]]

    def announced(self) -> str:
        event, data = self.next()
        assert event == "webrtc:participant-joined", (event, data)
        return data["participant"]["socketId"]

    def send(self, kind, to, payload) -> None:
        event = "webrtc:ice-candidate" if kind == "candidate" else f"webrtc:{kind}"
        self.client.emit(
            event, {"callRoomId": "lobby", "targetSocketId": to, kind: payload}
        )

    def receive(self):
        event, data = self.next()
        kind = event.removeprefix("webrtc:").replace("ice-candidate", "candidate")
        return kind, data["fromSocketId"], data[kind]


def test_every_dialect_in_one_room(server):
    every_dialect_in_one_room([server])


def every_dialect_in_one_room(servers, settled=lambda count: None):
    """
    One peer of each dialect joins lobby, the n-th on C{servers[n % len]}.

    :param settled: Called with how many peers are in the room once each
        has joined; returns when every server shows that many.
    """
    peers = []
    try:
        for index, dialect in enumerate((Topic, Envelope, Native, Rooms, Calls)):
            newcomer = dialect(servers[index % len(servers)])
            # The newcomer's list names everyone already there, by the id
            # that reaches them; everyone already there is told of it.
            assert newcomer.existing == [peer.id for peer in peers], newcomer.name
            for peer in peers:
                assert peer.announced() == newcomer.id, (peer.name, newcomer.name)
            peers.append(newcomer)
            settled(len(peers))

        for sender in peers:
            for receiver in peers:
                if sender is receiver:
                    continue
                for kind, payload in (
                    ("offer", {"type": "offer", "sdp": f"v=0 from {sender.name}"}),
                    ("answer", {"type": "answer", "sdp": f"v=0 from {sender.name}"}),
                    (
                        "candidate",
                        {
                            "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                            "sdpMid": "0",
                            "sdpMLineIndex": 0,
                        },
                    ),
                ):
                    sender.send(kind, receiver.id, payload)
                    assert receiver.receive() == (kind, sender.id, payload), (
                        sender.name,
                        receiver.name,
                        kind,
                    )
    finally:
        for peer in peers:
            peer.close()
