"""
Connection- and HTTP-level limits of C{twistd -n signaling}, seen by real
clients over loopback: connections and new connections per address (also
behind a trusted proxy), Engine.IO sessions counted as connections, the
request deadline (slowloris), body limits, the fd warning, the access log,
CORS and the room API.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import orjson
import pytest
import requests
import trustme
import websocket

from .realsockets import TwistdServer

EIO = "/socket.io/?EIO=4&transport=polling"


def _start(
    tmp_path_factory, name: str, *args: str, file_limit: int | None = None
) -> TwistdServer:
    server = TwistdServer(
        "--port", "tcp:0:interface=127.0.0.1", *args, file_limit=file_limit
    )
    server.start(tmp_path_factory.mktemp(name) / "twistd.log")
    server.port = int(server.urls[0].rsplit(":", 1)[1].split("/", 1)[0])
    server.http_url = f"http://127.0.0.1:{server.port}"
    return server


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """
    Three connections per address, no rate limit, defaults otherwise.
    """
    server = _start(
        tmp_path_factory,
        "capped",
        "--max-connections-per-address",
        "3",
        "--max-new-connections-per-address",
        "0",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """
    Short request deadline, small bodies, the access log on, an API token,
    no allowed origins.
    """
    server = _start(
        tmp_path_factory,
        "strict",
        "--request-timeout",
        "0.5",
        "--max-message-size",
        "1024",
        "--max-request-body",
        "2048",
        "--access-log",
        "--api-token",
        "s3cret-api-token",
        "--max-rooms-page",
        "3",
    )
    yield server
    server.stop()


def connect(server: TwistdServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def response_of(connection: socket.socket) -> tuple[int, dict, bytes]:
    """
    Read one HTTP response from a raw socket.
    """
    response = http.client.HTTPResponse(connection)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def get(
    connection: socket.socket, path: str, headers: str = ""
) -> tuple[int, dict, bytes]:
    connection.sendall(
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode()
    )
    return response_of(connection)


def eventually(predicate, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def open_session(session: requests.Session, server: TwistdServer) -> requests.Response:
    return session.get(server.http_url + EIO, timeout=5)


# Connections per address (item 6) and Engine.IO sessions (item 5)


def test_connections_over_the_cap_get_429_at_accept(capped):
    """
    A fourth connection from one address is answered 429 with a JSON body
    before it sends anything; the refusal is logged once, the address
    truncated; closing a connection frees its slot.
    """
    held = [connect(capped) for _ in range(3)]
    for connection in held:
        assert get(connection, "/healthz")[0] == 200
    refused = connect(capped)
    status, headers, body = response_of(refused)
    assert (status, orjson.loads(body)) == (
        429,
        {"error": "too many connections from this address"},
    )
    assert refused.recv(1) == b""
    refused.close()
    for _ in range(3):
        again = connect(capped)
        assert response_of(again)[0] == 429
        again.close()
    lines = [
        line for line in capped.log().splitlines() if "refused connections from" in line
    ]
    assert len(lines) == 1 and "127.0.0.x" in lines[0] and "127.0.0.1" not in lines[0]

    held.pop().close()

    def freed():
        connection = connect(capped)
        try:
            return get(connection, "/healthz")[0] == 200
        except (http.client.HTTPException, OSError):
            return False
        finally:
            connection.close()

    eventually(freed)
    for connection in held:
        connection.close()


def _websocket_slots_are_freed(url: str, cap: int, **options) -> None:
    held = [websocket.create_connection(url, timeout=5, **options) for _ in range(cap)]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=5, **options)
    assert refused.value.status_code == 429
    for client in held:
        client.close()

    def reopened():
        try:
            websocket.create_connection(url, timeout=5, **options).close()
        except websocket.WebSocketBadStatusException:
            return False
        return True

    eventually(reopened)


def test_websockets_hold_their_slot_until_they_close(capped):
    """
    A WebSocket keeps its connection's slot after the upgrade and frees it
    when it closes.
    """
    _websocket_slots_are_freed(capped.http_url.replace("http", "ws") + "/signal", 3)


def test_websockets_over_tls_free_their_slot(tmp_path_factory):
    """
    The same under TLS, where the WebSocket takes the connection over from
    the TLS layer.
    """
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls-cert")
    cert_path, ca_path = directory / "cert.pem", directory / "ca.pem"
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert_path.write_bytes(
        b"".join(blob.bytes() for blob in issued.cert_chain_pems)
        + issued.private_key_pem.bytes()
    )
    ca.cert_pem.write_to_path(str(ca_path))
    server = TwistdServer(
        "--port",
        "tls:0:interface=127.0.0.1",
        "--tls-cert",
        str(cert_path),
        "--max-connections-per-address",
        "1",
        "--max-new-connections-per-address",
        "0",
    )
    server.start(directory / "twistd.log")
    try:
        port = server.urls[0].rsplit(":", 1)[1].split("/", 1)[0]
        _websocket_slots_are_freed(
            f"wss://localhost:{port}/signal", 1, sslopt={"ca_certs": str(ca_path)}
        )
    finally:
        server.stop()


def test_polling_sessions_count_as_connections(capped):
    """
    Engine.IO sessions opened over one keep-alive connection each hold a
    slot of the address until they end: with a cap of three, the
    connection and two sessions fill it, a third session is refused with
    Engine.IO's JSON error and 429, and closing a session frees its slot.
    """
    with requests.Session() as session:
        sids = []
        for _ in range(2):
            response = open_session(session, capped)
            assert response.status_code == 200
            sids.append(json.loads(response.text[1:])["sid"])
        refused = open_session(session, capped)
        assert (refused.status_code, refused.json()) == (
            429,
            {"code": 3, "message": "Too many connections from this address"},
        )
        closed = session.post(
            capped.http_url + EIO + "&sid=" + sids[0], data=b"1", timeout=5
        )
        assert closed.text == "ok"
        assert open_session(session, capped).status_code == 200
    # The sids of the sessions never reach the log below debug.
    log = capped.log()
    assert not any(sid in log for sid in sids)


def test_new_connections_per_second(tmp_path_factory):
    """
    With --max-new-connections-per-address 5 (bursts of 10), a burst of
    connections is cut after ten with 429, and so is a burst of Engine.IO
    sessions over one keep-alive connection.
    """
    server = _start(tmp_path_factory, "rate", "--max-new-connections-per-address", "5")
    try:
        statuses = []
        for _ in range(14):
            connection = connect(server)
            statuses.append(get(connection, "/healthz")[0])
            connection.close()
        assert statuses[:10] == [200] * 10 and 429 in statuses[10:], statuses
        time.sleep(0.6)  # three tokens back
        with requests.Session() as session:
            codes = [open_session(session, server).status_code for _ in range(10)]
        # About three tokens, and a few more refilled while the requests run.
        assert codes[0] == 200 and codes.count(200) <= 7 and 429 in codes, codes
    finally:
        server.stop()


def test_trusted_proxy_hops(tmp_path_factory):
    """
    Behind --trust-forwarded 1 the address is the last Forwarded /
    X-Forwarded-For entry: two clients behind the same proxy are counted
    apart, and one client's second connection is over its cap of one; the
    access log shows the forwarded address, truncated.
    """
    server = _start(
        tmp_path_factory,
        "proxy",
        "--trust-forwarded",
        "1",
        "--max-connections-per-address",
        "1",
        "--access-log",
    )
    try:
        first = connect(server)
        xff = "X-Forwarded-For: 203.0.113.250, 198.51.100.7\r\n"
        assert get(first, "/healthz", xff)[0] == 200
        second = connect(server)
        status, _, body = get(second, "/healthz", xff)
        assert (status, orjson.loads(body)) == (
            429,
            {"error": "too many connections from this address"},
        )
        forwarded = connect(server)
        assert (
            get(forwarded, "/healthz", "Forwarded: for=198.51.100.7;proto=https\r\n")[0]
            == 429
        )
        other = connect(server)
        assert get(other, "/healthz", "X-Forwarded-For: 198.51.100.8\r\n")[0] == 200
        for connection in (first, second, forwarded, other):
            connection.close()
        log = server.log()
        assert '198.51.100.x "GET /healthz" 200' in log
        assert "198.51.100.7" not in log and "198.51.100.8" not in log
    finally:
        server.stop()


# The request deadline (item 7)


def test_slow_request_head_is_cut_at_the_deadline(strict):
    """
    A client sending one header line every 0.2 s is answered 408 and
    closed when --request-timeout (0.5 s) has passed, though it never went
    quiet; a connection that sends nothing is closed too.
    """
    slow = connect(strict)
    silent = connect(strict)
    started = time.monotonic()
    slow.sendall(b"GET /health HTTP/1.1\r\n")
    for index in range(5):
        time.sleep(0.2)
        try:
            slow.sendall(f"X-Slow-{index}: 1\r\n".encode())
        except OSError:
            break
    status, _, body = response_of(slow)
    assert (status, orjson.loads(body)) == (
        408,
        {"error": "the request took too long to arrive"},
    )
    assert time.monotonic() - started < 2
    assert silent.recv(100) == b""
    slow.close()
    silent.close()


def test_websocket_outlives_the_request_deadline(strict):
    """
    The deadline ends with the upgrade: a quiet WebSocket is still usable
    after it.
    """
    ws_url = strict.http_url.replace("http", "ws") + "/signal"
    client = websocket.create_connection(ws_url, timeout=5)
    try:
        assert json.loads(client.recv())["type"] == "welcome"
        time.sleep(0.8)
        client.send(json.dumps({"type": "join", "room": "after-deadline"}))
        assert json.loads(client.recv())["type"] == "joined"
    finally:
        client.close()


def test_open_files_warning(tmp_path_factory):
    """
    Near RLIMIT_NOFILE (here ulimit -n 64) the server logs one warning,
    not one per connection.
    """
    server = _start(
        tmp_path_factory,
        "files",
        "--max-connections-per-address",
        "0",
        "--max-new-connections-per-address",
        "0",
        file_limit=64,
    )
    connections = []
    try:
        for _ in range(56):
            connections.append(connect(server))
        eventually(lambda: "file descriptors are open" in server.log())
        time.sleep(0.2)
        lines = [
            line
            for line in server.log().splitlines()
            if "file descriptors are open" in line
        ]
        assert len(lines) == 1 and "of 64 file descriptors" in lines[0]
    finally:
        for connection in connections:
            connection.close()
        server.stop()


# Request bodies (item 9)


def test_oversized_content_length_is_refused_before_the_body(strict):
    """
    A 300 MiB Content-Length is answered 413 at once, without the body.
    """
    connection = connect(strict)
    connection.sendall(
        b"POST /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 314572800\r\n\r\n"
    )
    status, _, body = response_of(connection)
    assert (status, orjson.loads(body)) == (
        413,
        {"error": "request body too large", "limit": 2048},
    )
    connection.close()


def test_get_takes_no_body(strict):
    connection = connect(strict)
    connection.sendall(
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n0123456789"
    )
    status, _, body = response_of(connection)
    assert (status, orjson.loads(body)) == (
        413,
        {"error": "this request takes no body"},
    )
    connection.close()


def test_chunked_polling_body_is_cut_past_the_max_payload(strict):
    """
    A chunked POST to a polling session stops being read past the Engine.IO
    max payload (--max-message-size 1024): 413 in Engine.IO's form, and the
    connection closes though the client meant to send far more.
    """
    with requests.Session() as session:
        sid = json.loads(open_session(session, strict).text[1:])["sid"]
    connection = connect(strict)
    connection.sendall(
        f"POST {EIO}&sid={sid} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"4" + b"x" * 511
    sent = 0
    try:
        for _ in range(64):
            connection.sendall(b"200\r\n" + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:
        pass
    status, _, body = response_of(connection)
    assert (status, orjson.loads(body)) == (
        413,
        {"code": 3, "message": "Payload too large"},
    )
    connection.settimeout(5)
    while connection.recv(65536):
        pass
    connection.close()


# Logs (item 14)


def test_access_log_is_off_by_default(capped):
    connection = connect(capped)
    assert get(connection, "/healthz?token=abc.def.ghi")[0] == 200
    connection.close()
    time.sleep(0.2)
    assert "/healthz" not in capped.log() and "abc.def.ghi" not in capped.log()


def test_access_log_redacts_secrets(strict):
    """
    --access-log logs requests with token-, sid- and auth-like query values
    redacted and the client address truncated.
    """
    token = "eyJhbGciOiJIUzI1NiJ9.secret-token-body.sig"
    requests.get(
        strict.http_url + f"/healthz?token={token}&room=r1&auth=x1y2z3", timeout=5
    )
    with requests.Session() as session:
        sid = json.loads(open_session(session, strict).text[1:])["sid"]
        assert (
            session.post(
                strict.http_url + EIO + "&sid=" + sid, data=b"6", timeout=5
            ).text
            == "ok"
        )
    eventually(lambda: "/healthz?" in strict.log() and "sid=REDACTED" in strict.log())
    log = strict.log()
    assert '127.0.0.x "GET /healthz?token=REDACTED&room=r1&auth=REDACTED" 200' in log
    assert token not in log and "x1y2z3" not in log and sid not in log
    assert "127.0.0.1 " not in log


# CORS and the room API (items 15 and 16)


def test_cors_without_allowed_origins_has_no_credentials(strict):
    for path in ("/api/rooms", EIO):
        response = requests.get(
            strict.http_url + path,
            headers={"Origin": "https://evil.example"},
            timeout=5,
        )
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers


def test_room_detail_needs_the_api_token_and_takes_a_slash(strict):
    """
    With --api-token, /api/rooms/{id} answers 401 JSON without the bearer
    token; with it, a room named "a/b" is found as /api/rooms/a%2Fb.
    """
    ws_url = strict.http_url.replace("http", "ws") + "/signal"
    client = websocket.create_connection(ws_url, timeout=5)
    try:
        peer_id = json.loads(client.recv())["peerId"]
        client.send(json.dumps({"type": "join", "room": "a/b"}))
        assert json.loads(client.recv())["type"] == "joined"
        url = strict.http_url + "/api/rooms/a%2Fb"
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret-api-token"},
        ):
            refused = requests.get(url, headers=headers, timeout=5)
            assert refused.status_code == 401
            assert refused.json() == {
                "error": "this API needs Authorization: Bearer <api token>"
            }
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        room = requests.get(
            url, headers={"Authorization": "Bearer s3cret-api-token"}, timeout=5
        )
        assert room.status_code == 200
        assert (room.json()["id"], [p["peer_id"] for p in room.json()["peers"]]) == (
            "a/b",
            [peer_id],
        )
    finally:
        client.close()


def test_rooms_are_paginated(strict):
    """
    /api/rooms?limit=N pages through the rooms in id order; next_after
    leads to the next page and is null on the last; a limit over the
    maximum (--max-rooms-page 3) is a 400, and without one a page holds
    that maximum.
    """
    ws_url = strict.http_url.replace("http", "ws") + "/signal"
    client = websocket.create_connection(ws_url, timeout=5)
    try:
        client.recv()
        names = [f"page-{index}" for index in range(5)]
        for name in names:
            client.send(json.dumps({"type": "join", "room": name}))
            assert json.loads(client.recv())["type"] == "joined"
        seen, after = [], "page-"
        while after is not None:
            page = requests.get(
                strict.http_url + "/api/rooms",
                params={"limit": 2, "after": after},
                timeout=5,
            ).json()
            assert len(page["rooms"]) <= 2
            seen += [
                room["id"] for room in page["rooms"] if room["id"].startswith("page-")
            ]
            after = page["next_after"]
        assert seen == names
        too_many = requests.get(strict.http_url + "/api/rooms?limit=4", timeout=5)
        assert (too_many.status_code, too_many.json()) == (
            400,
            {"error": "limit must be a whole number from 1 to 3"},
        )
        assert (
            len(requests.get(strict.http_url + "/api/rooms", timeout=5).json()["rooms"])
            == 3
        )
    finally:
        client.close()


def test_unknown_api_path_is_a_json_404(strict):
    response = requests.get(strict.http_url + "/api/nope", timeout=5)
    assert (response.status_code, response.json()) == (
        404,
        {"error": "not found", "path": "/api/nope"},
    )
