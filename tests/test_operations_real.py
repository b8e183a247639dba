"""
What an operator sees of a real C{twistd signaling}: the C{tls:PORT}
certificate look-up, its reload on SIGHUP.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import time

import orjson
import pytest
import trustme
import websocket

from .realsockets import ROOT, TWISTD, TwistdServer, twistd_servers

#: twistd ends by re-raising the signal that stopped it, once the services
#: have stopped (systemd counts that as a clean stop).
STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)
SERVER_PORT = re.compile(r"wss://127\.0\.0\.1:(\d+)/")


@pytest.fixture
def twistd(tmp_path):
    yield from twistd_servers(tmp_path)


def issue(directory, cert_name="cert.pem", key_name="key.pem"):
    """
    A new CA and a certificate for 127.0.0.1 from it in C{directory}; the
    CA's PEM path.
    """
    authority = trustme.CA()
    issued = authority.issue_cert("localhost", "127.0.0.1")
    (directory / cert_name).write_bytes(
        b"".join(blob.bytes() for blob in issued.cert_chain_pems)
    )
    (directory / key_name).write_bytes(issued.private_key_pem.bytes())
    ca_path = directory.parent / f"ca-{id(authority)}.pem"
    authority.cert_pem.write_to_path(str(ca_path))
    return str(ca_path)


def port_of(server):
    return int(SERVER_PORT.match(server.urls[0]).group(1))


def peer_fingerprint(port):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            digest = (
                hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest().upper()
            )
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def health(port, ca_path):
    """
    GET /health over TLS, verifying the server against C{ca_path}.
    """
    context = ssl.create_default_context(cafile=ca_path)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    return response.split(b"\r\n", 1)[0]


def wait_for(server, pattern, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, server.log()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the log:\n{server.log()}")


def test_tls_shorthand_finds_the_credentials_directory(twistd, tmp_path):
    """
    C{--port tls:PORT} without certificate options serves the certbot-named
    pair from $CREDENTIALS_DIRECTORY.
    """
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    ca_path = issue(credentials, "fullchain.pem", "privkey.pem")
    server = twistd(
        "--port",
        "tls:0:interface=127.0.0.1",
        env={"CREDENTIALS_DIRECTORY": str(credentials)},
    )
    assert health(port_of(server), ca_path) == b"HTTP/1.1 200 OK"
    assert "self-signed" not in server.log()


def test_tls_shorthand_on_loopback_makes_a_self_signed_certificate(twistd, tmp_path):
    """
    With no certificate anywhere, a loopback C{tls:PORT} serves a new
    self-signed certificate whose fingerprint is in the log.
    """
    server = twistd(
        "--port",
        "tls:0:interface=127.0.0.1",
        env={"CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    logged = re.search(r"self-signed .* SHA-256 ([0-9A-F:]{95})", server.log()).group(1)
    assert peer_fingerprint(port_of(server)) == logged


def test_tls_shorthand_on_every_interface_needs_a_certificate(tmp_path):
    """
    With no certificate anywhere, C{tls:PORT} on every interface stops with
    one line naming where it looked.
    """
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "signaling", "--port", "tls:0"],
        cwd=ROOT,
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line == (
        f"twistd signaling: --port tls:0 needs a certificate: no cert.pem + key.pem "
        f"or fullchain.pem + privkey.pem in {tmp_path}, /etc/signaling/tls; give "
        "--tls-cert, or --dev-tls for a self-signed one (see twistd signaling --help)"
    )


def test_sighup_reloads_the_certificate_and_keeps_connections(twistd, tmp_path):
    """
    SIGHUP serves a renewed certificate to new connections while an open
    one goes on; a broken renewal keeps the old certificate and logs one
    line.
    """
    directory = tmp_path / "tls"
    directory.mkdir()
    old_ca = issue(directory)
    server = twistd(
        "--port",
        "tls:0:interface=127.0.0.1",
        "--tls-cert",
        str(directory / "cert.pem"),
        "--tls-key",
        str(directory / "key.pem"),
    )
    port = port_of(server)
    url = f"wss://127.0.0.1:{port}/signal"
    client = websocket.create_connection(url, sslopt={"ca_certs": old_ca}, timeout=5)
    try:
        assert orjson.loads(client.recv())["type"] == "welcome"

        new_ca = issue(directory)
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(server, r"TLS certificate reloaded")
        assert health(port, new_ca) == b"HTTP/1.1 200 OK"
        with pytest.raises(ssl.SSLCertVerificationError):
            health(port, old_ca)
        client.send(orjson.dumps({"type": "join", "room": "r"}))
        assert orjson.loads(client.recv())["type"] == "joined"

        (directory / "cert.pem").write_text("not a certificate")
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(
            server,
            r"TLS certificate not reloaded, keeping the old one: no certificate in",
        )
        assert health(port, new_ca) == b"HTTP/1.1 200 OK"
        client.send(orjson.dumps({"type": "leave", "room": "r"}))
        assert orjson.loads(client.recv())["type"] == "left"
    finally:
        client.close()
    assert server.process.poll() is None


def plain_port(server):
    return int(re.match(r"ws://127\.0\.0\.1:(\d+)/", server.urls[0]).group(1))


def close_code(client):
    """
    Read up to the server's close frame; its code.
    """
    while True:
        opcode, data = client.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big")


def test_sighup_without_tls_keeps_the_server(twistd):
    """
    SIGHUP (systemctl reload) of a server without a tls:PORT certificate
    logs that there is nothing to reload, and the server goes on.
    """
    server = twistd("--port", "tcp:0:interface=127.0.0.1")
    # An answer means the reactor runs, so every service has started (as
    # systemd, which reloads only after READY=1).
    import requests

    assert (
        requests.get(
            f"http://127.0.0.1:{plain_port(server)}/health", timeout=5
        ).status_code
        == 200
    )
    os.kill(server.process.pid, signal.SIGHUP)
    wait_for(server, r"SIGHUP: no tls:PORT certificate to reload")
    with socket.create_connection(("127.0.0.1", plain_port(server)), timeout=5):
        pass
    assert server.process.poll() is None


def test_sigterm_drains_every_dialect(twistd):
    """
    SIGTERM tells a native peer to reconnect and closes it with 1001, closes
    a topic peer with 1001, sends a Socket.IO client Engine.IO's close
    packet, stops accepting, and exits once they have gone.
    """
    server = twistd("--port", "tcp:0:interface=127.0.0.1")
    port = plain_port(server)
    native = websocket.create_connection(f"ws://127.0.0.1:{port}/signal", timeout=5)
    assert orjson.loads(native.recv())["type"] == "welcome"
    topic = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/lobby", timeout=5)
    assert orjson.loads(topic.recv())["type"] == "welcome"
    engine = websocket.create_connection(
        f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=5
    )
    assert engine.recv().startswith("0{")
    engine.send("40")
    assert engine.recv().startswith("40{")

    started = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    assert orjson.loads(native.recv()) == {
        "type": "reconnect",
        "reason": "going-away",
        "delayMs": 1000,
    }
    assert close_code(native) == 1001
    assert close_code(topic) == 1001
    assert engine.recv() == "1"
    assert close_code(engine) == 1001
    for client in (native, topic, engine):
        client.close()
    assert server.process.wait(5) in STOPPED_BY_SIGTERM
    assert time.monotonic() - started < 3
    assert "told 3 peers the server is going away" in server.log()
    assert re.search(r"drained in \d", server.log())


def test_drain_ends_at_its_timeout(twistd):
    """
    A peer that never answers the close is dropped at --drain-timeout.
    """
    server = twistd("--port", "tcp:0:interface=127.0.0.1", "--drain-timeout", "0.5")
    port = plain_port(server)
    silent = websocket.WebSocket()
    # No reading from here on: the close frame is never answered.
    silent.connect(f"ws://127.0.0.1:{port}/signal", timeout=5)
    try:
        started = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(5) in STOPPED_BY_SIGTERM
        assert 0.4 < time.monotonic() - started < 3
        assert "drain timeout: 1 peers still connected are dropped" in server.log()
    finally:
        silent.shutdown()


def test_systemd_notifications(twistd, tmp_path):
    """
    Over $NOTIFY_SOCKET: READY=1 once the port listens, WATCHDOG=1 at half
    of WatchdogSec, STOPPING=1 when SIGTERM starts the drain.
    """
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    receiver.settimeout(5)
    try:
        server = twistd(
            "--port",
            "tcp:0:interface=127.0.0.1",
            env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"},
        )
        assert receiver.recv(256) == b"READY=1"
        with socket.create_connection(("127.0.0.1", plain_port(server)), timeout=5):
            pass
        assert receiver.recv(256) == b"WATCHDOG=1"
        assert receiver.recv(256) == b"WATCHDOG=1"
        os.kill(server.process.pid, signal.SIGTERM)
        messages = []
        while b"STOPPING=1" not in messages:
            messages.append(receiver.recv(256))
        assert set(messages) <= {b"WATCHDOG=1", b"STOPPING=1"}
        assert server.process.wait(5) in STOPPED_BY_SIGTERM
    finally:
        receiver.close()


def scrape(server):
    """
    The metrics text of C{server}'s --metrics-port, as C{{sample: value}}.
    """
    url = re.search(r"signaling metrics on (http://\S+)", server.log()).group(1)
    import requests

    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_on_their_own_port(twistd):
    """
    --metrics-port serves Prometheus text: connections by dialect and
    transport, peers, rooms, relays by kind and dialect, errors by code,
    refused handshakes, bytes, GC pauses, reactor lag and relay times; the public port
    has no /metrics.
    """
    import requests

    server = twistd(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--metrics-port",
        "tcp:0:interface=127.0.0.1",
        "--allowed-origin",
        "https://app.example",
        "--relay-time-sample",
        "1",
    )
    port = plain_port(server)
    alice = websocket.create_connection(
        f"ws://127.0.0.1:{port}/signal", timeout=5, suppress_origin=True
    )
    bob = websocket.create_connection(
        f"ws://127.0.0.1:{port}/signal", timeout=5, suppress_origin=True
    )
    try:
        alice_id = orjson.loads(alice.recv())["peerId"]
        orjson.loads(bob.recv())
        for client in (alice, bob):
            client.send(orjson.dumps({"type": "join", "room": "r"}))
            assert orjson.loads(client.recv())["type"] == "joined"
        assert orjson.loads(alice.recv())["type"] == "peer-joined"
        bob.send(
            orjson.dumps(
                {"type": "offer", "room": "r", "to": alice_id, "payload": {"sdp": "x"}}
            )
        )
        assert orjson.loads(alice.recv())["type"] == "offer"
        bob.send("not json")
        assert orjson.loads(bob.recv())["code"] == "invalid-json"
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(
                f"ws://127.0.0.1:{port}/signal",
                timeout=5,
                origin="https://evil.example",
            )

        engine = websocket.create_connection(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
            timeout=5,
            suppress_origin=True,
        )
        assert engine.recv().startswith("0{")
        engine.send("40")
        assert engine.recv().startswith("40{")

        samples = scrape(server)
        engine.close()
        assert (
            samples['signaling_connections{dialect="native",transport="websocket"}']
            == 2
        )
        assert (
            samples['signaling_connections{dialect="socketio",transport="websocket"}']
            == 1
        )
        assert samples["signaling_peers"] == 3
        assert samples["signaling_rooms"] == 1
        assert samples['signaling_relayed_total{dialect="native",kind="offer"}'] == 1
        assert samples['signaling_errors_total{code="invalid-json"}'] == 1
        assert samples['signaling_handshakes_refused_total{reason="origin"}'] == 1
        assert samples["signaling_received_bytes_total"] > 0
        assert (
            samples["signaling_sent_bytes_total"]
            > samples["signaling_received_bytes_total"]
        )
        assert samples["signaling_reactor_lag_seconds_count"] >= 1
        # The offer, from bob's frame to alice's; joins and errors relay nothing.
        assert samples['signaling_relay_seconds_count{dialect="native"}'] == 1
        assert samples['signaling_relay_seconds_bucket{dialect="native",le="0.5"}'] == 1
        assert any(
            name.startswith("signaling_gc_pause_seconds_count") for name in samples
        )
        assert not any(alice_id in name or '"r"' in name for name in samples)
    finally:
        alice.close()
        bob.close()
    assert (
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 404
    )


def test_connections_are_logged_with_dialect_peer_and_truncated_address(twistd):
    """
    A connection's open and close are logged at info with its dialect, peer
    id and the client's address behind a trusted proxy, truncated.
    """
    server = twistd("--port", "tcp:0:interface=127.0.0.1", "--trust-forwarded", "1")
    port = plain_port(server)
    client = websocket.create_connection(
        f"ws://127.0.0.1:{port}/ws/lobby",
        timeout=5,
        header=["X-Forwarded-For: 203.0.113.7"],
    )
    peer_id = orjson.loads(client.recv())["selfId"]
    client.close()
    wait_for(server, rf"topic connection closed: peer {peer_id} from 203\.0\.113\.x")
    assert f"topic connection opened: peer {peer_id} from 203.0.113.x" in server.log()
    assert "203.0.113.7" not in server.log()


def test_json_log_format(tmp_path):
    """
    --log-format json writes one JSON object per line, with each event's
    fields: the connection events carry dialect, peer and address.
    """
    server = TwistdServer("--port", "tcp:0:interface=127.0.0.1", "--log-format", "json")
    try:
        server.start(tmp_path / "twistd.log")
        [listening] = [
            record
            for record in map(orjson.loads, server.log().splitlines())
            if record["message"].startswith("signaling listening on")
        ]
        assert listening["level"] == "info"
        client = websocket.create_connection(listening["url"], timeout=5)
        peer_id = orjson.loads(client.recv())["peerId"]
        client.close()
        wait_for(server, r"native connection closed")
    finally:
        server.stop()
    records = [orjson.loads(line) for line in server.log().splitlines()]
    [opened] = [record for record in records if record.get("what") == "opened"]
    assert {key: opened[key] for key in ("dialect", "peer", "address", "level")} == {
        "dialect": "native",
        "peer": peer_id,
        "address": "127.0.0.x",
        "level": "info",
    }
    assert (
        opened["message"] == f"native connection opened: peer {peer_id} from 127.0.0.x"
    )


def test_sigterm_sends_a_polling_client_the_engineio_close_packet(twistd):
    """
    A Socket.IO client on long-polling gets Engine.IO's close packet on its
    pending poll when SIGTERM drains the server, and no DISCONNECT.
    """
    import threading

    import requests

    server = twistd("--port", "tcp:0:interface=127.0.0.1")
    base = f"http://127.0.0.1:{plain_port(server)}/socket.io/?EIO=4&transport=polling"
    # One kept-alive connection, as a browser's: the pending poll is on it.
    http = requests.Session()
    opened = http.get(base, timeout=5).text
    sid = orjson.loads(opened[1:])["sid"]
    assert http.post(f"{base}&sid={sid}", data="40", timeout=5).text == "ok"
    assert http.get(f"{base}&sid={sid}", timeout=5).text.startswith("40{")
    answers = []
    poll = threading.Thread(
        target=lambda: answers.append(http.get(f"{base}&sid={sid}", timeout=10).text)
    )
    poll.start()
    # The poll waits on the server by then (it answers within --ping-interval).
    time.sleep(0.3)
    os.kill(server.process.pid, signal.SIGTERM)
    poll.join(10)
    assert answers == ["1"]
    assert server.process.wait(5) in STOPPED_BY_SIGTERM
