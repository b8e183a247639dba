"""
The calls (002) event set as its original behaved, over a real C{twistd -n
signaling}: events without a handler get no answer, participants carry
their names, and joining or leaving twice is answered as the first time.
"""

from __future__ import annotations

import time

import jwt
import pytest
import requests

from .realsockets import SocketIOQueueClient, TwistdServer

SECRET = "the calls test secret, long enough for HS256"
TIMEOUT = 5


def make_token(user_id: str, **claims) -> str:
    return jwt.encode(
        {"userId": user_id, "exp": int(time.time()) + 600, **claims},
        SECRET,
        algorithm="HS256",
    )


def _start(tmp_path_factory, name: str, *args: str):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        *args,
        env={"JWT_SECRET": ""},
    )
    server.start(tmp_path_factory.mktemp(name) / "twistd.log")
    server.http = server.urls[0].rsplit("/", 1)[0].replace("ws://", "http://")
    return server


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory):
    server = _start(tmp_path_factory, "calls-jwt", "--jwt-secret", SECRET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    server = _start(tmp_path_factory, "calls-open")
    yield server
    server.stop()


def caller(server, auth: dict | None = None) -> SocketIOQueueClient:
    return SocketIOQueueClient(server.http, auth, TIMEOUT)


def unhandled_events(server) -> int:
    stats = requests.get(f"{server.http}/api/stats", timeout=TIMEOUT).json()
    return stats["socketio"]["unhandled_events"]


def test_events_without_a_handler_get_no_answer(jwt_server):
    """
    The calls client emits webrtc:signaling-error itself (to say "busy")
    and chat events on the same socket: nobody is answered, not even an
    acknowledgement, and they are counted in /api/stats.
    """
    before = unhandled_events(jwt_server)
    alice = caller(jwt_server, {"token": make_token("alice")})
    bob = caller(jwt_server, {"token": make_token("bob")})
    acknowledged = []
    try:
        alice.emit("webrtc:join-room", {"callRoomId": "busy-call"})
        assert alice.next()[0] == "webrtc:room-joined"
        bob.emit("webrtc:join-room", {"callRoomId": "busy-call"})
        assert bob.next()[0] == "webrtc:room-joined"
        assert alice.next()[0] == "webrtc:participant-joined"

        bob.emit(
            "webrtc:signaling-error",
            {"callRoomId": "busy-call", "targetSocketId": alice.id, "error": "busy"},
        )
        bob.emit(
            "chat:message",
            {"text": "hello"},
            callback=lambda *answer: acknowledged.append(answer),
        )
        bob.emit("typing", {"chatId": "c1"})
        # The next thing either hears is the answer to this, so nothing
        # came before it.
        bob.emit("webrtc:join-room", {"callRoomId": "second-call"})
        event, body = bob.next()
        assert (event, body["callRoomId"]) == ("webrtc:room-joined", "second-call")
        alice.emit("webrtc:leave-room", {"callRoomId": "busy-call"})
        assert alice.next()[0] == "webrtc:room-left"
        assert bob.next()[0] == "webrtc:participant-left"
        assert acknowledged == []
        assert unhandled_events(jwt_server) == before + 3
    finally:
        alice.close()
        bob.close()


def names(participant: dict) -> tuple:
    return (
        participant["socketId"],
        participant["userId"],
        participant["username"],
        participant["realName"],
    )


def test_participants_carry_the_names_of_their_tokens(jwt_server):
    """
    C{username} comes from the token's C{username}, else
    C{preferred_username}; C{realName} from its C{realName}, else C{name};
    a token without them leaves the join metadata's.
    """
    alice = caller(
        jwt_server,
        {"token": make_token("alice", username="alice_w", name="Alice Wonder")},
    )
    bob = caller(
        jwt_server,
        {
            "token": make_token(
                "bob", preferred_username="bobby", realName="Bob Builder", name="no"
            )
        },
    )
    carol = caller(jwt_server, {"token": make_token("carol")})
    try:
        alice.emit(
            "webrtc:join-room",
            {"callRoomId": "named", "metadata": {"username": "not-alice"}},
        )
        assert alice.next()[0] == "webrtc:room-joined"
        bob.emit("webrtc:join-room", {"callRoomId": "named"})
        event, body = bob.next()
        assert [names(p) for p in body["existingParticipants"]] == [
            (alice.id, "alice", "alice_w", "Alice Wonder")
        ]
        event, body = alice.next()
        assert (event, names(body["participant"])) == (
            "webrtc:participant-joined",
            (bob.id, "bob", "bobby", "Bob Builder"),
        )
        carol.emit(
            "webrtc:join-room",
            {
                "callRoomId": "named",
                "metadata": {"username": "carol", "realName": "Carol C"},
            },
        )
        assert carol.next()[0] == "webrtc:room-joined"
        event, body = alice.next()
        assert names(body["participant"]) == (carol.id, "carol", "carol", "Carol C")
        bob.emit("webrtc:leave-room", {"callRoomId": "named"})
        event, body = alice.next()
        assert (event, names(body["participant"])) == (
            "webrtc:participant-left",
            (bob.id, "bob", "bobby", "Bob Builder"),
        )
    finally:
        for client in (alice, bob, carol):
            client.close()


def test_tokenless_participants_carry_the_names_they_joined_with(open_server):
    dave = caller(open_server, {"userId": "dave"})
    erin = caller(open_server)
    try:
        dave.emit(
            "webrtc:join-room",
            {
                "callRoomId": "guests",
                "metadata": {"username": "dave", "realName": "Dave D"},
            },
        )
        assert dave.next()[0] == "webrtc:room-joined"
        erin.emit("webrtc:join-room", {"callRoomId": "guests"})
        event, body = erin.next()
        assert [names(p) for p in body["existingParticipants"]] == [
            (dave.id, "dave", "dave", "Dave D")
        ]
        event, body = dave.next()
        assert (event, names(body["participant"])) == (
            "webrtc:participant-joined",
            (erin.id, None, None, None),
        )
    finally:
        dave.close()
        erin.close()


def test_joining_or_leaving_twice_is_answered_as_the_first_time(jwt_server):
    """
    Joining a call room one is in answers webrtc:room-joined again and tells
    nobody; leaving one is not in answers webrtc:room-left again; a leave
    that cannot be carried out is a webrtc:leave-room-error.
    """
    alice = caller(jwt_server, {"token": make_token("alice")})
    bob = caller(jwt_server, {"token": make_token("bob")})
    guest = caller(jwt_server)
    try:
        alice.emit("webrtc:join-room", {"callRoomId": "twice", "callType": "video"})
        assert alice.next()[0] == "webrtc:room-joined"
        bob.emit("webrtc:join-room", {"callRoomId": "twice"})
        assert bob.next()[0] == "webrtc:room-joined"
        assert alice.next()[0] == "webrtc:participant-joined"

        alice.emit("webrtc:join-room", {"callRoomId": "twice", "callType": "video"})
        event, body = alice.next()
        assert (event, body["callRoomId"], body["participantCount"]) == (
            "webrtc:room-joined",
            "twice",
            2,
        )
        assert [p["socketId"] for p in body["existingParticipants"]] == [bob.id]
        assert body["metadata"]["createdBy"] == "alice"

        bob.emit("webrtc:leave-room", {"callRoomId": "twice"})
        assert bob.next()[0] == "webrtc:room-left"
        bob.emit("webrtc:leave-room", {"callRoomId": "twice"})
        event, body = bob.next()
        assert (event, body["callRoomId"]) == ("webrtc:room-left", "twice")
        # Alice hears of one leave only, and of nothing before it.
        event, body = alice.next()
        assert (event, body["participant"]["socketId"]) == (
            "webrtc:participant-left",
            bob.id,
        )

        bob.emit("webrtc:leave-room", {"room": "twice"})
        event, body = bob.next()
        assert (event, body["code"]) == ("webrtc:leave-room-error", "invalid-field")
        guest.emit("webrtc:leave-room", {"callRoomId": "twice"})
        event, body = guest.next()
        assert (event, body["code"]) == ("webrtc:leave-room-error", "unauthenticated")
        alice.emit("webrtc:leave-room", {"callRoomId": "twice"})
        assert alice.next()[0] == "webrtc:room-left"
        assert alice.inbox.empty()
    finally:
        for client in (alice, bob, guest):
            client.close()
