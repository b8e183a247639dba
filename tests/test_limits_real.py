"""
The hub's and the WebSocket layer's limits against C{twistd -n signaling},
as a hostile client meets them: metadata bounds in every dialect that carries
metadata, fragmented messages, a frame too large for one recipient, a join
reply too large to send, and the envelope's DISCOVER of another room.

The clients are plain WebSocket clients (C{websocket-client}) speaking the
wire formats by hand, so that frames can be fragmented at will.
"""

from __future__ import annotations

import time

import orjson
import pytest
import requests
import websocket
from websocket import ABNF

from .realsockets import TwistdServer

#: Small limits, so that the tests' frames stay small and quick.
MAX_MESSAGE_SIZE = 4000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--max-message-size",
        str(MAX_MESSAGE_SIZE),
        "--max-metadata-size",
        "1024",
        "--max-metadata-depth",
        "3",
        "--max-metadata-values",
        "16",
        "--max-fragments",
        "16",
        "--max-message-rate",
        "20",
        "--stale-timeout",
        "0",
        env={"JWT_SECRET": ""},
    )
    server.start(tmp_path_factory.mktemp("limits") / "twistd.log")
    port = server.urls[0].rsplit(":", 1)[1].split("/", 1)[0]
    server.ws_url = f"ws://127.0.0.1:{port}"
    server.http_url = f"http://127.0.0.1:{port}"
    yield server
    server.stop()


def _open(url: str) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=5)


def _next(ws: websocket.WebSocket) -> dict:
    return orjson.loads(ws.recv())


def _close_code(ws: websocket.WebSocket) -> int:
    """
    The close code the server ends C{ws} with, skipping messages before it.
    """
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big")
    raise AssertionError("the server did not close the connection")


def _stats(server) -> dict:
    return requests.get(server.http_url + "/api/stats", timeout=5).json()


def _settled_peers(server) -> int:
    """
    The server's count of peers once the closes of earlier tests' peers
    (which the server handles after their clients have gone) are done: the
    same count twice, 100 ms apart.
    """
    count = _stats(server)["peers"]["total"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.1)
        count, last = _stats(server)["peers"]["total"], count
        if count == last:
            break
    return count


class JsonClient:
    """
    A client of a dialect of JSON text frames.
    """

    def __init__(self, url: str) -> None:
        self.ws = _open(url)

    def send(self, message: dict) -> None:
        self.ws.send(orjson.dumps(message))

    def next(self) -> dict:
        return _next(self.ws)


class Native(JsonClient):
    def __init__(self, server) -> None:
        super().__init__(server.ws_url + "/signal")
        welcome = self.next()
        assert welcome["type"] == "welcome"
        self.id = welcome["peerId"]

    def join(self, room: str, metadata: dict | None = None) -> dict:
        self.send({"type": "join", "room": room, "metadata": metadata or {}})
        return self.next()


class Envelope(JsonClient):
    def __init__(self, server) -> None:
        super().__init__(server.ws_url + "/ws")
        connected = self.next()
        assert connected["type"] == "ACK"
        self.id = connected["peer_id"]


class SocketIO:
    """
    A Socket.IO client on the Engine.IO WebSocket transport.
    """

    def __init__(self, server) -> None:
        self.ws = _open(server.ws_url + "/socket.io/?EIO=4&transport=websocket")
        assert self.ws.recv().startswith("0")
        self.ws.send("40")
        assert self.ws.recv().startswith("40")

    def emit(self, event: str, payload: dict) -> None:
        self.ws.send("42" + orjson.dumps([event, payload]).decode())

    def next_event(self) -> list:
        while True:
            packet = self.ws.recv()
            if packet == "2":
                self.ws.send("3")
            elif packet.startswith("42"):
                return orjson.loads(packet[2:])


def _nested(depth: int) -> dict:
    value: object = "deep"
    for _ in range(depth - 1):
        value = [value]
    return {"value": value}


TOO_MUCH = {
    "too deep": _nested(4),
    "too many values": {"tags": list(range(16))},
    "too large": {"name": "x" * 1100},
}


@pytest.mark.parametrize("excess", list(TOO_MUCH))
def test_native_metadata_limits(server, excess):
    """
    A native join whose metadata is over a limit is answered with
    C{invalid-metadata}, and the peer is not in the room; metadata within
    every limit is accepted.
    """
    alice = Native(server)
    reply = alice.join("meta-native", TOO_MUCH[excess])
    assert reply["type"] == "error"
    assert reply["code"] == "invalid-metadata"
    reply = alice.join("meta-native", {"name": "Alice", "tags": [[1, 2]] * 4})
    assert reply["type"] == "joined"
    alice.ws.close()


