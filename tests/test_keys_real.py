"""
Token keys over a real C{twistd -n signaling --auth required}: a public key
pins its algorithm (EdDSA for Ed25519; never HS256 with the key as its
secret), and C{--jwt-jwks-url} fetches a key set from a local HTTP server,
again on an unknown C{kid}, at most once per 10 s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .realsockets import TwistdServer

TIMEOUT = 5


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_with(secret: bytes, claims: dict) -> str:
    """
    An HS256 token signed with C{secret}, made by hand: PyJWT refuses to
    sign with a PEM public key as an HMAC secret, which is the attack.
    """
    signing_input = (
        _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps(claims).encode())
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def claims(sub: str = "alice") -> dict:
    return {"sub": sub, "exp": int(time.time()) + 600}


def status_of(url: str) -> int:
    """
    101 if the WebSocket opens, else the HTTP status it was refused with.
    """
    try:
        websocket.create_connection(url, timeout=TIMEOUT).close()
    except websocket.WebSocketBadStatusException as refused:
        return refused.status_code
    return 101


def start(tmp_path, *args: str) -> TwistdServer:
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--auth",
        "required",
        *args,
        env={"JWT_SECRET": ""},
    )
    server.start(tmp_path / "twistd.log")
    server.base = server.urls[0].rsplit("/", 1)[0]
    return server


def test_an_ed25519_key_takes_eddsa_and_nothing_else(tmp_path):
    """
    With an Ed25519 C{--jwt-public-key}, an EdDSA token opens a WebSocket;
    an HS256 token signed with the key's PEM as its secret, and an RS256
    token, are refused with 401.
    """
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    server = start(tmp_path, "--jwt-public-key", str(tmp_path / "key.pem"))
    try:
        url = server.base + "/ws?token="
        assert status_of(url + jwt.encode(claims(), private, algorithm="EdDSA")) == 101
        assert status_of(url + hs256_with(pem, claims())) == 401
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert status_of(url + jwt.encode(claims(), other, algorithm="RS256")) == 401
    finally:
        server.stop()


class KeySet:
    """
    A JWKS served over loopback from a thread; counts its fetches.
    """

    def __init__(self) -> None:
        self.document = {"keys": []}
        self.fetches = 0
        key_set = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                key_set.fetches += 1
                body = json.dumps(key_set.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, **keys) -> None:
        entries = []
        for kid, private in keys.items():
            entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            entry.update(kid=kid, use="sig")
            entries.append(entry)
        self.document = {"keys": entries}

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def key_set():
    key_set = KeySet()
    yield key_set
    key_set.stop()


def test_jwks_keys_are_fetched_again_on_an_unknown_kid(tmp_path, key_set):
    """
    Tokens signed with a key of the set open a WebSocket; after the set
    rotates to a new key, a token with the new C{kid} still does (the set is
    fetched again); a flood of tokens with a C{kid} nobody publishes costs
    at most one more fetch per C{--jwt-jwks-min-interval}, and each is
    refused with 401.
    """
    one = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    two = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_set.publish(one=one)
    server = start(
        tmp_path, "--jwt-jwks-url", key_set.url, "--jwt-jwks-min-interval", "1"
    )
    try:
        url = server.base + "/ws?token="
        assert (
            status_of(
                url
                + jwt.encode(claims(), one, algorithm="RS256", headers={"kid": "one"})
            )
            == 101
        )
        key_set.publish(two=two)
        assert (
            status_of(
                url
                + jwt.encode(claims(), two, algorithm="RS256", headers={"kid": "two"})
            )
            == 101
        )
        fetched = key_set.fetches
        assert fetched >= 2
        unknown = jwt.encode(claims(), two, algorithm="RS256", headers={"kid": "three"})
        assert [status_of(url + unknown) for _ in range(5)] == [401] * 5
        assert key_set.fetches <= fetched + 1
        # Past --jwt-jwks-min-interval an unknown kid may fetch again.
        time.sleep(1.1)
        flooded = key_set.fetches
        assert status_of(url + unknown) == 401
        assert key_set.fetches == flooded + 1
        # The old key is gone from the set.
        assert (
            status_of(
                url
                + jwt.encode(claims(), one, algorithm="RS256", headers={"kid": "one"})
            )
            == 401
        )
    finally:
        server.stop()
    assert "fetched 1 keys from the JWKS" in server.log()
