"""
Per-address accounting on a fake clock, and where the client address comes
from behind proxies.
"""

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from signaling.transports.addresses import (
    AddressLimiter,
    AddressLimits,
    forwarded_address,
    truncate_address,
)


class AddressLimiterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self):
        return [
            e
            for e in self.events
            if e.get("log_namespace") == "signaling.transports.addresses.AddressLimiter"
        ]

    def test_connections_cap_and_release(self):
        """
        An address holds at most max_connections slots; releasing one (twice
        counts once) lets the next in; other addresses are apart.
        """
        limiter = AddressLimiter(
            self.clock, AddressLimits(max_connections=2, max_new_per_second=0)
        )
        first = limiter.acquire("192.0.2.1")
        self.assertIsNotNone(limiter.acquire("192.0.2.1"))
        self.assertIsNone(limiter.acquire("192.0.2.1"))
        self.assertIsNotNone(limiter.acquire("192.0.2.2"))
        first.release()
        first.release()
        self.assertEqual(limiter.held("192.0.2.1"), 1)
        self.assertIsNotNone(limiter.acquire("192.0.2.1"))
        self.assertIsNone(limiter.acquire("192.0.2.1"))

    def test_rate_with_bursts(self):
        """
        New connections come at max_new_per_second, in bursts of twice that,
        even when each is closed at once.
        """
        limiter = AddressLimiter(
            self.clock, AddressLimits(max_connections=0, max_new_per_second=2)
        )
        for _ in range(4):
            limiter.acquire("192.0.2.1").release()
        self.assertIsNone(limiter.acquire("192.0.2.1"))
        self.clock.advance(0.5)
        limiter.acquire("192.0.2.1").release()
        self.assertIsNone(limiter.acquire("192.0.2.1"))

    def test_idle_addresses_are_forgotten_once_refilled(self):
        limiter = AddressLimiter(self.clock, AddressLimits(max_new_per_second=2))
        limiter.acquire("192.0.2.1").release()
        self.assertIn("192.0.2.1", limiter._addresses)
        self.clock.advance(0.5)
        self.assertEqual(limiter._addresses, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusals_logged_once_an_interval_truncated(self):
        limiter = AddressLimiter(
            self.clock,
            AddressLimits(max_connections=1, max_new_per_second=0, log_interval=10),
        )
        limiter.acquire("198.51.100.77")
        for _ in range(5):
            limiter.acquire("198.51.100.77")
        self.clock.advance(10)
        limiter.acquire("198.51.100.77")
        warnings = self.warnings()
        self.assertEqual(
            [(e["address"], e["refused"]) for e in warnings],
            [("198.51.100.x", 1), ("198.51.100.x", 5)],
        )


class ForwardedAddressTests(SynchronousTestCase):
    def test_hops_from_the_right(self):
        xff = ["203.0.113.9, 198.51.100.7", "10.0.0.2"]
        self.assertEqual(forwarded_address("10.0.0.1", [], xff, 0), "10.0.0.1")
        self.assertEqual(forwarded_address("10.0.0.1", [], xff, 1), "10.0.0.2")
        self.assertEqual(forwarded_address("10.0.0.1", [], xff, 2), "198.51.100.7")
        self.assertEqual(forwarded_address("10.0.0.1", [], xff, 4), "10.0.0.1")

    def test_forwarded_header_wins(self):
        forwarded = ['for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"']
        self.assertEqual(
            forwarded_address("10.0.0.1", forwarded, ["203.0.113.9"], 1),
            "2001:db8:cafe::17",
        )
        self.assertEqual(forwarded_address("10.0.0.1", forwarded, [], 2), "192.0.2.60")
        self.assertEqual(
            forwarded_address("10.0.0.1", ["for=192.0.2.1:8080"], [], 1), "192.0.2.1"
        )

    def test_truncation(self):
        self.assertEqual(truncate_address("203.0.113.42"), "203.0.113.x")
        self.assertEqual(truncate_address("2001:db8:cafe:1::17"), "2001:db8:cafe::/48")
        self.assertEqual(truncate_address("unix"), "(not an IP address)")
