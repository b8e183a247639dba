"""
The relay-time histogram (C{signaling_relay_seconds}): sampled relays over
in-memory WebSockets, on an injected clock.
"""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from signaling import tap
from signaling.counters import RelayTimer
from signaling.dialects.peerjs import PeerJSSettings
from signaling.metrics import MetricsService
from signaling.resume import ResumeSettings
from signaling.transports.websocket import WebSocketSettings

from .support import Harness, make_site


class SteppingClock:
    """
    A clock that moves on by C{step} each time it is read, so that a
    relay done in one call still takes time to measure.
    """

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step

    def seconds(self) -> float:
        self.now += self.step
        return self.now


def relay_samples(metrics: MetricsService) -> dict[tuple[str, tuple], float]:
    """
    The samples of C{signaling_relay_seconds} in C{metrics}' registry, by
    sample name and labels.
    """
    text = generate_latest(metrics.registry).decode("utf-8")
    [family] = [
        family
        for family in text_string_to_metric_families(text)
        if family.name == "signaling_relay_seconds"
    ]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


class RelayTimerTests(SynchronousTestCase):
    def test_written_after_done_observes_nothing(self):
        """
        A write outside a timed frame's call (L{RelayTimer.done} came
        first) is no sample.
        """
        seen = []
        clock = SteppingClock(0.5)
        timer = RelayTimer(1, clock.seconds, lambda *sample: seen.append(sample))
        timer.arrived("topic")
        timer.written()
        timer.done()
        timer.written()
        self.assertEqual(seen, [("topic", 0.5)])


class RelayTimeTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(
            settings=WebSocketSettings(ping_interval=0),
            peerjs=PeerJSSettings(expire_timeout=5, alive_timeout=60),
        )
        self.addCleanup(self.harness.restore)

    def metrics(self, every: int, step: float = 0.002) -> MetricsService:
        clock = SteppingClock(step)
        return MetricsService(clock, self.harness.hub, relay_sample=every)

    def native_room(self, count: int):
        clients = []
        for _ in range(count):
            client = self.harness.connect("/signal")
            client.peer_id = client.take()[0]["peerId"]
            client.send_json({"type": "join", "room": "r"})
            self.harness.flush()
            clients.append(client)
        for client in clients:
            client.take()
        return clients

    def test_every_nth_relayed_frame_is_timed(self):
        """
        With a sample of 2, the first frame that arrives and one in two
        after it are timed from its arrival to its recipient's write, by
        the sender's dialect; the recipient gets every frame.
        """
        alice, bob = self.native_room(2)
        metrics = self.metrics(2, step=0.003)
        for n in range(3):
            bob.send_json(
                {"type": "offer", "room": "r", "to": alice.peer_id, "payload": n}
            )
            self.harness.flush()
        self.assertEqual([m["payload"] for m in alice.take()], [0, 1, 2])
        samples = relay_samples(metrics)
        native = (("dialect", "native"),)
        self.assertEqual(samples["signaling_relay_seconds_count", native], 2)
        self.assertAlmostEqual(samples["signaling_relay_seconds_sum", native], 0.006)
        self.assertEqual(
            samples["signaling_relay_seconds_bucket", native + (("le", "0.005"),)], 2
        )
        self.assertEqual(
            samples["signaling_relay_seconds_bucket", native + (("le", "0.001"),)], 0
        )

    def test_a_broadcast_gives_one_sample_per_recipient(self):
        """
        A timed broadcast is one sample for each recipient's write.
        """
        alice, bob, carol = self.native_room(3)
        metrics = self.metrics(1)
        alice.send_json({"type": "message", "room": "r", "payload": "hi"})
        self.harness.flush()
        self.assertEqual(len(bob.take()), 1)
        self.assertEqual(len(carol.take()), 1)
        samples = relay_samples(metrics)
        self.assertEqual(
            samples["signaling_relay_seconds_count", (("dialect", "native"),)], 2
        )

    def test_frames_that_relay_nothing_are_not_timed(self):
        """
        A timed frame that is no relay (a join, a refused offer) adds no
        sample; nor does what the server writes back to its sender.
        """
        (alice,) = self.native_room(1)
        metrics = self.metrics(1)
        alice.send_json({"type": "join", "room": "s"})
        alice.send_json({"type": "offer", "room": "r", "to": "nobody", "payload": 1})
        self.harness.flush()
        self.assertEqual([m["type"] for m in alice.take()], ["joined", "error"])
        self.assertEqual(relay_samples(metrics), {})

    def test_zero_times_nothing(self):
        """
        --relay-time-sample 0 leaves the relay path without a timer.
        """
        alice, bob = self.native_room(2)
        metrics = self.metrics(0)
        self.assertIsNone(self.harness.hub.counters.relay_timer)
        bob.send_json({"type": "offer", "room": "r", "to": alice.peer_id, "payload": 1})
        self.harness.flush()
        self.assertEqual(len(alice.take()), 1)
        self.assertEqual(relay_samples(metrics), {})

    def test_resumable_sessions_are_timed(self):
        """
        A relay to a resumable native session (which keeps its frames) is
        timed at its socket's write.
        """
        harness = self.harness
        harness.site = make_site(
            harness.hub, harness.site.settings, resume=ResumeSettings(grace=10)
        )
        harness.web = Site(harness.site.resource())
        alice = harness.connect("/signal")
        welcome = alice.take()[0]
        self.assertIn("resumeToken", welcome)
        (bob,) = self.native_room(1)
        alice.send_json({"type": "join", "room": "r"})
        self.harness.flush()
        alice.take()
        metrics = self.metrics(1)
        bob.send_json(
            {"type": "offer", "room": "r", "to": welcome["peerId"], "payload": 1}
        )
        self.harness.flush()
        self.assertEqual(alice.take()[0]["seq"], 1)
        samples = relay_samples(metrics)
        self.assertEqual(
            samples["signaling_relay_seconds_count", (("dialect", "native"),)], 1
        )

    def test_peerjs_relays_are_timed(self):
        """
        PeerJS's relay by id, which passes the hub by, is timed too.
        """
        peers = []
        for peer_id in ("alice", "bob"):
            client = self.harness.connect(
                f"/peerjs/peerjs?key=peerjs&id={peer_id}&token=t&version=1.5.5"
            )
            self.assertEqual(client.take(), [{"type": "OPEN"}])
            peers.append(client)
        alice, bob = peers
        metrics = self.metrics(1)
        bob.send_json({"type": "OFFER", "dst": "alice", "payload": {"sdp": "x"}})
        self.harness.flush()
        self.assertEqual(alice.take()[0]["type"], "OFFER")
        samples = relay_samples(metrics)
        self.assertEqual(
            samples["signaling_relay_seconds_count", (("dialect", "peerjs"),)], 1
        )


class OptionTests(SynchronousTestCase):
    def test_relay_time_sample(self):
        """
        --relay-time-sample is 100 unless given; it takes a whole number.
        """
        options = tap.Options(environ={})
        options.parseOptions([])
        self.assertEqual(options["relay-time-sample"], 100)
        options = tap.Options(environ={})
        options.parseOptions(["--relay-time-sample", "0"])
        self.assertEqual(options["relay-time-sample"], 0)
        error = self.assertRaises(
            SystemExit,
            tap.Options(environ={}).parseOptions,
            ["--relay-time-sample", "-1"],
        )
        self.assertIn("--relay-time-sample takes a whole number", str(error.code))
