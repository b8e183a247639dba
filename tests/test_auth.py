"""
Tokens, key sets, room grants and TURN credentials, in memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from signaling.auth import (
    AuthPolicy,
    Identity,
    InvalidToken,
    MissingToken,
    TokenVerifier,
    UnknownKey,
    presented_token,
)
from signaling.hub import Hub
from signaling.jwks import JWKSKeys
from signaling.turn import IceServers

from .support import RecordingConnection

SECRET = "an in-memory secret, long enough for HS256"
NOW = 1_800_000_000


def hs256(**claims) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


class VerifierTests(SynchronousTestCase):
    def test_audience_issuer_and_issued_at(self) -> None:
        """
        With an audience and an issuer configured, a token must name both;
        one issued more than the leeway in the future is refused.
        """
        verifier = TokenVerifier(
            key=SECRET.encode(),
            algorithms=("HS256",),
            audience="sig",
            issuer="https://id",
        )
        good = {"sub": "a", "aud": ["other", "sig"], "iss": "https://id"}
        self.assertEqual(verifier.verify(hs256(**good), NOW)["sub"], "a")
        for bad in (
            {**good, "aud": "other"},
            {"sub": "a", "iss": "https://id"},
            {**good, "iss": "https://elsewhere"},
            {**good, "iat": NOW + 31},
            {**good, "iat": "yesterday"},
        ):
            self.assertRaises(InvalidToken, verifier.verify, hs256(**bad), NOW)
        self.assertEqual(verifier.verify(hs256(**good, iat=NOW + 29), NOW)["sub"], "a")

    def test_each_key_type_pins_its_algorithm(self) -> None:
        """
        RSA is RS256, P-384 ES384, Ed25519 EdDSA.
        """
        keys = {
            "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES384": ec.generate_private_key(ec.SECP384R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        }
        for algorithm, private in keys.items():
            verifier = TokenVerifier.for_key(private.public_key())
            self.assertEqual(verifier.algorithms, (algorithm,))
            token = jwt.encode({"sub": "a"}, private, algorithm=algorithm)
            self.assertEqual(verifier.verify(token, NOW)["sub"], "a")


class PolicyTests(SynchronousTestCase):
    def test_modes(self) -> None:
        """
        C{required} needs a token, C{optional} does not; both check one.
        """
        verifier = TokenVerifier.from_secret(SECRET)
        required = AuthPolicy("required", verifier)
        optional = AuthPolicy("optional", verifier)
        self.assertRaises(MissingToken, required.identify, None, NOW)
        self.assertIsNone(optional.identify(None, NOW))
        self.assertRaises(InvalidToken, optional.identify, "nonsense", NOW)
        self.assertFalse(AuthPolicy("off", verifier).checks_tokens)
        identity = required.identify(
            hs256(sub="bob", exp=NOW + 60, rooms="team-*"), NOW
        )
        self.assertEqual(
            identity, Identity("bob", identity.claims, NOW + 90, ("team-*",))
        )

    def test_a_token_naming_no_user_or_bad_rooms_is_invalid(self) -> None:
        policy = AuthPolicy("required", TokenVerifier.from_secret(SECRET))
        self.assertRaises(InvalidToken, policy.identify, hs256(exp=NOW + 60), NOW)
        self.assertRaises(InvalidToken, policy.identify, hs256(sub="a", rooms=[1]), NOW)

    def test_where_tokens_come_from(self) -> None:
        self.assertEqual(presented_token({"token": "t"}, "Bearer u"), "t")
        self.assertEqual(presented_token({}, "Bearer u"), "u")
        self.assertIsNone(presented_token({}, "Basic u"))


class GrantTests(SynchronousTestCase):
    def test_exact_names_and_prefixes(self) -> None:
        hub = Hub(clock=Clock())
        peer = hub.connect(RecordingConnection(), room_grants=("lobby", "team-*"))
        self.assertTrue(peer.may_enter("lobby"))
        self.assertTrue(peer.may_enter("team-a"))
        self.assertFalse(peer.may_enter("lobby-2"))
        self.assertFalse(peer.may_enter("teams"))
        self.assertTrue(hub.connect(RecordingConnection()).may_enter("anything"))


def _jwk(private, kid: str) -> dict:
    entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return {**entry, "kid": kid}


class KeySetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.requests: list[Deferred] = []
        self.keys = JWKSKeys("http://keys.test/jwks", self.clock, self._fetch)
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _fetch(self, url: str) -> Deferred:
        self.requests.append(Deferred())
        return self.requests[-1]

    def _answer(self, *keys: dict) -> None:
        self.requests[-1].callback(json.dumps({"keys": list(keys)}).encode())

    def test_unknown_kids_fetch_at_most_every_interval(self) -> None:
        """
        An unknown kid starts a fetch; more within 10 s share it or start
        none; a symmetric key in the set is never used.
        """
        token = jwt.encode(
            {"sub": "a"}, self.private, algorithm="RS256", headers={"kid": "k1"}
        )
        with self.assertRaises(UnknownKey) as raised:
            self.keys.verify(token, NOW)
        self.assertEqual(len(self.requests), 1)
        self.assertRaises(UnknownKey, self.keys.verify, token, NOW)
        self.assertEqual(len(self.requests), 1)
        self._answer(
            _jwk(self.private, "k1"), {"kty": "oct", "k": "c2VjcmV0", "kid": "k2"}
        )
        self.assertTrue(raised.exception.refreshed.called)
        self.assertEqual(self.keys.verify(token, NOW)["sub"], "a")
        forged = jwt.encode(
            {"sub": "a"}, SECRET, algorithm="HS256", headers={"kid": "k2"}
        )
        self.assertRaises(UnknownKey, self.keys.verify, forged, NOW)
        self.assertEqual(len(self.requests), 1)
        self.clock.advance(10)
        self.assertRaises(UnknownKey, self.keys.verify, forged, NOW)
        self.assertEqual(len(self.requests), 2)

    def test_a_failed_fetch_keeps_the_keys(self) -> None:
        self.keys.refresh(force=True)
        self._answer(_jwk(self.private, "k1"))
        self.keys.refresh(force=True)
        self.requests[-1].errback(ConnectionRefusedError())
        self.assertEqual(list(self.keys.keys), ["k1"])


class IceServerTests(SynchronousTestCase):
    def test_credentials_follow_coturns_rest_scheme(self) -> None:
        """
        The username is expiry:user, the credential base64(HMAC-SHA1).
        """
        servers = IceServers(
            b"s3cret", ("turn:t.test:3478",), ("stun:t.test",), ttl=600
        )
        stun, turn = servers.for_user("al:ice", NOW)
        self.assertEqual(stun, {"urls": ["stun:t.test"]})
        self.assertEqual(turn["username"], f"{NOW + 600}:al_ice")
        digest = hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest()
        self.assertEqual(turn["credential"], base64.b64encode(digest).decode())
        self.assertEqual(servers.refresh_in(), 540)
        self.assertFalse(IceServers().configured)


class OptionTests(SynchronousTestCase):
    """
    The token and TURN options refuse what cannot work, in one line.
    """

    def parse(self, *argv: str, environ: dict | None = None):
        from signaling import tap

        options = tap.Options(environ=environ or {})
        options.parseOptions(list(argv))
        return options

    def refused(self, *argv: str) -> str:
        with self.assertRaises(SystemExit) as raised:
            self.parse(*argv)
        return str(raised.exception)

    def test_auth_needs_a_key(self) -> None:
        self.assertIn("--auth required needs", self.refused("--auth", "required"))
        self.assertIn(
            "--auth must be one of",
            self.refused("--auth", "always", "--jwt-secret", SECRET),
        )
        self.assertIn(
            "not both",
            self.refused("--jwt-jwks-url", "http://k.test/", "--jwt-secret", SECRET),
        )
        options = self.parse(
            "--auth", "optional", "--jwt-secret", SECRET, "--jwt-audience", "sig"
        )
        self.assertEqual(options["auth-policy"].mode, "optional")
        self.assertEqual(options["auth-policy"].verifier.audience, "sig")
        self.assertEqual(self.parse()["auth-policy"], AuthPolicy())

    def test_turn_options(self) -> None:
        self.assertIn("needs --turn-secret", self.refused("--turn-uri", "turn:t.test"))
        self.assertIn(
            "needs at least one --turn-uri", self.refused("--turn-secret", "s")
        )
        self.assertIn(
            "must start with turn:", self.refused("--turn-uri", "http://t.test")
        )
        options = self.parse(
            "--turn-url",
            "turn:t.test",
            "--turn-uri",
            "turns:t.test:5349?transport=tcp",
            "--stun-uri",
            "stun:t.test",
            environ={"TURN_SECRET": "s"},
        )
        servers = options["ice-servers"]
        self.assertEqual(
            servers.turn_uris, ("turn:t.test", "turns:t.test:5349?transport=tcp")
        )
        self.assertEqual((servers.secret, servers.ttl), (b"s", 86400.0))
