"""
The limits of Engine.IO and Socket.IO sessions against C{twistd -n
signaling}: the message rate over polling, upgrade WebSockets that never
upgrade, tokens that expire during a session, and memory after churn.
"""

from __future__ import annotations

import time

import jwt
import orjson
import pytest
import requests
import websocket

from .realsockets import TwistdServer
from .test_socketio_real import Recorder

SECRET = "a real-socket test secret, long enough for HS256"
RATE = 20
UPGRADE_TIMEOUT = 1.0


def _start(
    tmp_path_factory, name: str, *args: str, env: dict | None = None
) -> TwistdServer:
    server = TwistdServer("--port", "tcp:0:interface=127.0.0.1", *args, env=env)
    server.start(tmp_path_factory.mktemp(name) / "twistd.log")
    server.port = int(server.urls[0].rsplit(":", 1)[1].split("/", 1)[0])
    server.http_url = f"http://127.0.0.1:{server.port}"
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = _start(
        tmp_path_factory,
        "limits",
        "--max-message-rate",
        str(RATE),
        "--upgrade-timeout",
        str(UPGRADE_TIMEOUT),
        "--empty-room-ttl",
        "60",
        env={"JWT_SECRET": SECRET},
    )
    yield server
    server.stop()


class Polling:
    """
    A raw Engine.IO polling client on one keep-alive HTTP connection.
    """

    def __init__(self, server: TwistdServer) -> None:
        self.url = server.http_url + "/socket.io/"
        self.http = requests.Session()
        opened = self.http.get(
            self.url, params={"EIO": "4", "transport": "polling"}, timeout=5
        )
        assert opened.status_code == 200, opened.text
        self.sid = orjson.loads(opened.text[1:])["sid"]

    @property
    def params(self) -> dict:
        return {"EIO": "4", "transport": "polling", "sid": self.sid}

    def post(self, *packets: str) -> requests.Response:
        return self.http.post(
            self.url, params=self.params, data="\x1e".join(packets).encode(), timeout=5
        )

    def get(self) -> requests.Response:
        return self.http.get(self.url, params=self.params, timeout=5)

    def packets(self) -> list[str]:
        response = self.get()
        assert response.status_code == 200, response.text
        return response.text.split("\x1e")

    def connect(self) -> None:
        assert self.post("40").text == "ok"
        [connected] = self.packets()
        assert connected.startswith("40{"), connected

    def close(self) -> None:
        self.http.close()


def emit(name: str, data) -> str:
    return "42" + orjson.dumps([name, data]).decode()


def pid_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_polling_is_held_to_the_message_rate(server):
    """
    One POST of 1,260 events delivers at most a burst (twice
    --max-message-rate) to the room; persistent excess ends the session:
    that POST gets 429, the next poll the close packet, then the sid is
    unknown.
    """
    room = "f"
    victim, attacker = Polling(server), Polling(server)
    try:
        for client in (victim, attacker):
            client.connect()
            assert (
                client.post(emit("join-room", {"roomId": room, "userId": "x"})).text
                == "ok"
            )
        victim.packets()
        attacker.packets()

        # The flood: 1,260 events in one body within --max-message-size.
        flood = attacker.post(
            *[emit("ice-candidate", {"roomId": room, "candidate": "c"})] * 1260
        )
        assert flood.status_code == 429
        assert flood.json() == {"code": 3, "message": "Too many packets"}
        assert attacker.packets()[-1] == "1"
        assert attacker.get().json() == {"code": 1, "message": "Session ID unknown"}

        received = victim.packets()
        candidates = [p for p in received if p.startswith('42["ice-candidate"')]
        assert 0 < len(candidates) <= 2 * RATE
        assert '42["user-left"' in received[-1]
    finally:
        victim.close()
        attacker.close()


def test_room_churn_over_polling_is_counted(server):
    """
    Joining and leaving new rooms is held to the same rate: a body of 1,200
    join/leave events leaves at most a burst of empty rooms behind.
    """
    before = requests.get(server.http_url + "/api/stats", timeout=5).json()["rooms"][
        "total"
    ]
    churner = Polling(server)
    try:
        churner.connect()
        body = []
        for number in range(600):
            body.append(emit("join-room", {"roomId": f"c{number}"}))
            body.append(emit("leave-room", {"roomId": f"c{number}"}))
        assert churner.post(*body).status_code == 429
    finally:
        churner.close()
    after = requests.get(server.http_url + "/api/stats", timeout=5).json()["rooms"][
        "total"
    ]
    assert after - before <= RATE


def test_websocket_flood_closes_with_1008(server):
    """
    Over a WebSocket the same session count applies: a flood is closed with
    1008.
    """
    connection = websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket", timeout=5
    )
    try:
        assert connection.recv().startswith("0{")
        for _ in range(4 * RATE + 2):
            connection.send(emit("leave-room", {"roomId": "r"}))
        while True:
            opcode, data = connection.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
        assert int.from_bytes(data[:2], "big") == 1008
    finally:
        connection.close()


