"""
The directory dialect over real sockets: the seed document's whole flow,
who may take a userId, presence and the root route, against a
C{twistd -n signaling} subprocess.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import reactor

from signaling.keyproof import challenge_text

from .realsockets import TwistdServer, open_websocket, sleep

OFFER = {"type": "offer", "sdp": "v=0 offer"}
ANSWER = {"type": "answer", "sdp": "v=0 answer"}
#: --directory-probe-timeout of the test server: short, to keep tests fast.
PROBE = 0.3


@pytest.fixture
def server(tmp_path):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--directory-probe-timeout",
        str(PROBE),
        "--directory-max-held",
        "2",
        "--root-dialect",
        "directory",
    )
    [url] = server.start(tmp_path / "twistd.log")
    server.base = url.rsplit("/", 1)[0]
    yield server
    server.stop()


@pytest.fixture
def directory_url(server):
    return server.base + "/directory"


async def register(url, user_id, public_key):
    client = await open_websocket(url)
    client.send_json({"type": "register", "userId": user_id, "publicKey": public_key})
    assert await client.next() == {
        "type": "registered",
        "success": True,
        "userId": user_id,
    }
    return client


async def close(*clients):
    for client in clients:
        client.sendClose()
        await client.closed


@pytest_twisted.ensureDeferred
async def test_register_discover_relay_cleanup(directory_url):
    """
    Two users register, discover each other, exchange an offer, an answer
    and candidates with the server setting from; when one disconnects the
    other is told, discovers it offline, and cannot reach it. A reconnect
    with the same key brings it back.
    """
    alice = await register(directory_url, "alice@example.org", "alice-public-key")
    bob = await register(directory_url, "bob@example.org", "bob-public-key")

    bob.send_json({"type": "discover", "userId": "alice@example.org", "watch": True})
    assert await bob.next() == {
        "type": "discover-response",
        "userId": "alice@example.org",
        "online": True,
        "publicKey": "alice-public-key",
    }

    bob.send_json(
        {"type": "offer", "from": "mallory", "to": "alice@example.org", "offer": OFFER}
    )
    assert await alice.next() == {
        "type": "offer",
        "from": "bob@example.org",
        "to": "alice@example.org",
        "offer": OFFER,
    }
    alice.send_json(
        {
            "type": "answer",
            "from": "alice@example.org",
            "to": "bob@example.org",
            "answer": ANSWER,
        }
    )
    assert await bob.next() == {
        "type": "answer",
        "from": "alice@example.org",
        "to": "bob@example.org",
        "answer": ANSWER,
    }
    candidate = {
        "candidate": "candidate:1 1 UDP 2113667326 192.0.2.1 54400 typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    alice.send_json(
        {"type": "ice-candidate", "to": "bob@example.org", "candidate": candidate}
    )
    assert await bob.next() == {
        "type": "ice-candidate",
        "from": "alice@example.org",
        "to": "bob@example.org",
        "candidate": candidate,
    }
    bob.send_json(
        {"type": "ice-candidate", "to": "alice@example.org", "candidate": candidate}
    )
    assert (await alice.next())["from"] == "bob@example.org"

    await close(alice)
    assert await bob.next() == {
        "type": "presence",
        "userId": "alice@example.org",
        "online": False,
    }
    bob.send_json({"type": "discover", "userId": "alice@example.org"})
    assert (await bob.next())["online"] is False
    bob.send_json({"type": "offer", "to": "alice@example.org", "offer": OFFER})
    assert await bob.next() == {
        "type": "error",
        "message": "User alice@example.org is not online",
        "code": "user-not-online",
    }

    # Without proof an offline userId is free at once, as in the original:
    # a user who made a new key gets it back on reconnecting.
    alice = await register(directory_url, "alice@example.org", "alice-new-key")
    assert await bob.next() == {
        "type": "presence",
        "userId": "alice@example.org",
        "online": True,
    }
    bob.send_json({"type": "offer", "to": "alice@example.org", "offer": OFFER})
    assert (await alice.next())["offer"] == OFFER
    await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_takeover_and_bad_input(directory_url):
    """
    A second connection with the same key takes a userId over from a holder
    that no longer answers pings, and the first one's close leaves it
    registered; bad frames get errors or a close code without disturbing
    anyone else.
    """
    old = await register(directory_url, "alice", "alice-key")
    bob = await register(directory_url, "bob", "bob-key")
    old.answer_pings = False
    new = await register(directory_url, "alice", "alice-key")
    assert (await old.next())["code"] == "replaced"
    await close(old)

    bob.send_json({"type": "offer", "to": "alice", "offer": OFFER})
    assert await new.next() == {
        "type": "offer",
        "from": "bob",
        "to": "alice",
        "offer": OFFER,
    }

    mallory = await open_websocket(directory_url)
    mallory.sendMessage(b"{nope")
    assert (await mallory.next())["code"] == "invalid-json"
    mallory.sendMessage(b"[" * 10000 + b"]" * 10000)
    assert (await mallory.next())["code"] == "invalid-json"
    mallory.send_json({"type": "offer", "to": "bob", "offer": OFFER})
    assert (await mallory.next())["code"] == "not-registered"
    mallory.sendMessage(b"\x00", isBinary=True)
    assert await mallory.closed == 1003

    huge = await open_websocket(directory_url)
    huge.sendMessage(b'{"type":"discover","userId":"' + b"u" * 70000 + b'"}')
    assert (await huge.next())["code"] == "message-too-large"
    assert await huge.closed == 1009

    new.send_json({"type": "answer", "to": "bob", "answer": ANSWER})
    assert await bob.next() == {
        "type": "answer",
        "from": "alice",
        "to": "bob",
        "answer": ANSWER,
    }
    await close(new, bob)


@pytest_twisted.ensureDeferred
async def test_registration_with_proof(directory_url):
    """
    A client proves it holds its Ed25519 key by signing the server's nonce.
    """
    private = ed25519.Ed25519PrivateKey.generate()
    public = base64.b64encode(
        private.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    alice = await open_websocket(directory_url)
    alice.send_json(
        {"type": "register", "userId": "alice", "publicKey": public, "proof": True}
    )
    challenge = await alice.next()
    assert challenge["type"] == "challenge"
    signature = base64.b64encode(
        private.sign(challenge_text("alice", challenge["nonce"]))
    ).decode()
    alice.send_json(
        {"type": "register-proof", "userId": "alice", "signature": signature}
    )
    assert await alice.next() == {
        "type": "registered",
        "success": True,
        "userId": "alice",
        "verified": True,
    }
    await close(alice)


@pytest_twisted.ensureDeferred
async def test_user_id_of_a_live_holder_cannot_be_taken(directory_url):
    """
    Hardening item 3: Mallory discovers bob's key and registers bob with it;
    bob answers the server's ping, so Mallory gets user-id-in-use, bob is not
    replaced and Carol's offers still reach bob. When bob's socket goes
    half-dead (no pongs), a reconnecting bob gets the id within the probe
    timeout, well inside the original client's 5 s register timeout.
    """
    bob = await register(directory_url, "bob", "bob-key")
    carol = await register(directory_url, "carol", "carol-key")
    mallory = await open_websocket(directory_url)
    mallory.send_json({"type": "discover", "userId": "bob"})
    assert (await mallory.next())["publicKey"] == "bob-key"
    mallory.send_json({"type": "register", "userId": "bob", "publicKey": "bob-key"})
    assert await mallory.next() == {
        "type": "error",
        "code": "user-id-in-use",
        "message": "userId bob is in use by another connection",
    }
    carol.send_json({"type": "offer", "to": "bob", "offer": OFFER})
    assert await bob.next() == {
        "type": "offer",
        "from": "carol",
        "to": "bob",
        "offer": OFFER,
    }
    mallory.send_json({"type": "offer", "to": "carol", "offer": OFFER})
    assert (await mallory.next())["code"] == "not-registered"

    bob.answer_pings = False
    started = reactor.seconds()
    again = await register(directory_url, "bob", "bob-new-key")
    assert (
        PROBE <= reactor.seconds() - started < 5
    )  # the original client gives register() 5 s
    assert (await bob.next())["code"] == "replaced"
    carol.send_json({"type": "offer", "to": "bob", "offer": OFFER})
    assert await again.next() == {
        "type": "offer",
        "from": "carol",
        "to": "bob",
        "offer": OFFER,
    }
    await close(bob, carol, mallory, again)


def ed25519_identity():
    private = ed25519.Ed25519PrivateKey.generate()
    public = base64.b64encode(
        private.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    return private, public


async def register_with_proof(url, user_id, private, public):
    client = await open_websocket(url)
    client.send_json(
        {"type": "register", "userId": user_id, "publicKey": public, "proof": True}
    )
    challenge = await client.next()
    signature = base64.b64encode(
        private.sign(challenge_text(user_id, challenge["nonce"]))
    ).decode()
    client.send_json(
        {"type": "register-proof", "userId": user_id, "signature": signature}
    )
    assert await client.next() == {
        "type": "registered",
        "success": True,
        "userId": user_id,
        "verified": True,
    }
    return client


@pytest_twisted.ensureDeferred
async def test_proven_holds_survive_a_flood(server, directory_url):
    """
    With proof of key a takeover is allowed at once. A proven userId stays
    held after its connection closed, and a flood of throwaway proven
    registrations past --directory-max-held (2 here) does not end that
    hold: the flood's own ids are freed at once instead, which is logged.
    """
    private, public = ed25519_identity()
    first = await register_with_proof(directory_url, "alice", private, public)
    second = await register_with_proof(directory_url, "alice", private, public)
    assert (await first.next())["code"] == "replaced"
    await close(first, second)

    for number in range(3):
        throwaway = await register_with_proof(
            directory_url, f"flood-{number}", *ed25519_identity()
        )
        await close(throwaway)
    mallory = await open_websocket(directory_url)
    mallory.send_json({"type": "register", "userId": "alice", "publicKey": public})
    assert (await mallory.next())["code"] == "proof-required"
    mallory.send_json({"type": "register", "userId": "flood-2", "publicKey": "k"})
    assert (await mallory.next())["type"] == "registered"
    assert "further ones are freed at once" in server.log()
    await close(mallory)


@pytest_twisted.ensureDeferred
async def test_presence_only_for_watchers(directory_url):
    """
    Only a connection that asked (discover with "watch": true) is told of
    presence changes; a plain discover, as the original's client sends,
    brings no message type that client does not know.
    """
    alice = await register(directory_url, "alice", "alice-key")
    plain = await open_websocket(directory_url)
    watcher = await open_websocket(directory_url)
    plain.send_json({"type": "discover", "userId": "alice"})
    assert (await plain.next())["online"] is True
    watcher.send_json({"type": "discover", "userId": "alice", "watch": True})
    assert (await watcher.next())["online"] is True
    await close(alice)
    assert await watcher.next() == {
        "type": "presence",
        "userId": "alice",
        "online": False,
    }
    plain.send_json({"type": "discover", "userId": "alice"})
    assert await plain.next() == {
        "type": "discover-response",
        "userId": "alice",
        "online": False,
    }
    watcher.send_json({"type": "discover", "userId": "alice", "watch": False})
    await watcher.next()
    alice = await register(directory_url, "alice", "alice-key")
    watcher.send_json({"type": "discover", "userId": "nobody"})
    assert (await watcher.next())["type"] == "discover-response"
    await close(alice, plain, watcher)


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest_twisted.ensureDeferred
async def test_root_url_speaks_the_root_dialect(server):
    """
    With --root-dialect directory, a WebSocket at ws://HOST:PORT/ (the
    original client's URL, without a path) speaks the directory dialect and
    shares its userIds with /directory; a plain GET / is the demo page.
    """
    root = await register(server.base + "/", "alice", "alice-key")
    other = await register(server.base + "/directory", "bob", "bob-key")
    other.send_json({"type": "offer", "to": "alice", "offer": OFFER})
    assert await root.next() == {
        "type": "offer",
        "from": "bob",
        "to": "alice",
        "offer": OFFER,
    }
    status, body = http_get(server.base.replace("ws://", "http://") + "/")
    assert status == 200 and b"<!doctype html>" in body.lower()
    await close(root, other)


@pytest_twisted.ensureDeferred
async def test_root_url_defaults_to_native_and_can_be_off(tmp_path):
    """
    By default a WebSocket at / speaks the native protocol; with
    --root-dialect none it is refused like any unknown URL.
    """
    native = TwistdServer("--port", "tcp:0:interface=127.0.0.1")
    off = TwistdServer("--port", "tcp:0:interface=127.0.0.1", "--root-dialect", "none")
    try:
        [native_url] = native.start(tmp_path / "native.log")
        [off_url] = off.start(tmp_path / "off.log")
        client = await open_websocket(native_url.rsplit("/", 1)[0] + "/")
        assert (await client.next())["type"] == "welcome"
        await close(client)
        with pytest.raises(ConnectionError):
            await open_websocket(off_url.rsplit("/", 1)[0] + "/")
    finally:
        native.stop()
        off.stop()


@pytest_twisted.ensureDeferred
async def test_hold_of_a_proven_user_id_ends(tmp_path):
    """
    --directory-hold sets how long a proven userId stays bound to its key
    after its connection closed; then anyone may register it.
    """
    server = TwistdServer(
        "--port", "tcp:0:interface=127.0.0.1", "--directory-hold", "0.5"
    )
    try:
        [url] = server.start(tmp_path / "twistd.log")
        directory_url = url.rsplit("/", 1)[0] + "/directory"
        alice = await register_with_proof(directory_url, "alice", *ed25519_identity())
        await close(alice)
        mallory = await open_websocket(directory_url)
        mallory.send_json({"type": "register", "userId": "alice", "publicKey": "k"})
        assert (await mallory.next())["code"] == "proof-required"
        await sleep(0.6)
        mallory.send_json({"type": "register", "userId": "alice", "publicKey": "k"})
        assert (await mallory.next())["type"] == "registered"
        await close(mallory)
    finally:
        server.stop()
