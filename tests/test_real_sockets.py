"""
What only real sockets show: TLS, twistd itself, heartbeats on the real
reactor.
"""

from __future__ import annotations

import sys
import time

import orjson
import pytest
import pytest_twisted
import treq
import trustme
from twisted.internet import reactor, ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from signaling import tap

from .realsockets import TwistdServer, open_websocket, sleep, twistd_servers


@pytest.fixture
def certificate(tmp_path):
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key_path.write_bytes(issued.private_key_pem.bytes())
    trust_root = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    return cert_path, key_path, trust_root


@pytest.fixture
def twistd(tmp_path):
    yield from twistd_servers(tmp_path)


async def join(url, room, context=None, metadata=None):
    client = await open_websocket(url, context)
    welcome = await client.next()
    assert welcome["type"] == "welcome"
    client.peer_id = welcome["peerId"]
    client.send_json({"type": "join", "room": room, "metadata": metadata or {}})
    joined = await client.next()
    assert joined["type"] == "joined"
    client.joined = joined
    return client


def unnumbered(event: dict) -> dict:
    """
    C{event} without its C{seq}, which must be there: twistd resumes
    sessions by default.
    """
    assert isinstance(event.pop("seq"), int)
    return event


async def offer_answer_candidate(alice, bob, room):
    bob.send_json(
        {
            "type": "offer",
            "room": room,
            "to": alice.peer_id,
            "payload": {"sdp": "offer-sdp"},
        }
    )
    assert unnumbered(await alice.next()) == {
        "type": "offer",
        "room": room,
        "from": bob.peer_id,
        "payload": {"sdp": "offer-sdp"},
    }
    alice.send_json(
        {
            "type": "answer",
            "room": room,
            "to": bob.peer_id,
            "payload": {"sdp": "answer-sdp"},
        }
    )
    assert unnumbered(await bob.next()) == {
        "type": "answer",
        "room": room,
        "from": alice.peer_id,
        "payload": {"sdp": "answer-sdp"},
    }
    alice.send_json(
        {
            "type": "candidate",
            "room": room,
            "to": bob.peer_id,
            "payload": {"candidate": "c"},
        }
    )
    assert unnumbered(await bob.next()) == {
        "type": "candidate",
        "room": room,
        "from": alice.peer_id,
        "payload": {"candidate": "c"},
    }


@pytest_twisted.ensureDeferred
async def test_service_over_tls_in_process(certificate):
    """
    The plugin's service, started with --port tls:PORT and a certificate,
    serves a wss:// join and relay.
    """
    cert_path, key_path, trust_root = certificate
    options = tap.Options(environ={})
    options.parseOptions(
        [
            "--port",
            "tls:0:interface=127.0.0.1",
            "--tls-cert",
            str(cert_path),
            "--tls-key",
            str(key_path),
        ]
    )
    service = tap.make_service(options, reactor)
    service.privilegedStartService()
    service.startService()
    try:
        [listener] = [
            child for child in service if isinstance(child, tap.ListeningService)
        ]
        port = listener.port.getHost().port
        context = ssl.optionsForClientTLS("localhost", trustRoot=trust_root)
        url = f"wss://localhost:{port}/signal"
        alice = await join(url, "secure", context)
        bob = await join(url, "secure", context)
        assert [peer["id"] for peer in bob.joined["peers"]] == [alice.peer_id]
        assert (await alice.next())["type"] == "peer-joined"
        await offer_answer_candidate(alice, bob, "secure")
        alice.sendClose()
        bob.sendClose()
        await alice.closed
        await bob.closed
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_twistd_serves_wss_and_https(certificate, twistd):
    """
    twistd -n signaling --port tls:PORT --tls-cert … --tls-key … serves
    wss://…/signal and https://…/health.
    """
    cert_path, key_path, trust_root = certificate
    server = twistd(
        "--port",
        "tls:0:interface=127.0.0.1",
        "--tls-cert",
        str(cert_path),
        "--tls-key",
        str(key_path),
    )
    [url] = server.urls
    assert url.startswith("wss://")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    context = ssl.optionsForClientTLS("localhost", trustRoot=trust_root)
    alice = await join(f"wss://localhost:{port}/signal", "tls-room", context)
    bob = await join(f"wss://localhost:{port}/signal", "tls-room", context)
    assert (await alice.next())["peer"]["id"] == bob.peer_id
    await offer_answer_candidate(alice, bob, "tls-room")

    agent = Agent(
        reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust_root)
    )
    response = await treq.get(f"https://localhost:{port}/health", agent=agent)
    assert response.code == 200
    body = orjson.loads(await response.content())
    assert body["status"] == "ok"
    assert abs(body["timestamp"] / 1000 - time.time()) < 60
    for client in (alice, bob):
        client.sendClose()
        await client.closed


