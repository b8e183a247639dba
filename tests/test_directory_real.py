"""
The directory dialect over real sockets: the seed document's whole flow
against a C{twistd -n signaling} subprocess.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from signaling.keyproof import challenge_text

from .realsockets import TwistdServer, open_websocket

OFFER = {"type": "offer", "sdp": "v=0 offer"}
ANSWER = {"type": "answer", "sdp": "v=0 answer"}


@pytest.fixture
def directory_url(tmp_path):
    server = TwistdServer("--port", "tcp:0:interface=127.0.0.1")
    [url] = server.start(tmp_path / "twistd.log")
    yield url.rsplit("/", 1)[0] + "/directory"
    server.stop()


async def register(url, user_id, public_key):
    client = await open_websocket(url)
    client.send_json({"type": "register", "userId": user_id, "publicKey": public_key})
    assert await client.next() == {"type": "registered", "success": True, "userId": user_id}
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

    bob.send_json({"type": "discover", "userId": "alice@example.org"})
    assert await bob.next() == {
        "type": "discover-response",
        "userId": "alice@example.org",
        "online": True,
        "publicKey": "alice-public-key",
    }

    bob.send_json({"type": "offer", "from": "mallory", "to": "alice@example.org", "offer": OFFER})
    assert await alice.next() == {"type": "offer", "from": "bob@example.org", "to": "alice@example.org", "offer": OFFER}
    alice.send_json({"type": "answer", "from": "alice@example.org", "to": "bob@example.org", "answer": ANSWER})
    assert await bob.next() == {"type": "answer", "from": "alice@example.org", "to": "bob@example.org", "answer": ANSWER}
    candidate = {"candidate": "candidate:1 1 UDP 2113667326 192.0.2.1 54400 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    alice.send_json({"type": "ice-candidate", "to": "bob@example.org", "candidate": candidate})
    assert await bob.next() == {"type": "ice-candidate", "from": "alice@example.org", "to": "bob@example.org", "candidate": candidate}
    bob.send_json({"type": "ice-candidate", "to": "alice@example.org", "candidate": candidate})
    assert (await alice.next())["from"] == "bob@example.org"

    await close(alice)
    assert await bob.next() == {"type": "presence", "userId": "alice@example.org", "online": False}
    bob.send_json({"type": "discover", "userId": "alice@example.org"})
    assert (await bob.next())["online"] is False
    bob.send_json({"type": "offer", "to": "alice@example.org", "offer": OFFER})
    assert await bob.next() == {
        "type": "error",
        "message": "User alice@example.org is not online",
        "code": "user-not-online",
    }

    impostor = await open_websocket(directory_url)
    impostor.send_json({"type": "register", "userId": "alice@example.org", "publicKey": "another-key"})
    assert (await impostor.next())["code"] == "key-mismatch"

    alice = await register(directory_url, "alice@example.org", "alice-public-key")
    assert await bob.next() == {"type": "presence", "userId": "alice@example.org", "online": True}
    bob.send_json({"type": "offer", "to": "alice@example.org", "offer": OFFER})
    assert (await alice.next())["offer"] == OFFER
    await close(alice, bob, impostor)


@pytest_twisted.ensureDeferred
async def test_takeover_and_bad_input(directory_url):
    """
    A second connection with the same key takes a userId over and the first
    one's close leaves it registered; bad frames get errors or a close code
    without disturbing anyone else.
    """
    old = await register(directory_url, "alice", "alice-key")
    bob = await register(directory_url, "bob", "bob-key")
    new = await register(directory_url, "alice", "alice-key")
    assert (await old.next())["code"] == "replaced"
    await close(old)

    bob.send_json({"type": "offer", "to": "alice", "offer": OFFER})
    assert await new.next() == {"type": "offer", "from": "bob", "to": "alice", "offer": OFFER}

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
    assert await bob.next() == {"type": "answer", "from": "alice", "to": "bob", "answer": ANSWER}
    await close(new, bob)


@pytest_twisted.ensureDeferred
async def test_registration_with_proof(directory_url):
    """
    A client proves it holds its Ed25519 key by signing the server's nonce.
    """
    private = ed25519.Ed25519PrivateKey.generate()
    public = base64.b64encode(
        private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    alice = await open_websocket(directory_url)
    alice.send_json({"type": "register", "userId": "alice", "publicKey": public, "proof": True})
    challenge = await alice.next()
    assert challenge["type"] == "challenge"
    signature = base64.b64encode(private.sign(challenge_text("alice", challenge["nonce"]))).decode()
    alice.send_json({"type": "register-proof", "userId": "alice", "signature": signature})
    assert await alice.next() == {"type": "registered", "success": True, "userId": "alice", "verified": True}
    await close(alice)