def _upgrade_socket(server, sid: str) -> websocket.WebSocket:
    return websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        timeout=5,
    )


def _close_code(connection: websocket.WebSocket) -> int:
    opcode, data = connection.recv_data(control_frame=True)
    while opcode != websocket.ABNF.OPCODE_CLOSE:
        opcode, data = connection.recv_data(control_frame=True)
    return int.from_bytes(data[:2], "big")


def test_upgrade_websockets_do_not_linger(server):
    """
    A WebSocket opened for an upgrade that never sends 2probe is closed
    after --upgrade-timeout, and the session stays on polling; a second one
    while it is open is refused; one open when the session ends is closed
    with it.
    """
    client = Polling(server)
    try:
        client.connect()
        opened = time.monotonic()
        silent = _upgrade_socket(server, client.sid)
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            _upgrade_socket(server, client.sid)
        assert refused.value.status_code == 400
        assert _close_code(silent) == 1000
        assert UPGRADE_TIMEOUT - 0.2 <= time.monotonic() - opened < UPGRADE_TIMEOUT + 2
        silent.close()

        assert client.post(emit("leave-room", {"roomId": "r"})).text == "ok"
        assert client.packets()[0].startswith('42["error"')

        attached = _upgrade_socket(server, client.sid)
        ended = time.monotonic()
        assert client.post("1").text == "ok"
        assert _close_code(attached) == 1000
        assert time.monotonic() - ended < UPGRADE_TIMEOUT - 0.3
        attached.close()
    finally:
        client.close()


def test_expired_token_ends_the_session(server):
    """
    A session whose verified token expires (exp plus the 30 s leeway) gets
    CONNECT_ERROR "the token has expired" and is disconnected, at that time,
    over polling and over a WebSocket.
    """
    expires_in = 1.0
    token = jwt.encode(
        {"userId": "u", "exp": time.time() - 30 + expires_in}, SECRET, algorithm="HS256"
    )
    modes = ("polling", "websocket")
    recorders = [
        Recorder(mode).connect(server.http_url, auth={"token": token}) for mode in modes
    ]
    try:
        connected = time.monotonic()
        for mode, recorder in zip(modes, recorders, strict=True):
            recorder.emit("join-room", {"roomId": f"expiring-{mode}"})
            assert recorder.next("room-users")["users"] == []
        for recorder in recorders:
            refused = recorder.next("connect_error")
            assert refused["message"] == "Authentication failed: the token has expired"
            assert refused["data"] == {"code": "token-expired"}
        assert expires_in - 0.3 <= time.monotonic() - connected < expires_in + 3
        deadline = time.monotonic() + 5
        while (
            any(r.client.connected for r in recorders) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        for mode, recorder in zip(modes, recorders, strict=True):
            assert not recorder.client.connected, mode
            room = requests.get(
                server.http_url + f"/api/rooms/expiring-{mode}", timeout=5
            ).json()
            assert room["peer_count"] == 0, mode
    finally:
        for recorder in recorders:
            recorder.disconnect()


def _hold_and_close_sessions(port: int, websockets: int, polling: int) -> None:
    """
    Open sessions, keep them past a tick of the collection policy (so that
    what they leave is frozen), then close them.
    """
    held = []
    for _ in range(websockets):
        connection = websocket.create_connection(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=5
        )
        connection.recv()
        connection.send("40")
        connection.recv()
        held.append(connection)
    url = f"http://127.0.0.1:{port}/socket.io/"
    sids = []
    with requests.Session() as http:
        for _ in range(polling):
            opened = http.get(
                url, params={"EIO": "4", "transport": "polling"}, timeout=5
            )
            sid = orjson.loads(opened.text[1:])["sid"]
            http.post(
                url,
                params={"EIO": "4", "transport": "polling", "sid": sid},
                data=b"40",
                timeout=5,
            )
            sids.append(sid)
        time.sleep(0.15)
        for connection in held:
            connection.close()
        for sid in sids:
            http.post(
                url,
                params={"EIO": "4", "transport": "polling", "sid": sid},
                data=b"1",
                timeout=5,
            )
    time.sleep(0.15)


def test_churned_sessions_give_their_memory_back(tmp_path_factory):
    """
    Closed Engine.IO sessions (WebSocket and polling) bring full
    collections: after churning sessions the server's memory returns near
    what it was after the first round, with no peer left.
    """
    # The churn opens sessions far faster than one address may by default.
    churned = _start(
        tmp_path_factory, "churn", "--max-new-connections-per-address", "0"
    )
    try:
        _hold_and_close_sessions(churned.port, 200, 100)
        baseline = pid_rss(churned.process.pid)
        for _ in range(2):
            _hold_and_close_sessions(churned.port, 200, 100)
        grown = pid_rss(churned.process.pid) - baseline
        stats = requests.get(churned.http_url + "/api/stats", timeout=5).json()
        assert stats["peers"]["total"] == 0
        assert grown < 2.5 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB"
    finally:
        churned.stop()
