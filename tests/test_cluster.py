"""
The cluster bus's pure parts: C{--redis} URLs, the envelope and member
encodings, and the package's place in the layering.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import orjson
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from signaling.cluster import (
    Envelope,
    InvalidEnvelope,
    InvalidRedisURL,
    RedisAddress,
    decode_envelope,
    encode_envelope,
    parse_redis_url,
)
from signaling.cluster.envelope import decode_member, encode_member
from signaling.hub import Member, Profile


class RedisURLTests(SynchronousTestCase):
    def test_tcp(self):
        """
        C{redis://} takes an optional password (with or without a user), a
        port (6379 by default) and a database number.
        """
        self.assertEqual(
            parse_redis_url("redis://localhost"),
            RedisAddress("redis", "localhost", 6379, 0),
        )
        address = parse_redis_url("redis://:s%40cret@10.0.0.5:7000/3")
        self.assertEqual(
            (address.host, address.port, address.db), ("10.0.0.5", 7000, 3)
        )
        self.assertEqual((address.username, address.password), (None, "s@cret"))
        self.assertEqual(parse_redis_url("redis://ann:pw@h/1").username, "ann")
        self.assertIsInstance(address.endpoint(MemoryReactorClock()), HostnameEndpoint)

    def test_password_not_in_logs(self):
        """
        Neither repr nor the logged description of an address shows its
        password.
        """
        address = parse_redis_url("rediss://:hunter2@redis.example:6380/2")
        self.assertTrue(address.tls)
        self.assertIsNone(address.ca_certs)
        self.assertNotIn("hunter2", repr(address))
        self.assertEqual(address.describe(), "rediss://redis.example:6380/2")

    def test_private_authority(self):
        """
        C{rediss://} may name the authority to trust with C{ssl_ca_certs}.
        """
        address = parse_redis_url(
            "rediss://redis.example/0?ssl_ca_certs=/etc/redis/ca.pem"
        )
        self.assertEqual(address.ca_certs, "/etc/redis/ca.pem")

    def test_unix(self):
        """
        C{unix://} names an absolute socket path, with the database and
        password as query parameters.
        """
        address = parse_redis_url("unix:///run/redis/redis.sock?db=2&password=pw")
        self.assertEqual(
            (address.host, address.db, address.password),
            ("/run/redis/redis.sock", 2, "pw"),
        )
        self.assertEqual(parse_redis_url("unix:/tmp/r.sock").host, "/tmp/r.sock")
        self.assertIsInstance(
            address.endpoint(MemoryReactorClock()), UNIXClientEndpoint
        )

    def test_invalid(self):
        """
        Other schemes, missing hosts, bad ports and databases are refused
        with a one-line reason.
        """
        for url in [
            "http://x",
            "redis://",
            "redis://h:port",
            "redis://h/db",
            "unix://relative",
        ]:
            with self.assertRaises(InvalidRedisURL) as raised:
                parse_redis_url(url)
            self.assertNotIn("\n", str(raised.exception))


class EnvelopeTests(SynchronousTestCase):
    member = Member(
        "ab12cd34",
        "envelope",
        {"name": "Ann", "tags": [1, 2]},
        1700000000.25,
        "ann",
        Profile(display_name="Ann", endpoint={"host": "10.0.0.1"}, details={"a": 1}),
    )

    def test_round_trip(self):
        """
        An envelope comes back from its bytes equal, sender, targets and
        dialect fields included; the first byte is the version.
        """
        envelope = Envelope(
            "offer", "lobby", self.member, ("p1", "p2"), {"sdp": "v=0"}, {"msgId": "7"}
        )
        data = encode_envelope(envelope)
        self.assertEqual(data[0], 1)
        self.assertEqual(decode_envelope(data), envelope)
        bare = Envelope("message", None, None, ())
        self.assertEqual(decode_envelope(encode_envelope(bare)), bare)

    def test_member_blob(self):
        self.assertEqual(decode_member(encode_member(self.member)), self.member)

    def test_invalid(self):
        """
        An unknown version, bytes that are not JSON and JSON of the wrong
        shape are refused with L{InvalidEnvelope}, never another error.
        """
        good = encode_envelope(Envelope("message", None, self.member, ("p",)))
        bad = [
            b"",
            b"\x02" + good[1:],
            b"\x01{not json",
            b"\x01{}",
            b"\x01" + orjson.dumps(["message", None, None, "p", None, None]),
            b"\x01" + orjson.dumps(["message", None, ["x"], [], None, None]),
            b"\x01" + orjson.dumps([1, None, None, [], None, None]),
            b"\x01" + orjson.dumps(["message", None, None, [], None, []]),
        ]
        for data in bad:
            with self.assertRaises(InvalidEnvelope):
                decode_envelope(data)


class LayeringTests(SynchronousTestCase):
    def test_no_transport_or_dialect(self):
        """
        The bus imports no transport, dialect, web app or twistd plugin.
        """
        code = (
            "import sys, signaling.cluster; "
            "print(sorted(m for m in sys.modules if m.startswith('signaling.')))"
        )
        modules = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        forbidden_modules = (
            "signaling.web",
            "signaling.tap",
            "signaling.transports",
            "signaling.dialects",
            "signaling.directory",
        )
        loaded = ast.literal_eval(modules)
        self.assertIn("signaling.cluster.bus", loaded)
        for forbidden in forbidden_modules:
            self.assertEqual(
                [
                    name
                    for name in loaded
                    if name == forbidden or name.startswith(forbidden + ".")
                ],
                [],
            )
