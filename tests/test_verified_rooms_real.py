"""
Who can meet whom, over a real C{twistd -n signaling --jwt-secret}: a call
room created by a verified user admits only verified users, whatever dialect
a tokenless client tries, and a user id a client merely claims is never shown
to others as C{userId} or C{fromUserId}.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
import requests
import websocket

from .realsockets import SocketIOQueueClient, TwistdServer

SECRET = "the verified-rooms test secret, long enough for HS256"
TIMEOUT = 5
OFFER = {"type": "offer", "sdp": "v=0\r\n"}


def make_token(user_id: str, **claims) -> str:
    return jwt.encode(
        {"userId": user_id, "exp": int(time.time()) + 600, **claims},
        SECRET,
        algorithm="HS256",
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--jwt-secret",
        SECRET,
        env={"JWT_SECRET": ""},
    )
    server.start(tmp_path_factory.mktemp("verified") / "twistd.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    server.http = server.base.replace("ws://", "http://")
    yield server
    server.stop()


class Raw:
    """
    A blocking client of a raw-WebSocket dialect.
    """

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=TIMEOUT)

    def send(self, message) -> None:
        self.ws.send(json.dumps(message))

    def next(self):
        return json.loads(self.ws.recv())

    def close(self) -> None:
        self.ws.close()


def socketio_client(server, auth: dict | None = None) -> SocketIOQueueClient:
    return SocketIOQueueClient(server.http, auth, TIMEOUT)


def test_a_verified_call_room_refuses_tokenless_peers_of_every_dialect(server):
    """
    Alice (a valid token) creates call room C. Tokenless clients of every
    dialect try to join C, one claiming to be Alice; each gets its dialect's
    refusal, and Alice hears of none of them, only of verified Bob.
    """
    room = "call-verified"
    alice = socketio_client(server, {"token": make_token("alice")})
    opened = [alice]
    try:
        alice.emit("webrtc:join-room", {"callRoomId": room, "callType": "video"})
        assert alice.next()[0] == "webrtc:room-joined"

        # The rooms (000) events on a tokenless Socket.IO connection.
        intruder = socketio_client(server, {"userId": "alice"})
        opened.append(intruder)
        intruder.emit("webrtc:join-room", {"callRoomId": room})
        assert intruder.next()[0] == "webrtc:join-room-error"
        intruder.emit("join-room", {"roomId": room, "userId": "alice"})
        event, body = intruder.next()
        assert (event, body["event"], body["code"]) == (
            "error",
            "join-room",
            "forbidden",
        )
        intruder.emit("offer", {"roomId": room, "targetId": alice.id, "offer": OFFER})
        assert intruder.next()[1]["code"] == "not-in-room"

        native = Raw(f"{server.base}/signal")
        opened.append(native)
        native.next()
        native.send(
            {"type": "join", "room": room, "metadata": {"userId": "alice"}, "id": 1}
        )
        reply = native.next()
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 1)

        envelope = Raw(f"{server.base}/ws")
        opened.append(envelope)
        envelope.next()
        envelope.send(
            {
                "type": "JOIN",
                "room_id": room,
                "request_id": "j1",
                "payload": {"display_name": "alice"},
            }
        )
        reply = envelope.next()
        assert (reply["type"], reply["payload"]["code"], reply["request_id"]) == (
            "ERROR",
            "UNAUTHORIZED",
            "j1",
        )

        directory = Raw(f"{server.base}/directory")
        opened.append(directory)
        directory.send({"type": "register", "userId": "alice", "publicKey": "k"})
        assert directory.next()["type"] == "registered"
        directory.send({"type": "join", "room": room})
        reply = directory.next()
        assert (reply["type"], reply["code"]) == ("error", "forbidden")

        topic = Raw(f"{server.base}/ws/{room}")
        opened.append(topic)
        reply = topic.next()
        assert (reply["type"], reply["code"]) == ("error", "forbidden")
        opcode, data = topic.ws.recv_data(control_frame=True)
        assert (opcode, int.from_bytes(data[:2], "big")) == (
            websocket.ABNF.OPCODE_CLOSE,
            1008,
        )

        detail = requests.get(f"{server.http}/api/rooms/{room}", timeout=TIMEOUT).json()
        assert [peer["peer_id"] for peer in detail["peers"]] == [alice.id]

        bob = socketio_client(server, {"token": make_token("bob")})
        opened.append(bob)
        bob.emit("webrtc:join-room", {"callRoomId": room})
        event, body = bob.next()
        assert (event, body["participantCount"]) == ("webrtc:room-joined", 2)
        # Alice's first notice since she joined is Bob: no intruder got in.
        event, body = alice.next()
        assert (
            event,
            body["participant"]["socketId"],
            body["participant"]["userId"],
        ) == (
            "webrtc:participant-joined",
            bob.id,
            "bob",
        )
    finally:
        for client in opened:
            client.close()


def test_a_claimed_user_id_is_not_shown_as_userId(server):
    """
    In a room a tokenless client created, a verified user meets clients
    that say they are Alice: they are shown with C{userId} null and the
    claim as C{claimedUserId}, and their offers come with C{fromUserId}
    null.
    """
    room = "open-room"
    opened = []
    try:
        squatter = socketio_client(server, {"userId": "alice"})
        opened.append(squatter)
        squatter.emit("join-room", {"roomId": room, "userId": "alice"})
        assert squatter.next() == ("room-users", {"roomId": room, "users": []})
        native = Raw(f"{server.base}/signal")
        opened.append(native)
        native_id = native.next()["peerId"]
        native.send({"type": "join", "room": room, "metadata": {"userId": "alice"}})
        assert native.next()["type"] == "joined"
        assert squatter.next() == (
            "user-joined",
            {
                "roomId": room,
                "socketId": native_id,
                "userId": None,
                "claimedUserId": "alice",
            },
        )

        bob = socketio_client(server, {"token": make_token("bob")})
        opened.append(bob)
        bob.emit("webrtc:join-room", {"callRoomId": room})
        event, body = bob.next()
        assert event == "webrtc:room-joined"
        shown = {
            p["socketId"]: (p["userId"], p["claimedUserId"])
            for p in body["existingParticipants"]
        }
        assert shown == {squatter.id: (None, "alice"), native_id: (None, "alice")}

        event, body = squatter.next()
        assert (event, body["socketId"], body["userId"]) == (
            "user-joined",
            bob.id,
            "bob",
        )
        squatter.emit("offer", {"roomId": room, "targetId": bob.id, "offer": OFFER})
        event, body = bob.next()
        assert (event, body["fromSocketId"], body["fromUserId"], body["offer"]) == (
            "webrtc:offer",
            squatter.id,
            None,
            OFFER,
        )
        native.send({"type": "offer", "room": room, "to": bob.id, "payload": OFFER})
        event, body = bob.next()
        assert (event, body["fromSocketId"], body["fromUserId"]) == (
            "webrtc:offer",
            native_id,
            None,
        )
    finally:
        for client in opened:
            client.close()
