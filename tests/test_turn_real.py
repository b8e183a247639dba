"""
TURN credentials checked by a real coturn: C{turnserver} (Debian's
C{coturn}) is started on loopback with C{use-auth-secret}; our server, given
the same secret, hands out credentials in the native C{welcome}, at C{GET
/api/ice-servers} and in the Socket.IO C{ice-servers} event; coturn grants an
Allocate with them, and refuses a forged or an expired credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import subprocess
import time

import jwt
import pytest
import requests
import websocket

from .realsockets import SocketIOQueueClient, TwistdServer, stop_process

TURN_SECRET = "the coturn static auth secret of this test"
JWT_SECRET = "the TURN test JWT secret, long enough for HS256"
REALM = "signaling.test"
TIMEOUT = 5

_MAGIC = 0x2112A442
_BINDING, _ALLOCATE = 0x0001, 0x0003
_USERNAME, _MESSAGE_INTEGRITY, _ERROR_CODE = 0x0006, 0x0008, 0x0009
_REALM, _NONCE, _REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0019
_UDP = 17


def _attribute(kind: int, value: bytes) -> bytes:
    padding = b"\0" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + padding


def _message(
    kind: int, attributes: bytes, transaction: bytes, key: bytes | None = None
) -> bytes:
    if key is None:
        return (
            struct.pack("!HHI", kind, len(attributes), _MAGIC)
            + transaction
            + attributes
        )
    # MESSAGE-INTEGRITY covers the header with the length it will have.
    header = struct.pack("!HHI", kind, len(attributes) + 24, _MAGIC) + transaction
    digest = hmac.new(key, header + attributes, hashlib.sha1).digest()
    return header + attributes + _attribute(_MESSAGE_INTEGRITY, digest)


def _parse(data: bytes) -> tuple[int, dict[int, bytes]]:
    kind, length = struct.unpack("!HH", data[:4])
    attributes, position = {}, 20
    while position < 20 + length:
        attr_kind, attr_length = struct.unpack("!HH", data[position : position + 4])
        attributes.setdefault(
            attr_kind, data[position + 4 : position + 4 + attr_length]
        )
        position += 4 + attr_length + (-attr_length % 4)
    return kind, attributes


def _exchange(
    port: int, message: bytes, udp: socket.socket | None = None
) -> tuple[int, dict[int, bytes]]:
    if udp is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            return _exchange(port, message, udp)
    udp.settimeout(1)
    udp.sendto(message, ("127.0.0.1", port))
    return _parse(udp.recv(2048))


def allocate(port: int, username: str, password: str) -> int:
    """
    A TURN Allocate over UDP with long-term credentials: 200 when coturn
    grants it, else the error code it answers with.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        # coturn's nonce belongs to the client's address and port.
        return _allocate(port, username, password, udp)


