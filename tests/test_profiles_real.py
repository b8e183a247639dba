"""
What each dialect shows of a member of another, over a real twistd without a
key: every dialect maps its own fields to the hub member's profile on join,
and shows the others from it in its own shape.
"""

from __future__ import annotations

import json
import queue

import pytest
import socketio
import websocket

from .realsockets import TwistdServer

TIMEOUT = 10
ROOM = "profiles"
NATIVE_METADATA = {
    "display_name": "Nat",
    "username": "nat",
    "realName": "Nat King",
    "userId": "nat-id",
    "endpoint": {"ip": "192.0.2.1", "port": 5000},
}


@pytest.fixture
def server(tmp_path):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        env={"JWT_SECRET": ""},
    )
    server.start(tmp_path / "twistd.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    server.http = server.base.replace("ws://", "http://")
    yield server
    server.stop()


def raw(url: str) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=TIMEOUT)


def receive(ws: websocket.WebSocket) -> dict:
    return json.loads(ws.recv())


def socketio_client(
    server, events: tuple[str, ...], auth: dict
) -> tuple[socketio.Client, queue.Queue]:
    inbox: queue.Queue = queue.Queue()
    client = socketio.Client(reconnection=False)
    for event in events:
        client.on(event, lambda data, event=event: inbox.put((event, data)))
    client.connect(
        server.http, transports=["websocket"], auth=auth, wait_timeout=TIMEOUT
    )
    return client, inbox


def test_members_of_every_dialect_as_the_others_show_them(server):
    """
    A native member's display name, user id, names and endpoint; an envelope
    member's display name; a Socket.IO member's claimed user id: each as the
    other dialects show them.
    """
    native = raw(f"{server.base}/signal")
    native_id = receive(native)["peerId"]
    native.send(json.dumps({"type": "join", "room": ROOM, "metadata": NATIVE_METADATA}))
    assert receive(native)["type"] == "joined"

    envelope = raw(f"{server.base}/ws")
    envelope_id = receive(envelope)["peer_id"]
    envelope.send(
        json.dumps(
            {"type": "JOIN", "room_id": ROOM, "payload": {"display_name": "Eve"}}
        )
    )
    peers = receive(envelope)["payload"]["peers"]
    assert peers[0] == {
        "peer_id": native_id,
        "display_name": "Nat",
        "endpoint": {"ip": "192.0.2.1", "port": 5000},
        "joined_at": peers[0]["joined_at"],
    }
    assert receive(native)["peer"] == {
        "id": envelope_id,
        "metadata": {"display_name": "Eve"},
    }

    rooms, rooms_inbox = socketio_client(server, ("room-users",), {"userId": "rita"})
    calls, calls_inbox = socketio_client(
        server, ("webrtc:room-joined",), {"userId": "carl"}
    )
    try:
        rooms.emit("join-room", {"roomId": ROOM})
        event, data = rooms_inbox.get(timeout=TIMEOUT)
        assert event == "room-users"
        assert data["users"] == [
            {"socketId": native_id, "userId": "nat-id"},
            {"socketId": envelope_id, "userId": None},
        ]
        rooms_id = rooms.get_sid()
        joined = receive(envelope)
        assert (joined["type"], joined["payload"]["display_name"]) == (
            "PEER_JOINED",
            "rita",
        )

        calls.emit(
            "webrtc:join-room", {"callRoomId": ROOM, "metadata": {"username": "carl"}}
        )
        event, data = calls_inbox.get(timeout=TIMEOUT)
        assert event == "webrtc:room-joined"
        shown = {
            p["socketId"]: (p["userId"], p["username"], p["realName"], p["callType"])
            for p in data["existingParticipants"]
        }
        assert shown == {
            native_id: ("nat-id", "nat", "Nat King", None),
            envelope_id: (None, "Eve", None, None),
            rooms_id: ("rita", None, None, None),
        }
        joined = receive(envelope)
        assert (joined["type"], joined["payload"]["display_name"]) == (
            "PEER_JOINED",
            "carl",
        )
    finally:
        rooms.disconnect()
        calls.disconnect()
        native.close()
        envelope.close()