def test_envelope_metadata_limits(server):
    """
    An envelope JOIN whose endpoint makes the metadata too large is an
    C{INVALID_MESSAGE} ERROR, and the peer is in no room.
    """
    alice = Envelope(server)
    alice.send(
        {
            "type": "JOIN",
            "room_id": "meta-envelope",
            "payload": {"endpoint": _nested(5)},
            "request_id": 1,
        }
    )
    error = alice.next()
    assert error["type"] == "ERROR"
    assert error["payload"]["code"] == "INVALID_MESSAGE"
    assert "nested" in error["payload"]["message"]
    alice.send({"type": "DISCOVER", "request_id": 2})
    assert alice.next()["payload"]["code"] == "NOT_IN_ROOM"
    alice.ws.close()


def test_socketio_calls_metadata_limits(server):
    """
    A Socket.IO calls join with metadata over the size limit is answered
    with C{webrtc:join-room-error}, code C{invalid-metadata}.
    """
    alice = SocketIO(server)
    alice.emit(
        "webrtc:join-room",
        {"callRoomId": "meta-calls", "metadata": {"note": "x" * 1100}},
    )
    name, body = alice.next_event()
    assert name == "webrtc:join-room-error"
    assert body["code"] == "invalid-metadata"
    alice.ws.close()


def _fragments(ws: websocket.WebSocket, count: int) -> None:
    """
    Send the start of a text message, C{"{"} with FIN=0, and C{count - 1}
    one-byte continuation frames, never finishing it.
    """
    ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_TEXT, data=b"{"))
    for _ in range(count - 1):
        ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_CONT, data=b" "))


def test_fragment_cap_native(server):
    """
    A message in more frames than C{--max-fragments} closes the
    connection with 1008; a fragmented message under the cap is read.
    """
    alice = Native(server)
    alice.ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_TEXT, data=b'{"type":'))
    alice.ws.send_frame(ABNF(fin=1, opcode=ABNF.OPCODE_CONT, data=b'"ping"}'))
    assert alice.next() == {"type": "pong"}
    _fragments(alice.ws, 40)
    assert _close_code(alice.ws) == 1008


def test_fragment_cap_socketio(server):
    """
    The Engine.IO WebSocket transport has the same cap.
    """
    alice = SocketIO(server)
    _fragments(alice.ws, 40)
    assert _close_code(alice.ws) == 1008


def test_fragments_count_against_the_rate(server):
    """
    Each frame of a fragmented message costs a token of the message rate:
    a flood of fragments, each message under the fragment cap, closes the
    connection with 1008.
    """
    alice = Native(server)
    for _ in range(10):
        alice.ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_TEXT, data=b'{"type":'))
        for _ in range(10):
            alice.ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_CONT, data=b" "))
        alice.ws.send_frame(ABNF(fin=1, opcode=ABNF.OPCODE_CONT, data=b'"ping"}'))
    assert _close_code(alice.ws) == 1008


def test_frame_too_large_for_one_recipient(server):
    """
    A native broadcast that fits the native members' frames but not, once
    wrapped, a Socket.IO member's, skips that member only: the sender stays
    connected, a later native member gets it, and the sender's disconnect
    leaves no ghost peer behind.
    """
    before = _settled_peers(server)
    sender = Native(server)
    assert sender.join("wide")["type"] == "joined"
    wrapped = SocketIO(server)
    wrapped.emit("join-room", {"roomId": "wide"})
    assert wrapped.next_event()[0] == "room-users"
    assert sender.next()["type"] == "peer-joined"
    native = Native(server)
    assert native.join("wide")["type"] == "joined"
    assert sender.next()["type"] == "peer-joined"
    # Sized so that the native frame out (its first event: seq 1) is just
    # under the limit.
    overhead = len(
        orjson.dumps(
            {
                "type": "candidate",
                "room": "wide",
                "from": sender.id,
                "payload": "",
                "seq": 1,
            }
        )
    )
    payload = "c" * (MAX_MESSAGE_SIZE - overhead - 1)
    sender.send({"type": "candidate", "room": "wide", "payload": payload})
    received = native.next()
    assert received["type"] == "candidate"
    assert received["payload"] == payload
    sender.send({"type": "ping"})
    assert sender.next() == {"type": "pong"}
    sender.ws.close()
    assert native.next()["type"] == "peer-left"
    wrapped.ws.close()
    native.ws.close()
    deadline = time.monotonic() + 5
    while _stats(server)["peers"]["total"] != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stats(server)["peers"]["total"] == before


def _crowd(server, room: str, count: int) -> list[Native]:
    """
    C{count} native peers in C{room}, each with metadata near the size
    limit, so that the peer list of the room is over the frame limit.
    """
    crowd = []
    for index in range(count):
        peer = Native(server)
        assert peer.join(room, {"name": f"{index}" + "m" * 900})["type"] == "joined"
        for earlier in crowd:
            assert earlier.next()["type"] == "peer-joined"
        crowd.append(peer)
    return crowd


def test_native_join_reply_too_large(server):
    """
    A native join whose C{joined} reply would exceed the frame limit is
    answered with C{reply-too-large}, and the peer is not in the room: the
    members see it join and leave, and a broadcast by it is refused.
    """
    crowd = _crowd(server, "crowded-native", 5)
    late = Native(server)
    reply = late.join("crowded-native", {"name": "late"})
    assert reply["type"] == "error"
    assert reply["code"] == "reply-too-large"
    assert [crowd[0].next()["type"], crowd[0].next()["type"]] == [
        "peer-joined",
        "peer-left",
    ]
    late.send({"type": "message", "room": "crowded-native", "payload": "hello"})
    assert late.next()["code"] == "not-in-room"
    for peer in [late, *crowd]:
        peer.ws.close()


