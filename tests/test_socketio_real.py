"""
Real Socket.IO clients against C{twistd -n signaling}: python-socketio and
the npm socket.io-client (driven by Node), over long-polling only, WebSocket
only, and polling upgraded to a WebSocket; the rooms (000) and calls (002)
flows with a JWT key configured and without.
"""

from __future__ import annotations

import os
import queue
import subprocess
import time

import jwt
import pytest
import requests
import socketio
import websocket

from .realsockets import NODE_DIR, TwistdServer, node_with_packages

SECRET = "a real-socket test secret, long enough for HS256"
MODES = {
    "polling": ["polling"],
    "websocket": ["websocket"],
    "upgrade": ["polling", "websocket"],
}
ORIGIN = "http://localhost:3000"
OFFER = {"type": "offer", "sdp": "v=0\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\n"}
CANDIDATE = {
    "candidate": "candidate:1 1 udp 1 10.0.0.1 5000 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


def make_token(user_id: str, secret: str = SECRET) -> str:
    return jwt.encode(
        {"userId": user_id, "exp": int(time.time()) + 600}, secret, algorithm="HS256"
    )


def _start(tmp_path_factory, name: str, *args: str, env: dict | None = None):
    server = TwistdServer("--port", "tcp:0:interface=127.0.0.1", *args, env=env)
    server.start(tmp_path_factory.mktemp(name) / "twistd.log")
    port = server.urls[0].rsplit(":", 1)[1].split("/", 1)[0]
    server.http_url = f"http://127.0.0.1:{port}"
    return server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """
    No JWT key; browsers only from L{ORIGIN}.
    """
    server = _start(
        tmp_path_factory, "open", "--allowed-origin", ORIGIN, env={"JWT_SECRET": ""}
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory):
    server = _start(tmp_path_factory, "jwt", env={"JWT_SECRET": SECRET})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def node():
    """
    The node binary, with tests/node's socket.io-client installed.
    """
    return node_with_packages("the npm socket.io-client")


class Recorder:
    """
    A python-socketio client whose events wait in a queue per name.
    """

    def __init__(self, mode: str) -> None:
        self.transports = MODES[mode]
        # python-engineio's WebSocket sends the server's own URL as Origin
        # unless told otherwise; be the app at ORIGIN, as a browser would.
        self.client = socketio.Client(
            reconnection=False, websocket_extra_options={"origin": ORIGIN}
        )
        self.queues: dict[str, queue.Queue] = {}
        self.client.on("*", self._any)
        self.client.on(
            "connect_error", lambda data=None: self._any("connect_error", data)
        )

    def _any(self, event, data=None):
        self.queues.setdefault(event, queue.Queue()).put(data)

    def connect(self, url: str, auth: dict | None = None) -> "Recorder":
        self.client.connect(url, auth=auth, transports=self.transports, wait_timeout=5)
        return self

    @property
    def id(self) -> str:
        return self.client.get_sid()

    def emit(self, event: str, data) -> None:
        self.client.emit(event, data)

    def call(self, event: str, data):
        return self.client.call(event, data, timeout=5)

    def next(self, event: str):
        return self.queues.setdefault(event, queue.Queue()).get(timeout=5)

    def wait_for_upgrade(self) -> None:
        if self.transports == ["polling", "websocket"]:
            deadline = time.monotonic() + 5
            while (
                self.client.transport() != "websocket" and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            assert self.client.transport() == "websocket"
        else:
            assert self.client.transport() == self.transports[0]

    def disconnect(self) -> None:
        self.client.disconnect()


@pytest.mark.parametrize("mode", list(MODES))
def test_python_client_rooms_flow(open_server, mode):
    url = open_server.http_url
    room = f"python-rooms-{mode}"
    alice = Recorder(mode).connect(url)
    bob = Recorder(mode).connect(url)
    try:
        alice.emit("join-room", {"roomId": room, "userId": "alice"})
        assert alice.next("room-users") == {"roomId": room, "users": []}
        reply = bob.call("join-room", {"roomId": room, "userId": "bob"})
        assert reply == {
            "ok": True,
            "roomId": room,
            "users": [{"socketId": alice.id, "userId": "alice"}],
        }
        assert bob.next("room-users")["users"] == [
            {"socketId": alice.id, "userId": "alice"}
        ]
        assert alice.next("user-joined") == {
            "roomId": room,
            "socketId": bob.id,
            "userId": "bob",
        }

        bob.emit("offer", {"roomId": room, "targetId": alice.id, "offer": OFFER})
        offer = alice.next("offer")
        assert offer == {
            "roomId": room,
            "senderId": bob.id,
            "userId": "bob",
            "offer": OFFER,
        }
        alice.emit(
            "answer", {"roomId": room, "targetId": offer["senderId"], "answer": ANSWER}
        )
        assert bob.next("answer")["answer"] == ANSWER
        alice.emit(
            "ice-candidate",
            {"roomId": room, "targetId": bob.id, "candidate": CANDIDATE},
        )
        assert bob.next("ice-candidate")["candidate"] == CANDIDATE

        alice.wait_for_upgrade()
        bob.wait_for_upgrade()
        bob.emit("leave-room", {"roomId": room})
        assert alice.next("user-left") == {
            "roomId": room,
            "socketId": bob.id,
            "userId": "bob",
        }
    finally:
        alice.disconnect()
        bob.disconnect()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("with_key", [True, False], ids=["jwt", "no-jwt"])
def test_python_client_calls_flow(open_server, jwt_server, mode, with_key):
    """
    The 002 usage example: join with metadata, offer, answer from the
    webrtc:offer handler, broadcast ICE, leave.
    """
    url = (jwt_server if with_key else open_server).http_url
    room = f"call_123_{mode}_{with_key}"
    caller = Recorder(mode).connect(url, auth={"token": make_token("user-a")})
    callee = Recorder(mode).connect(url, auth={"token": make_token("user-b")})

    def on_offer(data):
        callee.emit(
            "webrtc:answer",
            {
                "callRoomId": data["callRoomId"],
                "targetSocketId": data["fromSocketId"],
                "answer": ANSWER,
            },
        )

    callee.client.on("webrtc:offer", on_offer)
    try:
        caller.emit(
            "webrtc:join-room",
            {
                "callRoomId": room,
                "callType": "video",
                "metadata": {"groupId": "group_456"},
            },
        )
        joined = caller.next("webrtc:room-joined")
        assert (joined["participantCount"], joined["existingParticipants"]) == (1, [])
        assert joined["metadata"]["callType"] == "video"
        assert joined["metadata"]["createdBy"] == "user-a"
        assert joined["metadata"]["groupId"] == "group_456"

        callee.emit("webrtc:join-room", {"callRoomId": room, "callType": "video"})
        joined = callee.next("webrtc:room-joined")
        assert [
            (p["socketId"], p["userId"]) for p in joined["existingParticipants"]
        ] == [(caller.id, "user-a")]
        notice = caller.next("webrtc:participant-joined")
        assert (notice["participant"]["socketId"], notice["participant"]["userId"]) == (
            callee.id,
            "user-b",
        )

        caller.emit(
            "webrtc:offer",
            {"callRoomId": room, "targetSocketId": callee.id, "offer": OFFER},
        )
        answer = caller.next("webrtc:answer")
        assert (answer["fromSocketId"], answer["fromUserId"], answer["answer"]) == (
            callee.id,
            "user-b",
            ANSWER,
        )

        caller.emit(
            "webrtc:ice-candidate",
            {
                "callRoomId": room,
                "candidate": CANDIDATE,
                "sdpMid": "0",
                "sdpMLineIndex": 0,
            },
        )
        candidate = callee.next("webrtc:ice-candidate")
        assert (
            candidate["fromSocketId"],
            candidate["candidate"],
            candidate["sdpMid"],
        ) == (caller.id, CANDIDATE, "0")

        caller.emit(
            "webrtc:offer",
            {"callRoomId": "elsewhere", "targetSocketId": callee.id, "offer": OFFER},
        )
        assert caller.next("webrtc:signaling-error")["code"] == "not-in-room"

        caller.wait_for_upgrade()
        callee.wait_for_upgrade()
        callee.emit("webrtc:leave-room", {"callRoomId": room})
        assert callee.next("webrtc:room-left")["callRoomId"] == room
        assert (
            caller.next("webrtc:participant-left")["participant"]["socketId"]
            == callee.id
        )
    finally:
        caller.disconnect()
        callee.disconnect()


@pytest.mark.parametrize("mode", list(MODES))
def test_python_client_needs_a_token_for_calls(jwt_server, mode):
    url = jwt_server.http_url
    anonymous = Recorder(mode).connect(url)
    try:
        anonymous.emit("webrtc:join-room", {"callRoomId": "c"})
        assert (
            "Authentication required"
            in anonymous.next("webrtc:join-room-error")["error"]
        )
        anonymous.emit("join-room", {"roomId": f"open-{mode}", "userId": "guest"})
        assert anonymous.next("room-users")["users"] == []
    finally:
        anonymous.disconnect()
    forged = Recorder(mode)
    with pytest.raises(socketio.exceptions.ConnectionError):
        forged.connect(
            url,
            auth={
                "token": make_token(
                    "user-a", secret="a forged secret, also long enough"
                )
            },
        )
    assert "Authentication failed" in forged.next("connect_error")["message"]
    forged.disconnect()


NODE_CASES = [
    (mode, flow, server)
    for mode in MODES
    for flow, server in (
        ("rooms", "open"),
        ("calls", "open"),
        ("rooms", "jwt"),
        ("calls", "jwt"),
        ("calls-refused", "jwt"),
    )
]


@pytest.mark.parametrize(
    "mode,flow,server", NODE_CASES, ids=["-".join(case) for case in NODE_CASES]
)
def test_npm_socket_io_client(node, open_server, jwt_server, mode, flow, server):
    """
    Unmodified socket.io-client code in the style of both documents runs its
    whole flow (tests/node/flows.js).
    """
    target = jwt_server if server == "jwt" else open_server
    env = {
        **os.environ,
        "TOKEN_A": make_token("user-a"),
        "TOKEN_B": make_token("user-b"),
        "FORGED_TOKEN": make_token(
            "user-a", secret="a forged secret, also long enough"
        ),
        "KEYED": "1" if server == "jwt" else "",
    }
    result = subprocess.run(
        [node, str(NODE_DIR / "flows.js"), target.http_url, mode, flow],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(f"ok {flow} {mode}")


def test_cors_and_origin_checks(open_server):
    base = open_server.http_url + "/socket.io/?EIO=4&transport=polling"
    allowed = requests.get(base, headers={"Origin": ORIGIN}, timeout=5)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    refused = requests.get(base, headers={"Origin": "https://evil.example"}, timeout=5)
    assert (refused.status_code, refused.json()) == (
        403,
        {"code": 4, "message": "Forbidden"},
    )
    assert "Access-Control-Allow-Origin" not in refused.headers

    ws_url = (
        open_server.http_url.replace("http", "ws")
        + "/socket.io/?EIO=4&transport=websocket"
    )
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(ws_url, origin="https://evil.example", timeout=5)
    connection = websocket.create_connection(ws_url, origin=ORIGIN, timeout=5)
    try:
        assert connection.recv().startswith("0{")
    finally:
        connection.close()


def test_engineio_errors_over_http(open_server):
    url = open_server.http_url + "/socket.io/"
    cases = [
        ("GET", "EIO=3&transport=polling", 5),
        ("GET", "EIO=4&transport=smoke", 0),
        ("GET", "EIO=4&transport=polling&sid=unknown", 1),
        ("POST", "EIO=4&transport=polling", 2),
        ("GET", "EIO=4&transport=websocket", 3),
    ]
    for method, query, code in cases:
        # A GET takes no body (413); only the POST carries one.
        body = b"40" if method == "POST" else None
        response = requests.request(method, url + "?" + query, data=body, timeout=5)
        assert (response.status_code, response.json()["code"]) == (400, code), query
