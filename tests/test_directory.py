"""
The directory dialect at /directory, over in-memory WebSockets.
"""

import base64

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from signaling.dialects.directory import DirectorySession
from signaling.directory import HOLD_SECONDS, MAX_WATCHES_PER_PEER, Directory, Replaced
from signaling.hub import Hub, HubLimits
from signaling.ids import IdSource
from signaling.keyproof import challenge_text
from signaling.transports.websocket import WebSocketSettings

from .support import Harness, RecordingConnection, counting_random_bytes, message_types

SDP_OFFER = {"type": "offer", "sdp": "v=0 offer"}
SDP_ANSWER = {"type": "answer", "sdp": "v=0 answer"}
CANDIDATE = {
    "candidate": "candidate:1 1 UDP 2113667326 192.0.2.1 54400 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class DirectoryTestCase(SynchronousTestCase):
    limits = HubLimits()
    settings = WebSocketSettings(ping_interval=0)

    def setUp(self):
        self.harness = Harness(self.limits, self.settings)
        self.addCleanup(self.harness.restore)
        self.directory = self.harness.site.directory

    def connect(self):
        client = self.harness.connect("/directory")
        self.assertTrue(client.opened)
        return client

    def send(self, client, message):
        client.send_json(message)
        self.harness.flush()

    def registered(self, user_id, public_key=None):
        client = self.connect()
        self.send(
            client,
            {
                "type": "register",
                "userId": user_id,
                "publicKey": public_key or f"{user_id}-key",
            },
        )
        self.assertEqual(
            client.take(), [{"type": "registered", "success": True, "userId": user_id}]
        )
        return client

    def discover(self, client, user_id, **fields):
        self.send(client, {"type": "discover", "userId": user_id, **fields})
        [reply] = client.take()
        self.assertEqual(reply["type"], "discover-response")
        return reply

    def assertError(self, client, code):
        messages = client.take()
        self.assertEqual(len(messages), 1, messages)
        [error] = messages
        self.assertEqual(set(error), {"type", "message", "code"})
        self.assertEqual(error["type"], "error")
        self.assertEqual(error["code"], code)
        self.assertIsInstance(error["message"], str)
        return error

    def assertRefused(self, client, message, code):
        """
        Sending C{message} gets C{client} the error C{code}.
        """
        self.send(client, message)
        return self.assertError(client, code)

    def assertExchangeWorks(self, first, first_id, second, second_id):
        """
        An offer and its answer still pass between two registered users.
        """
        self.send(first, {"type": "offer", "to": second_id, "offer": SDP_OFFER})
        self.assertEqual(
            second.take(),
            [{"type": "offer", "from": first_id, "to": second_id, "offer": SDP_OFFER}],
        )
        self.send(second, {"type": "answer", "to": first_id, "answer": SDP_ANSWER})
        self.assertEqual(
            first.take(),
            [
                {
                    "type": "answer",
                    "from": second_id,
                    "to": first_id,
                    "answer": SDP_ANSWER,
                }
            ],
        )


class FlowTests(DirectoryTestCase):
    """
    The seed's "How It Works": register, discover, relay, cleanup.
    """

    def test_connect_sends_nothing(self):
        client = self.connect()
        self.assertEqual(client.take(), [])
        self.assertEqual(self.harness.hub.stats().peers_total, 1)

    def test_register(self):
        client = self.connect()
        self.send(
            client,
            {
                "type": "register",
                "userId": "alice@example.org",
                "publicKey": "alice-key",
            },
        )
        self.assertEqual(
            client.take(),
            [{"type": "registered", "success": True, "userId": "alice@example.org"}],
        )

    def test_discover_online_and_unknown(self):
        """
        An online user is reported with its key; an unknown one as offline,
        without a key. Discovering needs no registration.
        """
        self.registered("alice", "alice-public-key")
        bob = self.connect()
        self.assertEqual(
            self.discover(bob, "alice"),
            {
                "type": "discover-response",
                "userId": "alice",
                "online": True,
                "publicKey": "alice-public-key",
            },
        )
        self.assertEqual(
            self.discover(bob, "ghost"),
            {"type": "discover-response", "userId": "ghost", "online": False},
        )

    def test_offer_answer_candidate(self):
        """
        Offers, answers and candidates reach the user named in C{to}, with
        C{from} set by the server to the sender's userId, whatever the
        sender claimed.
        """
        alice = self.registered("alice")
        bob = self.registered("bob")
        self.send(
            alice, {"type": "offer", "from": "mallory", "to": "bob", "offer": SDP_OFFER}
        )
        self.assertEqual(
            bob.take(),
            [{"type": "offer", "from": "alice", "to": "bob", "offer": SDP_OFFER}],
        )
        self.send(
            bob, {"type": "answer", "from": "bob", "to": "alice", "answer": SDP_ANSWER}
        )
        self.send(bob, {"type": "ice-candidate", "to": "alice", "candidate": CANDIDATE})
        self.assertEqual(
            alice.take(),
            [
                {"type": "answer", "from": "bob", "to": "alice", "answer": SDP_ANSWER},
                {
                    "type": "ice-candidate",
                    "from": "bob",
                    "to": "alice",
                    "candidate": CANDIDATE,
                },
            ],
        )
        self.send(
            alice,
            {
                "type": "ice-candidate",
                "to": "bob",
                "candidate": "candidate:2 1 UDP 1 192.0.2.2 9 typ host",
            },
        )
        [candidate] = bob.take()
        self.assertEqual(
            candidate["candidate"], "candidate:2 1 UDP 1 192.0.2.2 9 typ host"
        )
        self.assertEqual(alice.take(), [])

    def test_relay_to_offline_user(self):
        alice = self.registered("alice")
        error = self.assertRefused(
            alice,
            {"type": "offer", "to": "charlie", "offer": SDP_OFFER},
            "user-not-online",
        )
        self.assertEqual(error["message"], "User charlie is not online")

    def test_sending_before_registering(self):
        """
        A connection that has not registered cannot relay: it has no userId
        to be the sender.
        """
        self.registered("alice")
        stranger = self.connect()
        for message in (
            {"type": "offer", "from": "bob", "to": "alice", "offer": SDP_OFFER},
            {"type": "answer", "to": "alice", "answer": SDP_ANSWER},
            {"type": "ice-candidate", "to": "alice", "candidate": CANDIDATE},
        ):
            self.assertRefused(stranger, message, "not-registered")

    def test_cleanup_on_disconnect(self):
        """
        A user whose connection closes is offline: discover says so and
        relays to it are refused.
        """
        alice = self.registered("alice")
        bob = self.registered("bob")
        alice.sendClose()
        self.harness.flush()
        self.assertEqual(self.discover(bob, "alice")["online"], False)
        self.assertRefused(
            bob, {"type": "offer", "to": "alice", "offer": SDP_OFFER}, "user-not-online"
        )
        self.assertEqual(self.directory.online_count(), 1)
        self.assertEqual(self.harness.hub.stats().peers_total, 1)

    def test_unregister(self):
        """
        unregister gives the userId up at once: it goes offline, and another
        key may take it.
        """
        alice = self.registered("alice")
        self.send(alice, {"type": "unregister"})
        self.assertEqual(alice.take(), [{"type": "unregistered", "userId": "alice"}])
        self.assertRefused(alice, {"type": "unregister"}, "not-registered")
        self.registered("alice", "another-key")

    def test_hub_peer_without_room(self):
        """
        Directory users are hub peers in no room.
        """
        self.registered("alice")
        stats = self.harness.hub.stats()
        self.assertEqual(
            (stats.peers_total, stats.peers_without_room, stats.rooms_total), (1, 1, 0)
        )


class OwnershipTests(DirectoryTestCase):
    def test_live_holder_keeps_its_user_id(self):
        """
        A userId registered without proof cannot be taken from a holder that
        answers the server's ping, with its key or another: the newcomer
        gets user-id-in-use and the holder is undisturbed.
        """
        alice = self.registered("alice", "key-1")
        bob = self.registered("bob")
        impostor = self.connect()
        for key in ("key-2", "key-1"):
            self.assertRefused(
                impostor,
                {"type": "register", "userId": "alice", "publicKey": key},
                "user-id-in-use",
            )
        self.assertEqual(alice.take(), [])
        self.assertEqual(self.discover(bob, "alice")["publicKey"], "key-1")
        self.assertExchangeWorks(alice, "alice", bob, "bob")
        self.assertRefused(
            impostor,
            {"type": "offer", "to": "bob", "offer": SDP_OFFER},
            "not-registered",
        )

    def test_silent_holder_is_replaced(self):
        """
        A holder that does not answer the ping within probe_seconds loses its
        userId to the newcomer, whatever its key; it is told it was
        replaced, and its close later changes nothing.
        """
        old = self.registered("alice")
        bob = self.registered("bob")
        old.answer_pings = False
        new = self.connect()
        self.send(new, {"type": "register", "userId": "alice", "publicKey": "new-key"})
        self.assertEqual(new.take(), [])
        self.harness.advance(self.directory.probe_seconds + 0.1)
        self.assertEqual(
            new.take(), [{"type": "registered", "success": True, "userId": "alice"}]
        )
        error = self.assertError(old, "replaced")
        self.assertIn("alice", error["message"])
        self.assertExchangeWorks(new, "alice", bob, "bob")
        self.assertRefused(
            old, {"type": "offer", "to": "bob", "offer": SDP_OFFER}, "not-registered"
        )
        old.sendClose()
        self.harness.flush()
        self.assertEqual(
            self.discover(bob, "alice"),
            {
                "type": "discover-response",
                "userId": "alice",
                "online": True,
                "publicKey": "new-key",
            },
        )
        self.assertExchangeWorks(new, "alice", bob, "bob")

    def test_claims_share_one_ping_and_the_last_one_counts(self):
        """
        Registrations waiting on one holder share its ping; a connection
        that registers again or closes meanwhile drops its earlier claim.
        """
        old = self.registered("alice")
        old.answer_pings = False
        fickle, closing, patient = self.connect(), self.connect(), self.connect()
        for client in (fickle, closing, patient):
            self.send(client, {"type": "register", "userId": "alice", "publicKey": "k"})
        self.assertEqual(len(self.harness.clock.getDelayedCalls()), 1)
        self.send(fickle, {"type": "register", "userId": "fickle", "publicKey": "k"})
        self.assertEqual(
            fickle.take(), [{"type": "registered", "success": True, "userId": "fickle"}]
        )
        closing.sendClose()
        self.harness.advance(self.directory.probe_seconds + 0.1)
        self.assertEqual(
            patient.take(), [{"type": "registered", "success": True, "userId": "alice"}]
        )
        self.assertEqual(fickle.take(), [])
        self.assertEqual(
            self.directory.user_of(self.directory.lookup("fickle").peer), "fickle"
        )

    def test_holder_closing_during_the_probe_frees_the_user_id(self):
        """
        A holder whose connection closes while it is being pinged loses the
        userId at once; the waiting registration gets it without waiting
        out the probe.
        """
        old = self.registered("alice")
        old.answer_pings = False
        new = self.connect()
        self.send(new, {"type": "register", "userId": "alice", "publicKey": "k"})
        self.assertEqual(new.take(), [])
        old.sendClose()
        self.harness.flush()
        self.assertEqual(
            new.take(), [{"type": "registered", "success": True, "userId": "alice"}]
        )
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def test_offline_user_id_is_free_at_once(self):
        """
        Without proof, a userId whose connection closed is free at once, for
        any key, as in the original server: a client that made a new key
        gets its id back when it reconnects.
        """
        alice = self.registered("alice", "key-1")
        watcher = self.connect()
        alice.sendClose()
        self.harness.flush()
        self.assertEqual(
            self.discover(watcher, "alice"),
            {"type": "discover-response", "userId": "alice", "online": False},
        )
        self.registered("alice", "key-2")
        self.assertEqual(self.discover(watcher, "alice")["publicKey"], "key-2")
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def test_holder_may_change_its_key(self):
        """
        The connection holding a userId may register it again with a new
        key, as the original server allowed.
        """
        alice = self.registered("alice", "key-1")
        bob = self.connect()
        self.send(alice, {"type": "register", "userId": "alice", "publicKey": "key-2"})
        self.assertEqual(
            alice.take(), [{"type": "registered", "success": True, "userId": "alice"}]
        )
        self.assertEqual(self.discover(bob, "alice")["publicKey"], "key-2")

    def test_registering_another_user_id_releases_the_first(self):
        client = self.registered("alice")
        bob = self.registered("bob")
        self.discover(bob, "alice", watch=True)
        self.send(
            client, {"type": "register", "userId": "carol", "publicKey": "carol-key"}
        )
        self.assertEqual(message_types(client.take()), ["registered"])
        self.assertEqual(
            bob.take(), [{"type": "presence", "userId": "alice", "online": False}]
        )
        self.registered("alice", "new-key")
        self.assertEqual(
            bob.take(), [{"type": "presence", "userId": "alice", "online": True}]
        )
        self.assertExchangeWorks(client, "carol", bob, "bob")


class PresenceTests(DirectoryTestCase):
    def test_watcher_is_told_online_and_offline(self):
        """
        A connection that discovered a user is told when that user comes
        online and when it goes offline; others are not.
        """
        watcher = self.registered("bob")
        bystander = self.registered("carol")
        self.assertEqual(self.discover(watcher, "alice", watch=True)["online"], False)
        alice = self.registered("alice")
        self.assertEqual(
            watcher.take(), [{"type": "presence", "userId": "alice", "online": True}]
        )
        alice.sendClose()
        self.harness.flush()
        self.assertEqual(
            watcher.take(), [{"type": "presence", "userId": "alice", "online": False}]
        )
        self.registered("alice")
        self.assertEqual(
            watcher.take(), [{"type": "presence", "userId": "alice", "online": True}]
        )
        self.assertEqual(bystander.take(), [])

    def test_takeover_is_no_presence_change(self):
        watcher = self.connect()
        old = self.registered("alice")
        self.discover(watcher, "alice", watch=True)
        old.answer_pings = False
        new = self.connect()
        self.send(
            new, {"type": "register", "userId": "alice", "publicKey": "alice-key"}
        )
        self.harness.advance(self.directory.probe_seconds + 0.1)
        self.assertEqual(message_types(new.take()), ["registered"])
        old.sendClose()
        self.harness.flush()
        self.assertEqual(watcher.take(), [])

    def test_watches_end_with_the_watcher(self):
        watcher = self.connect()
        self.discover(watcher, "alice", watch=True)
        watcher.sendClose()
        self.harness.flush()
        self.registered("alice")
        self.assertEqual(self.directory.watchers("alice"), [])

    def test_a_user_is_not_told_about_itself(self):
        alice = self.connect()
        self.discover(alice, "alice", watch=True)
        self.send(alice, {"type": "register", "userId": "alice", "publicKey": "k"})
        self.assertEqual(message_types(alice.take()), ["registered"])

    def test_watches_are_bounded(self):
        """
        A connection watches at most MAX_WATCHES_PER_PEER users; discovering
        one more forgets the oldest.
        """
        watcher = self.connect()
        for number in range(MAX_WATCHES_PER_PEER + 1):
            self.discover(watcher, f"user-{number}", watch=True)
        self.registered("user-0")
        self.registered(f"user-{MAX_WATCHES_PER_PEER}")
        self.assertEqual(
            watcher.take(),
            [
                {
                    "type": "presence",
                    "userId": f"user-{MAX_WATCHES_PER_PEER}",
                    "online": True,
                }
            ],
        )


def ed25519_identity():
    private = ed25519.Ed25519PrivateKey.generate()
    public = b64(
        private.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public, lambda data: b64(private.sign(data))


def p256_webcrypto_identity():
    """
    A P-256 key exported raw and raw r||s signatures, as WebCrypto makes them.
    """
    private = ec.generate_private_key(ec.SECP256R1())
    public = b64(
        private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )

    def sign(data):
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
        return b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    return private, public, sign


class ProofTests(DirectoryTestCase):
    def register_with_proof(self, client, user_id, public_key, sign):
        self.send(
            client,
            {
                "type": "register",
                "userId": user_id,
                "publicKey": public_key,
                "proof": True,
            },
        )
        [challenge] = client.take()
        self.assertEqual(set(challenge), {"type", "userId", "nonce"})
        self.assertEqual(
            (challenge["type"], challenge["userId"]), ("challenge", user_id)
        )
        signature = sign(challenge_text(user_id, challenge["nonce"]))
        self.send(
            client,
            {"type": "register-proof", "userId": user_id, "signature": signature},
        )
        return client.take()

    def test_ed25519_proof(self):
        """
        A client that signs the challenge is registered as verified, and
        discover says so.
        """
        _, public, sign = ed25519_identity()
        alice = self.connect()
        self.assertEqual(
            self.register_with_proof(alice, "alice", public, sign),
            [
                {
                    "type": "registered",
                    "success": True,
                    "userId": "alice",
                    "verified": True,
                }
            ],
        )
        bob = self.registered("bob")
        self.assertEqual(
            self.discover(bob, "alice"),
            {
                "type": "discover-response",
                "userId": "alice",
                "online": True,
                "publicKey": public,
                "verified": True,
            },
        )
        self.assertExchangeWorks(alice, "alice", bob, "bob")

    def test_webcrypto_p256_proof(self):
        _, public, sign = p256_webcrypto_identity()
        self.assertEqual(
            message_types(
                self.register_with_proof(self.connect(), "alice", public, sign)
            ),
            ["registered"],
        )

    def test_pem_key(self):
        private = ec.generate_private_key(ec.SECP384R1())
        pem = (
            private.public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

        def sign(data):
            return b64(private.sign(data, ec.ECDSA(hashes.SHA384())))

        self.assertEqual(
            message_types(self.register_with_proof(self.connect(), "alice", pem, sign)),
            ["registered"],
        )

    def test_verified_user_id_needs_proof_to_take_over(self):
        """
        Knowing a verified user's public key (discover shows it) is not
        enough to take its userId over; proof is.
        """
        _, public, sign = ed25519_identity()
        alice = self.connect()
        self.register_with_proof(alice, "alice", public, sign)
        thief = self.connect()
        self.assertRefused(
            thief,
            {"type": "register", "userId": "alice", "publicKey": public},
            "proof-required",
        )
        alice.sendClose()
        self.harness.flush()
        self.assertRefused(
            thief,
            {"type": "register", "userId": "alice", "publicKey": public},
            "proof-required",
        )
        again = self.connect()
        self.assertEqual(
            message_types(self.register_with_proof(again, "alice", public, sign)),
            ["registered"],
        )

    def test_wrong_signature(self):
        _, public, _ = ed25519_identity()
        _, _, other_sign = ed25519_identity()
        client = self.connect()
        [error] = self.register_with_proof(client, "alice", public, other_sign)
        self.assertEqual((error["type"], error["code"]), ("error", "proof-failed"))
        self.assertIsNone(self.directory.lookup("alice"))
        self.assertRefused(
            client,
            {"type": "register-proof", "userId": "alice", "signature": "AAAA"},
            "no-challenge",
        )

    def test_signature_over_another_nonce_fails(self):
        private, public, sign = ed25519_identity()
        client = self.connect()
        self.send(
            client,
            {"type": "register", "userId": "alice", "publicKey": public, "proof": True},
        )
        client.take()
        signature = sign(challenge_text("alice", "some-other-nonce"))
        self.assertRefused(
            client,
            {"type": "register-proof", "userId": "alice", "signature": signature},
            "proof-failed",
        )

    def test_bad_proof_requests(self):
        client = self.connect()
        for message, code in (
            (
                {
                    "type": "register",
                    "userId": "alice",
                    "publicKey": "opaque-key",
                    "proof": True,
                },
                "unsupported-key",
            ),
            (
                {
                    "type": "register",
                    "userId": "alice",
                    "publicKey": b64(b"x" * 40),
                    "proof": True,
                },
                "unsupported-key",
            ),
            (
                {
                    "type": "register",
                    "userId": "alice",
                    "publicKey": "k",
                    "proof": "yes",
                },
                "invalid-field",
            ),
            (
                {"type": "register-proof", "userId": "alice", "signature": "AAAA"},
                "no-challenge",
            ),
            (
                {"type": "register-proof", "userId": "alice", "signature": 5},
                "invalid-field",
            ),
            ({"type": "register-proof", "userId": "alice"}, "invalid-field"),
        ):
            self.assertRefused(client, message, code)

    def test_proof_of_another_key_takes_only_from_a_silent_holder(self):
        """
        Proof of one's own key does not take a userId from a live holder
        registered without proof; from a silent one it does.
        """
        holder = self.registered("alice", "key-1")
        _, public, sign = ed25519_identity()
        client = self.connect()
        [error] = self.register_with_proof(client, "alice", public, sign)
        self.assertEqual((error["type"], error["code"]), ("error", "user-id-in-use"))
        holder.answer_pings = False
        self.assertEqual(self.register_with_proof(client, "alice", public, sign), [])
        self.harness.advance(self.directory.probe_seconds + 0.1)
        self.assertEqual(
            client.take(),
            [
                {
                    "type": "registered",
                    "success": True,
                    "userId": "alice",
                    "verified": True,
                }
            ],
        )
        self.assertEqual(message_types(holder.take()), ["error"])

    def test_proof_takes_over_at_once(self):
        """
        With proof of the userId's key, a new connection takes it over from
        a live holder at once.
        """
        _, public, sign = ed25519_identity()
        old = self.connect()
        self.register_with_proof(old, "alice", public, sign)
        new = self.connect()
        self.assertEqual(
            message_types(self.register_with_proof(new, "alice", public, sign)),
            ["registered"],
        )
        self.assertError(old, "replaced")

    def test_proven_key_is_held_after_disconnect(self):
        """
        A userId registered with proof stays bound to its key for
        HOLD_SECONDS after its connection closed: another key is refused,
        even with proof, and the same key needs proof.
        """
        _, public, sign = ed25519_identity()
        _, other_public, other_sign = ed25519_identity()
        alice = self.connect()
        self.register_with_proof(alice, "alice", public, sign)
        alice.sendClose()
        self.harness.flush()
        impostor = self.connect()
        self.assertRefused(
            impostor,
            {
                "type": "register",
                "userId": "alice",
                "publicKey": other_public,
                "proof": True,
            },
            "key-mismatch",
        )
        self.assertRefused(
            impostor,
            {"type": "register", "userId": "alice", "publicKey": "k"},
            "proof-required",
        )
        self.harness.clock.advance(HOLD_SECONDS)
        self.assertEqual(
            message_types(
                self.register_with_proof(impostor, "alice", other_public, other_sign)
            ),
            ["registered"],
        )


class BadInputTests(DirectoryTestCase):
    """
    Each bad input gets an error or a clean close with a code, and other
    users carry on.
    """

    settings = WebSocketSettings(ping_interval=0, max_message_size=32 * 1024)

    def setUp(self):
        super().setUp()
        self.alice = self.registered("alice")
        self.bob = self.registered("bob")

    def tearDown(self):
        self.assertExchangeWorks(self.alice, "alice", self.bob, "bob")

    def test_invalid_json(self):
        client = self.registered("mallory")
        client.sendMessage(b"{nope")
        self.harness.flush()
        error = self.assertError(client, "invalid-json")
        self.assertIn("Invalid message format", error["message"])

    def test_not_an_object(self):
        client = self.registered("mallory")
        for frame in (b"[1,2]", b"42", b'"register"', b"null", b"true"):
            client.sendMessage(frame)
            self.harness.flush()
            self.assertError(client, "invalid-json")

    def test_unknown_type(self):
        client = self.connect()
        for message in (
            {"type": "dance"},
            {},
            {"type": 5},
            {"type": ["offer"]},
            {"type": "x" * 10000},
        ):
            error = self.assertRefused(client, message, "unknown-type")
            self.assertTrue(error["message"].startswith("Unknown message type"))
            self.assertLess(len(error["message"]), 200)

    def test_missing_fields(self):
        client = self.connect()
        for message in (
            {"type": "register"},
            {"type": "register", "userId": "mallory"},
            {"type": "register", "publicKey": "k"},
            {"type": "discover"},
        ):
            error = self.assertRefused(client, message, "invalid-field")
            self.assertTrue(error["message"].startswith("Missing required fields"))
        self.send(client, {"type": "register", "userId": "mallory", "publicKey": "k"})
        client.take()
        for message in (
            {"type": "offer", "to": "bob"},
            {"type": "answer", "answer": SDP_ANSWER},
            {"type": "ice-candidate", "to": "bob", "offer": CANDIDATE},
        ):
            self.assertRefused(client, message, "invalid-field")
        self.assertEqual(self.bob.take(), [])

    def test_wrong_field_types(self):
        client = self.connect()
        for message in (
            {"type": "register", "userId": 5, "publicKey": "k"},
            {"type": "register", "userId": "mallory", "publicKey": {"kty": "EC"}},
            {"type": "register", "userId": "", "publicKey": "k"},
            {"type": "register", "userId": "mallory", "publicKey": ""},
            {"type": "register", "userId": "mallory", "publicKey": "k" * 4097},
            {"type": "discover", "userId": ["alice"]},
        ):
            self.assertRefused(client, message, "invalid-field")
        self.send(client, {"type": "register", "userId": "mallory", "publicKey": "k"})
        client.take()
        for message in (
            {"type": "offer", "to": 7, "offer": SDP_OFFER},
            {"type": "offer", "to": "bob", "offer": 7},
            {"type": "answer", "to": "bob", "answer": [SDP_ANSWER]},
            {"type": "ice-candidate", "to": {"userId": "bob"}, "candidate": CANDIDATE},
        ):
            self.assertRefused(client, message, "invalid-field")
        self.assertEqual(self.bob.take(), [])

    def test_ten_thousand_character_user_id(self):
        client = self.connect()
        for message_type in ("register", "discover"):
            self.assertRefused(
                client,
                {"type": message_type, "userId": "u" * 10000, "publicKey": "k"},
                "invalid-field",
            )
        self.send(client, {"type": "register", "userId": "u" * 256, "publicKey": "k"})
        self.assertEqual(message_types(client.take()), ["registered"])
        self.assertRefused(
            client,
            {"type": "offer", "to": "u" * 10000, "offer": SDP_OFFER},
            "invalid-field",
        )

    def test_ten_thousand_deep_payload(self):
        client = self.registered("mallory")
        client.sendMessage(
            b'{"type":"offer","to":"bob","offer":' + b"[" * 10000 + b"]" * 10000 + b"}"
        )
        self.harness.flush()
        self.assertError(client, "invalid-json")
        self.assertEqual(self.bob.take(), [])

    def test_oversized_frame(self):
        """
        A frame over the size limit gets the error, then close 1009; the
        sender's watchers are told it went offline.
        """
        self.discover(self.alice, "mallory", watch=True)
        client = self.registered("mallory")
        self.alice.take()
        client.sendMessage(
            orjson.dumps({"type": "offer", "to": "bob", "offer": {"sdp": "x" * 40000}})
        )
        self.harness.flush()
        self.assertError(client, "message-too-large")
        self.assertEqual(client.close_code, 1009)
        self.assertEqual(
            self.alice.take(),
            [{"type": "presence", "userId": "mallory", "online": False}],
        )
        self.assertEqual(self.bob.take(), [])

    def test_binary_frame_closes_1003(self):
        client = self.registered("mallory")
        client.sendMessage(b"\x00\x01", isBinary=True)
        self.harness.flush()
        self.assertEqual(client.close_code, 1003)
        self.assertIsNone(self.directory.lookup("mallory"))

    def test_invalid_utf8_closes_1007(self):
        client = self.registered("mallory")
        client.sendMessage(b'{"type":"discover","userId":"\xff\xfe"}')
        self.harness.flush()
        self.assertEqual(client.close_code, 1007)

    def test_rapid_registrations_and_unregistrations(self):
        """
        Hundreds of registrations, unregistrations and reconnections are each
        answered; watchers see every change and nothing is left behind.
        """
        self.discover(self.alice, "churn", watch=True)
        client = self.connect()
        for number in range(300):
            client.send_json(
                {"type": "register", "userId": "churn", "publicKey": f"key-{number}"}
            )
            client.send_json({"type": "unregister"})
        self.harness.flush()
        self.assertEqual(
            message_types(client.take()), ["registered", "unregistered"] * 300
        )
        self.assertEqual(message_types(self.alice.take()), ["presence"] * 600)
        for number in range(200):
            churn = self.connect()
            churn.send_json(
                {"type": "register", "userId": f"churn-{number}", "publicKey": "k"}
            )
            churn.sendClose()
        self.harness.flush()
        self.assertEqual(self.directory.online_count(), 2)
        self.assertEqual(self.harness.hub.stats().peers_total, 3)


class DeliveryTests(DirectoryTestCase):
    def recording_user(self, user_id):
        connection = RecordingConnection()
        peer = self.harness.hub.connect(connection, dialect="directory")
        self.directory.register(peer, user_id, "key")
        return connection, peer

    def test_refused_delivery(self):
        """
        A recipient that cannot take a relay gets the sender an error that
        says why.
        """
        bob = self.registered("bob")
        recipient, _ = self.recording_user("alice")
        for refusal, code in (
            ("too-large", "message-too-large"),
            ("buffer-full", "dropped"),
            ("closed", "user-not-online"),
        ):
            recipient.refuse = refusal
            self.assertRefused(
                bob, {"type": "offer", "to": "alice", "offer": SDP_OFFER}, code
            )
        self.assertEqual(recipient.events, [])

    def test_refused_presence_is_skipped(self):
        watcher, peer = self.recording_user("watcher")
        self.directory.watch(peer, "alice")
        watcher.refuse = "buffer-full"
        other = self.connect()
        self.discover(other, "alice", watch=True)
        self.registered("alice")
        self.assertEqual(
            other.take(), [{"type": "presence", "userId": "alice", "online": True}]
        )

    def test_messages_are_not_rendered(self):
        """
        The hub's free-form "message" kind has no form in this dialect and
        is not delivered.
        """
        alice = self.registered("alice")
        _, peer = self.recording_user("bot")
        self.directory.relay(peer, "alice", "message", {"text": "hi"})
        self.directory.relay(peer, "alice", "offer", SDP_OFFER)
        self.harness.flush()
        self.assertEqual(
            alice.take(),
            [{"type": "offer", "from": "bot", "to": "alice", "offer": SDP_OFFER}],
        )


class RateLimitTests(DirectoryTestCase):
    settings = WebSocketSettings(ping_interval=0, max_message_rate=10)

    def test_rapid_registrations_over_the_rate(self):
        """
        With a message rate limit, registrations past the burst get
        rate-limited errors, persistent excess closes with 1008, and the
        user's watchers see it go offline.
        """
        watcher = self.connect()
        self.discover(watcher, "churn", watch=True)
        client = self.connect()
        for _ in range(25):
            client.send_json({"type": "register", "userId": "churn", "publicKey": "k"})
        self.harness.flush()
        replies = client.take()
        self.assertEqual(message_types(replies), ["registered"] * 20 + ["error"] * 5)
        self.assertEqual(
            {reply.get("code") for reply in replies[20:]}, {"rate-limited"}
        )
        for _ in range(50):
            client.send_json({"type": "unregister"})
        self.harness.flush()
        self.assertEqual(client.close_code, 1008)
        self.assertEqual(
            watcher.take(),
            [
                {"type": "presence", "userId": "churn", "online": True},
                {"type": "presence", "userId": "churn", "online": False},
            ],
        )


class InternalErrorTests(DirectoryTestCase):
    def test_a_bug_closes_1011_and_others_carry_on(self):
        """
        A bug in a handler is reported as internal-error, logged, and closes
        only that connection, with 1011.
        """
        alice = self.registered("alice")
        bob = self.registered("bob")
        self.discover(alice, "bob", watch=True)

        def broken(*args):
            raise RuntimeError("bug")

        self.patch(
            DirectorySession,
            "_handlers",
            {**DirectorySession._handlers, "discover": broken},
        )
        bob.sendMessage(b'{"type":"discover","userId":"alice"}')
        self.harness.flush()
        self.assertEqual(bob.close_code, 1011)
        self.assertEqual(
            bob.take(),
            [
                {
                    "type": "error",
                    "message": "internal server error",
                    "code": "internal-error",
                }
            ],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(
            alice.take(), [{"type": "presence", "userId": "bob", "online": False}]
        )


class HeartbeatTests(DirectoryTestCase):
    settings = WebSocketSettings(ping_interval=5, ping_timeout=3)

    def test_silent_user_goes_offline(self):
        """
        A user whose connection stops answering pings goes offline within
        the ping interval plus the timeout; its watchers are told.
        """
        alice = self.registered("alice")
        bob = self.registered("bob")
        self.discover(alice, "bob", watch=True)
        bob.answer_pings = False
        self.harness.advance(5 + 3 + 0.5)
        self.assertEqual(
            alice.take(), [{"type": "presence", "userId": "bob", "online": False}]
        )
        self.assertIsNone(alice.close_code)
        self.assertEqual(self.discover(alice, "bob")["online"], False)


class RoomTests(DirectoryTestCase):
    """
    The optional room extension: directory users meet peers of the other
    dialects in the hub's rooms, addressed there by hub peer id.
    """

    def native(self, room="lobby"):
        client = self.harness.connect("/signal")
        [welcome] = client.take()
        client.peer_id = welcome["peerId"]
        self.send(client, {"type": "join", "room": room, "metadata": {"name": "nat"}})
        client.joined = client.take()
        return client

    def test_directory_and_native_peers_meet_and_relay(self):
        nat = self.native()
        alice = self.registered("alice")
        self.send(alice, {"type": "join", "room": "lobby"})
        [joined] = alice.take()
        alice_peer = joined["peerId"]
        self.assertEqual(
            joined,
            {
                "type": "joined",
                "room": "lobby",
                "peerId": alice_peer,
                "peers": [{"peerId": nat.peer_id}],
            },
        )
        self.assertEqual(
            nat.take(),
            [
                {
                    "type": "peer-joined",
                    "room": "lobby",
                    "peer": {"id": alice_peer, "metadata": {"userId": "alice"}},
                }
            ],
        )
        self.send(
            nat,
            {"type": "offer", "room": "lobby", "to": alice_peer, "payload": SDP_OFFER},
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "offer",
                    "room": "lobby",
                    "from": nat.peer_id,
                    "to": alice_peer,
                    "offer": SDP_OFFER,
                }
            ],
        )
        self.send(
            alice,
            {
                "type": "answer",
                "room": "lobby",
                "to": nat.peer_id,
                "answer": SDP_ANSWER,
            },
        )
        self.send(
            alice,
            {
                "type": "ice-candidate",
                "room": "lobby",
                "to": nat.peer_id,
                "candidate": CANDIDATE,
            },
        )
        self.assertEqual(
            nat.take(),
            [
                {
                    "type": "answer",
                    "room": "lobby",
                    "from": alice_peer,
                    "payload": SDP_ANSWER,
                },
                {
                    "type": "candidate",
                    "room": "lobby",
                    "from": alice_peer,
                    "payload": CANDIDATE,
                },
            ],
        )
        self.send(
            nat, {"type": "message", "room": "lobby", "to": alice_peer, "payload": "hi"}
        )
        self.assertEqual(alice.take(), [])
        self.send(alice, {"type": "leave", "room": "lobby"})
        self.assertEqual(alice.take(), [{"type": "left", "room": "lobby"}])
        self.assertEqual(
            nat.take(),
            [
                {
                    "type": "peer-left",
                    "room": "lobby",
                    "peer": {"id": alice_peer, "metadata": {"userId": "alice"}},
                }
            ],
        )

    def test_two_directory_users_in_a_room(self):
        """
        In a room, directory users see each other's userId and their relays
        carry it as fromUserId.
        """
        alice = self.registered("alice")
        bob = self.registered("bob")
        self.send(alice, {"type": "join", "room": "r"})
        alice_peer = alice.take()[0]["peerId"]
        self.send(bob, {"type": "join", "room": "r"})
        [joined] = bob.take()
        self.assertEqual(joined["peers"], [{"peerId": alice_peer, "userId": "alice"}])
        bob_peer = joined["peerId"]
        self.assertEqual(
            alice.take(),
            [{"type": "peer-joined", "room": "r", "peerId": bob_peer, "userId": "bob"}],
        )
        self.send(
            bob, {"type": "offer", "room": "r", "to": alice_peer, "offer": SDP_OFFER}
        )
        self.assertEqual(
            alice.take(),
            [
                {
                    "type": "offer",
                    "room": "r",
                    "from": bob_peer,
                    "fromUserId": "bob",
                    "to": alice_peer,
                    "offer": SDP_OFFER,
                }
            ],
        )
        bob.sendClose()
        self.harness.flush()
        self.assertEqual(
            alice.take(),
            [{"type": "peer-left", "room": "r", "peerId": bob_peer, "userId": "bob"}],
        )

    def test_room_errors(self):
        nat = self.native("other")
        client = self.connect()
        for message, code in (
            ({"type": "join"}, "invalid-field"),
            ({"type": "join", "room": 5}, "invalid-field"),
            ({"type": "join", "room": "r" * 10000}, "invalid-field"),
            ({"type": "leave", "room": "lobby"}, "not-in-room"),
            (
                {
                    "type": "offer",
                    "room": "other",
                    "to": nat.peer_id,
                    "offer": SDP_OFFER,
                },
                "not-in-room",
            ),
            (
                {
                    "type": "offer",
                    "room": ["other"],
                    "to": nat.peer_id,
                    "offer": SDP_OFFER,
                },
                "invalid-field",
            ),
        ):
            self.assertRefused(client, message, code)
        self.send(client, {"type": "join", "room": "lobby"})
        client.take()
        self.assertRefused(client, {"type": "join", "room": "lobby"}, "already-in-room")
        self.assertRefused(
            client,
            {"type": "offer", "room": "lobby", "to": nat.peer_id, "offer": SDP_OFFER},
            "peer-not-found",
        )
        self.assertEqual(nat.take(), [])


class DirectoryStateTests(SynchronousTestCase):
    """
    The Directory itself, without sockets.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.hub = Hub(clock=self.clock, ids=IdSource(counting_random_bytes()))

    def user(self, directory, user_id, gone=None):
        connection = RecordingConnection()
        peer = self.hub.connect(connection, dialect="directory")
        directory.register(peer, user_id, f"{user_id}-key", verified=True, gone=gone)
        return connection, peer

    def test_holds_are_bounded_and_never_cut_short(self):
        """
        Past max_held offline userIds a further one is freed at once; the
        holds already made last their time, and the first refusal is logged.
        """
        directory = Directory(self.hub, hold_seconds=60, max_held=2)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for user_id in ("a", "b", "c", "d"):
            _, peer = self.user(directory, user_id)
            directory.disconnected(peer)
        self.assertEqual(
            [directory.lookup(u) is not None for u in "abcd"],
            [True, True, False, False],
        )
        self.assertEqual([event["count"] for event in events if "count" in event], [2])
        self.clock.advance(60)
        self.assertEqual([directory.lookup(u) for u in "abc"], [None, None, None])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reconnect_cancels_the_hold(self):
        directory = Directory(self.hub, hold_seconds=60)
        _, peer = self.user(directory, "a")
        directory.disconnected(peer)
        _, again = self.user(directory, "a")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(120)
        self.assertIs(directory.lookup("a").peer, again)

    def test_no_hold(self):
        directory = Directory(self.hub, hold_seconds=0)
        _, peer = self.user(directory, "a")
        directory.disconnected(peer)
        self.assertIsNone(directory.lookup("a"))

    def test_disconnect_of_a_replaced_peer_changes_nothing(self):
        directory = Directory(self.hub)
        old_connection, old = self.user(directory, "a")
        _, new = self.user(directory, "a", gone=old)
        self.assertEqual(old_connection.events, [Replaced("a")])
        directory.disconnected(old)
        self.assertIs(directory.lookup("a").peer, new)
        self.assertEqual(directory.user_of(new), "a")
        self.assertIsNone(directory.user_of(old))
