"""
Tests for L{signaling.deadlines}: timeouts of one length on one reactor call.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from signaling.deadlines import DeadlineQueue


class DeadlineQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = DeadlineQueue(10, lambda: self.clock)
        self.ran: list[str] = []

    def test_each_call_runs_its_period_after_it_was_made(self):
        """
        Calls made at different times run each at its own deadline, in
        order, on a single reactor call at any time.
        """
        self.queue.call_later(self.ran.append, "a")
        self.clock.advance(3)
        self.queue.call_later(self.ran.append, "b")
        self.queue.call_later(self.ran.append, "c")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(6.9)
        self.assertEqual(self.ran, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ran, ["a"])
        self.clock.advance(2.9)
        self.assertEqual(self.ran, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.ran, ["a", "b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_calls_do_not_run(self):
        """
        A cancelled call does not run and is no longer active; the others
        still run at their deadlines; cancelling twice, or after the call
        ran, is no error; with nothing waiting, no reactor call is left.
        """
        first = self.queue.call_later(self.ran.append, "first")
        self.clock.advance(5)
        second = self.queue.call_later(self.ran.append, "second")
        self.assertTrue(first.active())
        first.cancel()
        first.cancel()
        self.assertFalse(first.active())
        self.clock.advance(5)
        self.assertEqual(self.ran, [])
        self.clock.advance(5)
        self.assertEqual(self.ran, ["second"])
        self.assertFalse(second.active())
        second.cancel()
        third = self.queue.call_later(self.ran.append, "third")
        third.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failing_call_is_logged_and_the_rest_run(self):
        def fail() -> None:
            raise RuntimeError("bug")

        self.queue.call_later(fail)
        self.queue.call_later(self.ran.append, "after")
        self.clock.advance(10)
        self.assertEqual(self.ran, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
