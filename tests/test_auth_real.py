"""
Tokens in every dialect, over a real C{twistd -n signaling --auth required}
(and one C{--auth optional} with an audience and an issuer): where a token
comes from, what an invalid or missing one gets, the C{sub}/C{userId} claim
as the user id, C{rooms} grants, and expiry ending the connection with the
dialect's error and close 4001.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
import websocket

from .realsockets import SocketIOQueueClient, TwistdServer

SECRET = "the auth test secret, long enough for HS256 keys"
TIMEOUT = 5
#: The server accepts a token until its exp plus this.
LEEWAY = 30


def token(sub: str = "alice", secret: str = SECRET, **claims) -> str:
    return jwt.encode(
        {"sub": sub, "exp": int(time.time()) + 600, **claims}, secret, algorithm="HS256"
    )


def expiring_token(seconds: float, **claims) -> str:
    """
    A token the server stops accepting in C{seconds}.
    """
    return token(exp=time.time() - LEEWAY + seconds, **claims)


def start(tmp_path_factory, name: str, *args: str) -> TwistdServer:
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--jwt-secret",
        SECRET,
        *args,
        env={"JWT_SECRET": ""},
    )
    server.start(tmp_path_factory.mktemp(name) / "twistd.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    server.http = server.base.replace("ws://", "http://")
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start(tmp_path_factory, "required", "--auth", "required")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def optional(tmp_path_factory):
    server = start(
        tmp_path_factory,
        "optional",
        "--auth",
        "optional",
        "--jwt-audience",
        "signaling",
        "--jwt-issuer",
        "https://issuer.example",
    )
    yield server
    server.stop()


class Raw:
    """
    A blocking client of a raw-WebSocket dialect.
    """

    def __init__(self, url: str, **options) -> None:
        self.ws = websocket.create_connection(url, timeout=TIMEOUT, **options)

    def send(self, message) -> None:
        self.ws.send(json.dumps(message))

    def next(self):
        return json.loads(self.ws.recv())

    def close_code(self) -> int:
        """
        Read until the server's close frame; its code.
        """
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big")

    def close(self) -> None:
        self.ws.close()


def refused_status(url: str, **options) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=TIMEOUT, **options)
    return refused.value.status_code


def test_required_refuses_handshakes_without_a_valid_token(server):
    """
    With C{--auth required}, the topic, envelope and directory dialects
    refuse a handshake without a token, or with a forged one, with 401;
    C{?token=} and C{Authorization: Bearer} both let a valid one in.
    """
    forged = token(secret="not the server's secret, though long enough")
    for path in ("/ws/topic-a", "/ws", "/directory"):
        assert refused_status(server.base + path) == 401, path
        assert refused_status(server.base + path + "?token=" + forged) == 401, path
    envelope = Raw(server.base + "/ws?token=" + token())
    assert envelope.next()["type"] == "ACK"
    envelope.close()
    envelope = Raw(server.base + "/ws", header=["Authorization: Bearer " + token()])
    assert envelope.next()["type"] == "ACK"
    envelope.close()


def test_native_takes_its_token_in_an_auth_message(server):
    """
    A native client without a token in its URL is welcomed, but may do
    nothing but C{auth} (and C{ping}) until it presents a valid token; then
    its C{sub} is its user id, shown to the others as C{userId}.
    """
    client = Raw(server.base + "/signal")
    assert client.next()["type"] == "welcome"
    client.send({"type": "join", "room": "native-auth", "id": 1})
    assert client.next() == {
        "type": "error",
        "code": "unauthenticated",
        "message": "send an auth message with a token first",
        "id": 1,
    }
    client.send(
        {
            "type": "auth",
            "token": token(secret="a forged secret of enough length!!"),
            "id": 2,
        }
    )
    refused = client.next()
    assert (refused["code"], refused["id"]) == ("invalid-token", 2)
    client.send({"type": "auth", "token": token("carol"), "id": 3})
    authenticated = client.next()
    assert (authenticated["type"], authenticated["userId"], authenticated["id"]) == (
        "authenticated",
        "carol",
        3,
    )
    client.send({"type": "join", "room": "native-auth"})
    assert client.next()["type"] == "joined"

    other = Raw(server.base + "/signal?token=" + token("dave"))
    assert other.next()["userId"] == "dave"
    other.send({"type": "join", "room": "native-auth"})
    joined = other.next()
    assert [(p["userId"], p["metadata"]) for p in joined["peers"]] == [("carol", {})]
    assert client.next()["peer"]["userId"] == "dave"
    client.close()
    other.close()


def test_native_without_auth_in_time_is_closed_with_4001(tmp_path_factory):
    """
    A native client that presents no token within C{--auth-timeout} gets
    C{unauthenticated} and close 4001.
    """
    server = start(
        tmp_path_factory, "deadline", "--auth", "required", "--auth-timeout", "0.5"
    )
    try:
        client = Raw(server.base + "/signal")
        assert client.next()["type"] == "welcome"
        assert client.next()["code"] == "unauthenticated"
        assert client.close_code() == 4001
    finally:
        server.stop()


def test_expiry_ends_the_connection_in_each_dialect(server):
    """
    When a token expires (exp plus the leeway), each WebSocket dialect sends
    its error and closes with 4001; a native client that refreshed its token
    in time stays.
    """
    expiring = expiring_token(1.0)
    native = Raw(server.base + "/signal?token=" + expiring)
    refreshed = Raw(server.base + "/signal?token=" + expiring)
    envelope = Raw(server.base + "/ws?token=" + expiring)
    topic = Raw(server.base + "/ws/expiring?token=" + expiring)
    directory = Raw(server.base + "/directory?token=" + expiring)
    assert native.next()["type"] == "welcome"
    assert refreshed.next()["type"] == "welcome"
    refreshed.send({"type": "auth", "token": token()})
    assert refreshed.next()["type"] == "authenticated"
    assert envelope.next()["type"] == "ACK"
    assert topic.next()["type"] == "welcome"
    assert topic.next()["type"] == "peer-list"

    assert native.next()["code"] == "token-expired"
    assert native.close_code() == 4001
    error = envelope.next()
    assert (error["type"], error["payload"]["code"]) == ("ERROR", "UNAUTHORIZED")
    assert envelope.close_code() == 4001
    assert topic.next()["code"] == "token_expired"
    assert topic.close_code() == 4001
    assert directory.next() == {
        "type": "error",
        "code": "token-expired",
        "message": "the token has expired",
    }
    assert directory.close_code() == 4001

    refreshed.send({"type": "ping", "id": "still"})
    assert refreshed.next() == {"type": "pong", "id": "still"}
    for client in (native, refreshed, envelope, topic, directory):
        client.close()


def test_a_refresh_cannot_change_the_user(server):
    """
    A native C{auth} with a token for another user is refused; the
    connection keeps its user.
    """
    client = Raw(server.base + "/signal?token=" + token("erin"))
    assert client.next()["userId"] == "erin"
    client.send({"type": "auth", "token": token("frank")})
    assert client.next()["code"] == "forbidden"
    client.close()


def test_room_grants_in_every_dialect(server):
    """
    A token with C{rooms: ["team-*", "lobby"]} may join C{team-a} and
    C{lobby} and nothing else; each dialect refuses another room in its own
    form.
    """
    granted = token("grace", rooms=["team-*", "lobby"])
    native = Raw(server.base + "/signal?token=" + granted)
    native.next()
    native.send({"type": "join", "room": "elsewhere"})
    assert native.next()["code"] == "forbidden"
    native.send({"type": "join", "room": "team-a"})
    assert native.next()["type"] == "joined"
    native.send({"type": "join", "room": "lobby"})
    assert native.next()["type"] == "joined"

    envelope = Raw(server.base + "/ws?token=" + granted)
    envelope.next()
    envelope.send({"type": "JOIN", "room_id": "elsewhere"})
    assert envelope.next()["payload"]["code"] == "UNAUTHORIZED"

    topic = Raw(server.base + "/ws/elsewhere?token=" + granted)
    assert topic.next()["code"] == "forbidden"
    assert topic.close_code() == 1008

    directory = Raw(server.base + "/directory?token=" + granted)
    directory.send({"type": "join", "room": "elsewhere"})
    assert directory.next()["code"] == "forbidden"

    socketio = SocketIOQueueClient(server.http, {"token": granted}, TIMEOUT)
    try:
        socketio.emit("join-room", {"roomId": "elsewhere"})
        event, data = socketio.next()
        assert (event, data["code"]) == ("error", "forbidden")
        socketio.emit("join-room", {"roomId": "team-b"})
        assert socketio.next()[0] == "room-users"
    finally:
        socketio.close()
    for client in (native, envelope, topic, directory):
        client.close()


def test_a_token_binds_the_directory_user_id(server):
    """
    A directory client whose token is for Heidi cannot register Ivan; it
    can register Heidi.
    """
    client = Raw(server.base + "/directory?token=" + token("heidi"))
    client.send({"type": "register", "userId": "ivan", "publicKey": "k" * 32})
    refused = client.next()
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    client.send({"type": "register", "userId": "heidi", "publicKey": "k" * 32})
    assert client.next()["type"] == "registered"
    client.close()


def test_socketio_connect_needs_a_token(server):
    """
    A Socket.IO CONNECT without a token is refused with C{connect_error}
    under C{--auth required}; one with C{auth.token} connects.
    """
    import socketio

    client = socketio.Client(reconnection=False)
    refusals = []
    client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(server.http, transports=["websocket"], wait_timeout=TIMEOUT)
    assert refusals == [{"message": "Authentication failed: a token is required"}]
    connected = SocketIOQueueClient(server.http, {"token": token()}, TIMEOUT)
    connected.close()


def test_tokens_never_reach_the_log(server):
    """
    None of the tokens above appear in the server's log.
    """
    log = server.log()
    assert "refused a WebSocket" in log
    assert "eyJ" not in log


def test_optional_checks_presented_tokens_only(optional):
    """
    With C{--auth optional}, a client without a token connects unverified;
    a token for another audience or issuer is refused with 401.
    """
    plain = Raw(optional.base + "/signal")
    welcome = plain.next()
    assert "userId" not in welcome
    plain.send({"type": "join", "room": "open"})
    assert plain.next()["type"] == "joined"
    plain.close()
    good = token(aud="signaling", iss="https://issuer.example")
    client = Raw(optional.base + "/ws?token=" + good)
    assert client.next()["type"] == "ACK"
    client.close()
    for bad in (
        token(aud="another-service", iss="https://issuer.example"),
        token(aud="signaling", iss="https://elsewhere.example"),
        token(
            aud="signaling", iss="https://issuer.example", iat=int(time.time()) + 3600
        ),
        token(aud="signaling", iss="https://issuer.example", exp=int(time.time()) - 60),
    ):
        assert refused_status(optional.base + "/ws?token=" + bad) == 401


def test_a_token_sets_its_holders_limits(tmp_path_factory):
    """
    On a server allowing one room per peer and 5 messages a second, a token
    with C{limits: {maxRoomsPerPeer: 3, maxMessageRate: 0}} joins three
    rooms and sends 40 pings at once unhindered; one with
    C{maxRoomsPerPeer: 1} and no rate of its own is held to the server's.
    """
    server = start(
        tmp_path_factory,
        "limits",
        "--auth",
        "required",
        "--max-rooms-per-peer",
        "1",
        "--max-message-rate",
        "5",
    )
    try:
        raised = Raw(
            server.base
            + "/signal?token="
            + token(limits={"maxRoomsPerPeer": 3, "maxMessageRate": 0})
        )
        raised.next()
        for room in ("one", "two", "three"):
            raised.send({"type": "join", "room": room})
            assert raised.next()["type"] == "joined"
        for number in range(40):
            raised.send({"type": "ping", "id": number})
        assert [raised.next()["type"] for _ in range(40)] == ["pong"] * 40

        held = Raw(
            server.base + "/signal?token=" + token("bob", limits={"maxRoomsPerPeer": 1})
        )
        held.next()
        held.send({"type": "join", "room": "one"})
        assert held.next()["type"] == "joined"
        held.send({"type": "join", "room": "two"})
        assert held.next()["code"] == "too-many-rooms"
        # The server's burst is 10, two of them spent on the joins.
        for number in range(14):
            held.send({"type": "ping", "id": number})
        answers = [held.next() for _ in range(14)]
        assert [a.get("code") for a in answers if a["type"] == "error"][:1] == [
            "rate-limited"
        ]
        assert sum(a["type"] == "pong" for a in answers) < 14
        raised.close()
        held.close()
        refused = token(limits={"maxRoomsPerPeer": -1})
        assert refused_status(server.base + "/ws?token=" + refused) == 401
    finally:
        server.stop()


def test_every_dialect_shows_a_verified_user_id(server):
    """
    In one room, a native peer verified as Judy is listed with her user id
    by the topic dialect (C{userId}) and the envelope dialect
    (C{user_id}); their own verified ids reach her as C{userId}.
    """
    judy = Raw(server.base + "/signal?token=" + token("judy"))
    judy.next()
    judy.send({"type": "join", "room": "shown", "metadata": {"userId": "not-judy"}})
    assert judy.next()["type"] == "joined"
    topic = Raw(server.base + "/ws/shown?token=" + token("ken"))
    topic.next()
    assert [p.get("userId") for p in topic.next()["peers"]] == ["judy"]
    assert judy.next()["peer"]["userId"] == "ken"
    envelope = Raw(server.base + "/ws?token=" + token("lee"))
    envelope.next()
    envelope.send({"type": "JOIN", "room_id": "shown"})
    peers = envelope.next()["payload"]["peers"]
    assert sorted(p.get("user_id") for p in peers) == ["judy", "ken", "lee"]
    assert judy.next()["peer"]["userId"] == "lee"
    joined = topic.next()
    assert (joined["type"], joined["userId"]) == ("peer-joined", "lee")
    for client in (judy, topic, envelope):
        client.close()


def test_socketio_polling_takes_a_bearer_header(server):
    """
    Under C{--auth required}, an Engine.IO polling session opened with
    C{Authorization: Bearer} connects to Socket.IO without C{auth.token};
    one without the header is refused.
    """
    import requests

    def connect(headers: dict) -> str:
        url = server.http + "/socket.io/?EIO=4&transport=polling"
        opened = requests.get(url, headers=headers, timeout=TIMEOUT)
        sid = json.loads(opened.text[1:])["sid"]
        session = f"{url}&sid={sid}"
        assert (
            requests.post(session, data="40", headers=headers, timeout=TIMEOUT).text
            == "ok"
        )
        return requests.get(session, headers=headers, timeout=TIMEOUT).text

    assert connect({"Authorization": "Bearer " + token("mia")}).startswith('40{"sid":')
    assert connect({}) == '44{"message":"Authentication failed: a token is required"}'