def test_envelope_join_reply_too_large(server):
    """
    The envelope JOIN's ACK, too large to send, is an ERROR instead, and
    the peer is in no room.
    """
    crowd = _crowd(server, "crowded-envelope", 5)
    late = Envelope(server)
    late.send({"type": "JOIN", "room_id": "crowded-envelope", "request_id": "j"})
    error = late.next()
    assert error["type"] == "ERROR"
    assert error["payload"]["code"] == "INVALID_MESSAGE"
    assert error["request_id"] == "j"
    late.send({"type": "DISCOVER", "request_id": "d"})
    assert late.next()["payload"]["code"] == "NOT_IN_ROOM"
    for peer in [late, *crowd]:
        peer.ws.close()


def test_envelope_discover_only_own_room(server):
    """
    DISCOVER of a room the caller is not in is NOT_IN_ROOM, and lists
    nobody's display name or endpoint; of its own room, it lists the room.
    """
    alice = Envelope(server)
    alice.send(
        {
            "type": "JOIN",
            "room_id": "private",
            "payload": {"display_name": "Alice", "endpoint": {"ip": "192.0.2.7"}},
        }
    )
    assert alice.next()["type"] == "ACK"
    mallory = Envelope(server)
    mallory.send({"type": "DISCOVER", "room_id": "private", "request_id": 1})
    answer = mallory.next()
    assert answer["type"] == "ERROR"
    assert answer["payload"]["code"] == "NOT_IN_ROOM"
    assert b"192.0.2.7" not in orjson.dumps(answer)
    alice.send({"type": "DISCOVER", "room_id": "private"})
    listing = alice.next()
    assert listing["type"] == "PEER_LIST"
    assert listing["payload"]["peers"][0]["display_name"] == "Alice"
    alice.ws.close()
    mallory.ws.close()


def test_socketio_join_reply_too_large(server):
    """
    A Socket.IO calls join whose C{webrtc:room-joined} would exceed the
    WebSocket's size limit is a C{webrtc:join-room-error} with code
    C{reply-too-large}, and the members see the peer join and leave.
    """
    crowd = _crowd(server, "crowded-calls", 5)
    late = SocketIO(server)
    late.emit("webrtc:join-room", {"callRoomId": "crowded-calls"})
    name, body = late.next_event()
    assert name == "webrtc:join-room-error"
    assert body["code"] == "reply-too-large"
    assert [crowd[0].next()["type"], crowd[0].next()["type"]] == [
        "peer-joined",
        "peer-left",
    ]
    for peer in [late, *crowd]:
        peer.ws.close()


def test_topic_peer_list_too_large(server):
    """
    The topic dialect's connection is its join: a peer whose C{peer-list}
    would exceed the frame limit gets C{welcome}, then the error
    C{peer_list_too_large} and a 1008 close, and is in the topic no longer:
    the members see it join and leave, and the hub does not count it.
    """
    crowd = _crowd(server, "crowded-topic", 5)
    before = _settled_peers(server)
    late = _open(server.ws_url + "/ws/crowded-topic")
    assert _next(late)["type"] == "welcome"
    error = _next(late)
    assert (error["type"], error["code"]) == ("error", "peer_list_too_large")
    assert _close_code(late) == 1008
    assert [crowd[0].next()["type"], crowd[0].next()["type"]] == [
        "peer-joined",
        "peer-left",
    ]
    assert _stats(server)["peers"]["total"] == before
    for peer in crowd:
        peer.ws.close()


def test_directory_join_reply_too_large(server):
    """
    A directory C{join} whose C{joined} list (userIds of 200 characters)
    would exceed the frame limit is answered with C{reply-too-large}, and
    the peer is not in the room.
    """
    crowd = []
    # About 250 bytes a member: the 17th joiner's list is over 4000.
    for index in range(16):
        peer = JsonClient(server.ws_url + "/directory")
        user_id = f"{index:03d}" + "u" * 197
        peer.send({"type": "register", "userId": user_id, "publicKey": f"key-{index}"})
        assert peer.next()["type"] == "registered"
        peer.send({"type": "join", "room": "crowded-directory"})
        assert peer.next()["type"] == "joined"
        crowd.append(peer)
    late = JsonClient(server.ws_url + "/directory")
    late.send({"type": "register", "userId": "late", "publicKey": "late-key"})
    assert late.next()["type"] == "registered"
    late.send({"type": "join", "room": "crowded-directory"})
    error = late.next()
    assert (error["type"], error["code"]) == ("error", "reply-too-large")
    late.send({"type": "leave", "room": "crowded-directory"})
    assert late.next()["code"] == "not-in-room"
    for peer in [late, *crowd]:
        peer.ws.close()
