"""
The cleanup timer: --stale-timeout, --empty-room-ttl and --cleanup-interval
wired by tap.make_service, on a fake clock.
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from signaling import tap

from .support import RecordingConnection


def parse(*argv):
    options = tap.Options(environ={})
    options.parseOptions(list(argv))
    return options


class BrokenConnection(RecordingConnection):
    """
    A connection whose close fails, so the sweep that removes it raises.
    """

    def close(self, reason: str) -> None:
        raise RuntimeError("close failed")


class CleanupOptionsTests(SynchronousTestCase):
    def test_defaults(self):
        options = parse()
        self.assertEqual(options["stale-timeout"], 120.0)
        self.assertEqual(options["empty-room-ttl"], 0.0)
        self.assertEqual(options["cleanup-interval"], 30.0)

    def test_stale_timeout_without_pings(self):
        options = parse("--stale-timeout", "5", "--ping-interval", "0")
        self.assertEqual(options["stale-timeout"], 5)
        self.assertEqual(
            parse("--stale-timeout", "0", "--ping-interval", "60")["stale-timeout"], 0
        )

    def test_bad_values_exit_with_one_line(self):
        for argv, words in [
            (["--stale-timeout", "soon"], "--stale-timeout takes seconds"),
            (["--empty-room-ttl", "-5"], "--empty-room-ttl takes seconds"),
            (["--cleanup-interval", "0"], "--cleanup-interval must be above 0"),
            (["--stale-timeout", "30"], "must be above --ping-interval"),
            (
                ["--stale-timeout", "5", "--ping-interval", "10"],
                "must be above --ping-interval",
            ),
        ]:
            error = self.assertRaises(SystemExit, parse, *argv)
            self.assertIn(words, str(error.code))
            self.assertNotIn("\n", str(error.code))


class CleanupTimerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.clock.advance(1_700_000_000)

    def start(self, *argv):
        service = tap.make_service(
            parse("--port", "tcp:0", "--ping-interval", "0", *argv), self.clock
        )
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_limits_reach_the_hub(self):
        service = self.start("--stale-timeout", "45", "--empty-room-ttl", "600")
        self.assertEqual(service.hub.limits.stale_timeout, 45)
        self.assertEqual(service.hub.limits.empty_room_ttl, 600)

    def test_stale_peers_and_empty_rooms_are_swept_every_interval(self):
        """
        Every --cleanup-interval the hub is swept: a peer idle for
        --stale-timeout is closed as stale, and a room empty for
        --empty-room-ttl is deleted.
        """
        service = self.start(
            "--stale-timeout", "20", "--empty-room-ttl", "10", "--cleanup-interval", "5"
        )
        hub = service.hub
        idle = RecordingConnection()
        hub.join(hub.connect(idle), "idle-room")
        leaver = hub.connect(RecordingConnection())
        hub.join(leaver, "empty-soon")
        hub.leave(leaver, "empty-soon")
        self.clock.advance(5)
        self.assertIsNotNone(hub.room("empty-soon"))
        self.clock.advance(5)
        self.assertIsNone(hub.room("empty-soon"))
        hub.touch(leaver)
        self.clock.advance(10)
        self.assertEqual(idle.closed, ["stale"])
        self.assertEqual(hub.room("idle-room").members, {})
        hub.touch(leaver)
        self.clock.advance(10)
        self.assertIsNone(hub.room("idle-room"))
        self.assertIsNotNone(hub.find(leaver.id))

    def test_zero_stale_timeout_keeps_idle_peers(self):
        service = self.start("--stale-timeout", "0", "--cleanup-interval", "1")
        connection = RecordingConnection()
        peer = service.hub.connect(connection)
        self.clock.pump([1] * 1000)
        self.assertIs(service.hub.find(peer.id), peer)
        self.assertEqual(connection.closed, [])

    def test_timer_survives_a_failing_sweep(self):
        """
        A sweep that raises is logged, and the next tick sweeps again.
        """
        service = self.start("--stale-timeout", "10", "--cleanup-interval", "5")
        hub = service.hub
        hub.connect(BrokenConnection())
        self.clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        later = RecordingConnection()
        hub.connect(later)
        self.clock.advance(5)
        self.assertEqual(later.closed, [])
        self.clock.advance(5)
        self.assertEqual(later.closed, ["stale"])
        self.assertTrue(service.getServiceNamed("cleanup").running)

    def test_stopping_stops_the_timer(self):
        service = self.start("--stale-timeout", "10", "--cleanup-interval", "5")
        connection = RecordingConnection()
        service.hub.connect(connection)
        service.stopService()
        self.clock.advance(60)
        # Told the server is going away by the drain, never swept as stale.
        self.assertEqual(connection.closed, ["going away"])