def _allocate(port: int, username: str, password: str, udp: socket.socket) -> int:
    transport = _attribute(_REQUESTED_TRANSPORT, bytes([_UDP, 0, 0, 0]))
    kind, attributes = _exchange(
        port, _message(_ALLOCATE, transport, os.urandom(12)), udp
    )
    assert kind == 0x0113, "an Allocate without credentials is challenged"
    realm, nonce = attributes[_REALM], attributes[_NONCE]
    key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()
    signed = (
        transport
        + _attribute(_USERNAME, username.encode())
        + _attribute(_REALM, realm)
        + _attribute(_NONCE, nonce)
    )
    kind, attributes = _exchange(
        port, _message(_ALLOCATE, signed, os.urandom(12), key), udp
    )
    if kind == 0x0103:
        return 200
    error = attributes[_ERROR_CODE]
    return error[2] * 100 + error[3]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        pytest.fail(
            "coturn's turnserver is not installed (apt-get install coturn; .ci/run does)"
        )
    directory = tmp_path_factory.mktemp("coturn")
    port = _free_port()
    relay_port = min(_free_port(), 65535 - 32)
    process = subprocess.Popen(
        [
            turnserver,
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            # Each Allocate holds a relay port until its lifetime ends.
            f"--min-port={relay_port}",
            f"--max-port={min(relay_port + 32, 65535)}",
            "--use-auth-secret",
            f"--static-auth-secret={TURN_SECRET}",
            f"--realm={REALM}",
            # Both aiortc peers and their relay addresses are on loopback.
            "--allow-loopback-peers",
            f"--db={directory / 'turndb'}",
            f"--pidfile={directory / 'turn.pid'}",
            f"--log-file={directory / 'turn.log'}",
            "--simple-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                kind, _ = _exchange(port, _message(_BINDING, b"", os.urandom(12)))
                if kind == 0x0101:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("turnserver did not start")
        yield port
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def server(tmp_path_factory, coturn):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--auth",
        "required",
        "--jwt-secret",
        JWT_SECRET,
        "--turn-secret",
        TURN_SECRET,
        "--turn-uri",
        f"turn:127.0.0.1:{coturn}?transport=udp",
        "--stun-uri",
        f"stun:127.0.0.1:{coturn}",
        "--turn-ttl",
        "2",
        env={"JWT_SECRET": "", "TURN_SECRET": ""},
    )
    server.start(tmp_path_factory.mktemp("turn") / "twistd.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    server.http = server.base.replace("ws://", "http://")
    yield server
    server.stop()


def token(sub: str) -> str:
    return jwt.encode(
        {"sub": sub, "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256"
    )


def turn_entry(ice_servers: list) -> dict:
    (entry,) = [server for server in ice_servers if "username" in server]
    return entry


def test_the_welcome_credentials_open_a_turn_allocation(server, coturn):
    """
    The native C{welcome} lists the STUN server and the TURN server with a
    C{expiry:user} username; coturn grants an Allocate with it. Before the
    2 s they last run out, fresh ones are pushed.
    """
    client = websocket.create_connection(
        server.base + "/signal?token=" + token("alice"), timeout=TIMEOUT
    )
    try:
        welcome = json.loads(client.recv())
        assert welcome["iceServers"][0] == {"urls": [f"stun:127.0.0.1:{coturn}"]}
        entry = turn_entry(welcome["iceServers"])
        assert entry["urls"] == [f"turn:127.0.0.1:{coturn}?transport=udp"]
        expiry, user = entry["username"].split(":")
        assert user == "alice" and 0 < int(expiry) - time.time() <= 3
        assert allocate(coturn, entry["username"], entry["credential"]) == 200
        pushed = json.loads(client.recv())
        assert pushed["type"] == "ice-servers"
        pushed_expiry = turn_entry(pushed["iceServers"])["username"].split(":")[0]
        assert int(pushed_expiry) > int(expiry)
    finally:
        client.close()


def test_coturn_refuses_forged_and_expired_credentials(coturn):
    """
    A credential not signed with the shared secret, or one whose expiry has
    passed, is refused by coturn with 401.
    """
    username = f"{int(time.time()) + 600}:mallory"
    assert allocate(coturn, username, "forged") == 401
    wrong = base64.b64encode(
        hmac.new(b"another secret", username.encode(), hashlib.sha1).digest()
    ).decode()
    assert allocate(coturn, username, wrong) == 401
    expired = f"{int(time.time()) - 10}:mallory"
    right = base64.b64encode(
        hmac.new(TURN_SECRET.encode(), expired.encode(), hashlib.sha1).digest()
    ).decode()
    assert allocate(coturn, expired, right) == 401


def test_the_http_endpoint_needs_a_token(server, coturn):
    """
    C{GET /api/ice-servers} answers 401 without a token and the servers,
    with working credentials, with one.
    """
    refused = requests.get(server.http + "/api/ice-servers", timeout=TIMEOUT)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    answer = requests.get(
        server.http + "/api/ice-servers",
        headers={"Authorization": "Bearer " + token("bob")},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200
    entry = turn_entry(answer.json()["iceServers"])
    assert entry["username"].endswith(":bob")
    assert allocate(coturn, entry["username"], entry["credential"]) == 200


def test_socketio_clients_get_an_ice_servers_event(server, coturn):
    """
    A Socket.IO client gets C{ice-servers} right after connecting.
    """
    client = SocketIOQueueClient(server.http, {"token": token("carol")}, TIMEOUT)
    try:
        event, data = client.next()
        assert event == "ice-servers"
        entry = turn_entry(data["iceServers"])
        assert entry["username"].endswith(":carol")
        assert allocate(coturn, entry["username"], entry["credential"]) == 200
    finally:
        client.close()


async def _data_channel_through(ice_servers: list) -> tuple[str, set[str]]:
    """
    Connect two aiortc peers that may use only relay candidates (the
    offer and answer are handed over directly); what the answerer's data
    channel receives, and the candidate types of the offer.
    """
    import asyncio

    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    configuration = RTCConfiguration(
        iceServers=[RTCIceServer(**server) for server in ice_servers],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    caller, callee = RTCPeerConnection(configuration), RTCPeerConnection(configuration)
    received: asyncio.Future = asyncio.get_running_loop().create_future()
    try:
        channel = caller.createDataChannel("chat")
        channel.on("open", lambda: channel.send("through coturn"))

        @callee.on("datachannel")
        def on_datachannel(incoming) -> None:
            incoming.on(
                "message",
                lambda message: received.done() or received.set_result(message),
            )

        await caller.setLocalDescription(await caller.createOffer())
        offer = caller.localDescription
        kinds = {
            line.split()[7]
            for line in offer.sdp.splitlines()
            if line.startswith("a=candidate:")
        }
        await callee.setRemoteDescription(offer)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        return await asyncio.wait_for(received, 10), kinds
    finally:
        await caller.close()
        await callee.close()


def test_two_relay_only_peers_connect_a_data_channel(server, coturn):
    """
    Two aiortc peers with the ICE servers of C{GET /api/ice-servers},
    allowed only relay candidates, open a data channel through coturn.
    """
    import asyncio

    answer = requests.get(
        server.http + "/api/ice-servers",
        headers={"Authorization": "Bearer " + token("dave")},
        timeout=TIMEOUT,
    )
    ice_servers = [s for s in answer.json()["iceServers"] if "username" in s]
    message, kinds = asyncio.run(_data_channel_through(ice_servers))
    assert message == "through coturn"
    assert kinds == {"relay"}


def test_no_credentials_before_a_token(server, coturn):
    """
    A native client that connected without a token gets no C{iceServers}
    in its welcome, and C{unauthenticated} for an C{ice-servers} request,
    until its C{auth} succeeds; then they are pushed.
    """
    client = websocket.create_connection(server.base + "/signal", timeout=TIMEOUT)
    try:
        assert "iceServers" not in json.loads(client.recv())
        client.send(json.dumps({"type": "ice-servers"}))
        assert json.loads(client.recv())["code"] == "unauthenticated"
        client.send(json.dumps({"type": "auth", "token": token("erin")}))
        assert json.loads(client.recv())["type"] == "authenticated"
        pushed = json.loads(client.recv())
        assert pushed["type"] == "ice-servers"
        assert turn_entry(pushed["iceServers"])["username"].endswith(":erin")
    finally:
        client.close()