@pytest_twisted.ensureDeferred
async def test_three_native_clients_and_a_silent_one(twistd):
    """
    Three clients join one room over plain WebSocket; the third's joined lists
    the first two; an exchange arrives with the right from; a client that
    stops answering pings is announced gone within ping interval + timeout +
    the resume grace it is waited for.
    """
    server = twistd(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "1",
        "--resume-grace",
        "0.5",
    )
    [url] = server.urls
    assert url.startswith("ws://127.0.0.1:") and url.endswith("/signal")
    alice = await join(url, "trio", metadata={"name": "alice"})
    bob = await join(url, "trio", metadata={"name": "bob"})
    carol = await join(url, "trio", metadata={"name": "carol"})
    assert carol.joined["peers"] == [
        {"id": alice.peer_id, "metadata": {"name": "alice"}},
        {"id": bob.peer_id, "metadata": {"name": "bob"}},
    ]
    assert [(await alice.next())["peer"]["id"] for _ in range(2)] == [
        bob.peer_id,
        carol.peer_id,
    ]
    assert (await bob.next())["peer"]["id"] == carol.peer_id
    await offer_answer_candidate(alice, carol, "trio")

    carol.answer_pings = False
    started = time.monotonic()
    gone = [await alice.next(timeout=5), await bob.next(timeout=5)]
    elapsed = time.monotonic() - started
    assert [(m["type"], m["peer"]["id"]) for m in gone] == [
        ("peer-left", carol.peer_id)
    ] * 2
    # ping interval 1 s + timeout 1 s + grace 0.5 s, and Autobahn's 0.2 s
    # timer buckets.
    assert elapsed < 2 + 0.5 + 0.5 + 1, elapsed
    for client in (alice, bob):
        client.sendClose()
        await client.closed


@pytest_twisted.ensureDeferred
async def test_busy_port_fails_startup(twistd, tmp_path):
    """
    Starting on a port that is taken exits non-zero with one line saying so.
    """
    server = twistd("--port", "tcp:0:interface=127.0.0.1")
    port = server.urls[0].rsplit(":", 1)[1].split("/")[0]
    second = TwistdServer("--port", f"tcp:{port}:interface=127.0.0.1")
    with pytest.raises(AssertionError, match="exited early"):
        second.start(tmp_path / "busy.log")
    assert second.process is None or second.process.returncode != 0
    lines = [line for line in second.log().splitlines() if "cannot listen" in line]
    assert len(lines) == 1 and "already in use" in lines[0].lower()
    assert "Traceback" not in second.log()


# What systemd does before starting the service: the socket becomes fd 3 and
# LISTEN_* describe it to the process it execs.
_ACTIVATE = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="signaling")
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest_twisted.ensureDeferred
async def test_systemd_socket_activation(tmp_path):
    """
    --port systemd:domain=INET:index=0 serves on a socket that systemd (here,
    the test) bound and passed as file descriptor 3.
    """
    import socket
    import subprocess

    from .realsockets import ROOT, TWISTD

    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    port = listening.getsockname()[1]
    fd = listening.fileno()
    log_path = tmp_path / "systemd.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _ACTIVATE,
                str(fd),
                TWISTD,
                "-n",
                "--pidfile=",
                "signaling",
                "--port",
                "systemd:domain=INET:index=0",
            ],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
        )
    listening.close()
    try:
        for _ in range(200):
            if "signaling listening on" in log_path.read_text():
                break
            await sleep(0.05)
        alice = await join(f"ws://127.0.0.1:{port}/signal", "activated")
        assert alice.joined["peers"] == []
        alice.sendClose()
        await alice.closed
    finally:
        process.terminate()
        process.wait(10)
