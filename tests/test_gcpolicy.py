"""
Tests for signaling.gcpolicy: when the server collects garbage.
"""

from __future__ import annotations

import weakref

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from signaling import gcpolicy
from signaling.gcpolicy import CollectionPolicy

from .socketio_support import SocketIOCase


class RecordingCollector:
    """
    Stands in for the C{gc} module and records what was asked of it.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threshold = (700, 10, 10)

    def collect(self, generation: int = 2) -> int:
        self.calls.append("collect" if generation == 2 else f"collect {generation}")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, *threshold: int) -> None:
        self.threshold = threshold

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


class CollectionPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.collector = RecordingCollector()
        self.closed = 0
        self.peers = 0
        self.memory: int | None = 100 * 2**20
        self.policy = CollectionPolicy(
            self.clock,
            peers=lambda: self.peers,
            interval=0.25,
            min_closes=100,
            full_interval=600,
            collector=self.collector,
            closed=lambda: self.closed,
            min_growth=32 * 2**20,
            memory=lambda: self.memory,
        )
        self.policy.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.policy.running:
            self.policy.stopService()

    def test_start_collects_everything_and_freezes(self):
        """
        Starting runs one full collection and freezes what survived, and
        turns CPython's own collections off.
        """
        self.assertEqual(self.collector.take(), ["unfreeze", "collect", "freeze"])
        self.assertEqual(self.collector.threshold, (0,))

    def test_tick_collects_young_objects_and_freezes(self):
        """
        Each tick without many closed connections collects what is not
        frozen and freezes the survivors, without unfreezing anything.
        """
        self.collector.take()
        self.peers = 19000
        self.clock.advance(0.25)
        self.clock.advance(0.25)
        self.assertEqual(self.collector.take(), ["collect", "freeze"] * 2)
        self.assertEqual(self.policy.full_collections, 1)

    def test_closed_connections_bring_a_full_collection(self):
        """
        Once as many connections have closed as a quarter of the peers still
        connected (and at least min_closes), the next tick unfreezes and
        collects everything; the count then starts again.
        """
        self.collector.take()
        self.peers = 1000
        self.closed = 249
        self.clock.advance(0.25)
        self.assertEqual(self.collector.take(), ["collect", "freeze"])
        self.closed = 250
        self.clock.advance(0.25)
        self.assertEqual(self.collector.take(), ["unfreeze", "collect", "freeze"])
        self.clock.advance(0.25)
        self.assertEqual(self.collector.take(), ["collect", "freeze"])

    def test_few_peers_need_min_closes(self):
        """
        With few peers connected a full collection waits for min_closes
        closed connections.
        """
        self.collector.take()
        self.closed = 99
        self.clock.advance(0.25)
        self.assertEqual(self.collector.take(), ["collect", "freeze"])
        self.closed = 100
        self.clock.advance(0.25)
        self.assertEqual(self.collector.take(), ["unfreeze", "collect", "freeze"])

    def test_full_collection_at_least_every_full_interval(self):
        """
        Garbage that no closed connection announces is still reclaimed:
        after full_interval seconds a tick runs a full collection.
        """
        self.collector.take()
        self.clock.advance(599.75)
        self.assertNotIn("unfreeze", self.collector.take())
        self.clock.advance(0.25)
        self.assertEqual(self.collector.take()[-3:], ["unfreeze", "collect", "freeze"])

    def test_stop_unfreezes_and_restores_thresholds(self):
        """
        Stopping the policy stops its ticks, unfreezes and gives CPython its
        own thresholds back.
        """
        self.collector.take()
        self.policy.stopService()
        self.assertEqual(self.collector.take(), ["unfreeze"])
        self.assertEqual(self.collector.threshold, (700, 10, 10))
        self.clock.advance(10)
        self.assertEqual(self.collector.take(), [])

    def test_connection_closed_counts(self):
        """
        connection_closed() adds one to the process-wide count the policy
        reads by default.
        """
        before = gcpolicy.connections_closed()
        gcpolicy.connection_closed()
        self.assertEqual(gcpolicy.connections_closed(), before + 1)

    def grow(self, grown: int) -> list[str]:
        """
        Let memory grow by C{grown} bytes; what the next tick asks of the
        collector.
        """
        self.memory += grown
        self.clock.advance(0.25)
        return self.collector.take()

    def test_memory_growth_brings_a_full_collection(self):
        """
        Frozen garbage that no close announces still shows as memory: once
        resident memory has grown by min_growth (or a quarter, whichever is
        more) since the last full collection, the next tick runs one, and
        what is left then is the new baseline.
        """
        self.collector.take()
        self.assertEqual(self.grow(32 * 2**20 - 1), ["collect", "freeze"])
        self.assertEqual(self.grow(1), ["unfreeze", "collect", "freeze"])
        self.assertEqual(self.grow(0), ["collect", "freeze"])

    def test_growth_is_relative_to_a_large_heap(self):
        self.memory = 400 * 2**20
        self.policy._full()
        self.collector.take()
        self.assertEqual(self.grow(64 * 2**20), ["collect", "freeze"])
        self.assertEqual(self.grow(36 * 2**20), ["unfreeze", "collect", "freeze"])

    def test_growth_that_new_peers_explain_does_not_trigger(self):
        """
        Memory held by peers that joined since the last full collection is
        not garbage: a ramp of joins brings no full collection, and only
        growth beyond what the peers explain counts from then on.
        """
        self.collector.take()
        # 64 MiB of new peers, whatever one is expected to hold.
        self.peers = 64 * 2**20 // self.policy.peer_bytes
        self.assertEqual(
            self.grow(self.peers * self.policy.peer_bytes), ["collect", "freeze"]
        )
        self.assertEqual(self.grow(32 * 2**20), ["collect", "freeze"])
        self.assertEqual(self.grow(32 * 2**20), ["unfreeze", "collect", "freeze"])

    def test_unknown_memory_or_zero_growth_never_triggers(self):
        self.memory = None
        self.policy._full()
        self.collector.take()
        self.clock.advance(0.25)
        self.assertEqual(self.collector.take(), ["collect", "freeze"])
        self.policy.min_growth = 0
        self.memory = 2**40
        self.assertEqual(self.grow(0), ["collect", "freeze"])

    def test_cycles_wait_for_the_tick(self):
        """
        With the real collector: garbage in a cycle, however many objects
        are made after it, waits for the policy's next tick, which frees
        it; CPython's own collections come back when the policy stops.
        """
        self.policy.stopService()
        policy = CollectionPolicy(self.clock, peers=lambda: 0)
        policy.startService()
        self.addCleanup(policy.stopService)

        class Node:
            pass

        def cycle() -> weakref.ref:
            node = Node()
            node.itself = node
            return weakref.ref(node)

        young = cycle()
        made = [[] for _ in range(100_000)]
        self.assertIsNotNone(young())
        self.clock.advance(policy.interval)
        self.assertIsNone(young())
        policy.stopService()
        young = cycle()
        made += [[] for _ in range(100_000)]
        self.assertIsNone(young())
        del made

    def test_resident_memory_is_read(self):
        memory = gcpolicy.resident_memory()
        if memory is not None:
            self.assertGreater(memory, 1024 * 1024)


class ClosedConnectionCountTests(SocketIOCase):
    """
    Every kind of closed connection counts toward the next full collection.
    """

    def assertCounted(self, close, at_least: int = 1) -> None:
        before = gcpolicy.connections_closed()
        close()
        self.assertGreaterEqual(gcpolicy.connections_closed() - before, at_least)

    def test_polling_session(self):
        client = self.polling()
        self.assertCounted(lambda: client.post("1"))

    def closing(self, websocket):
        def close():
            websocket.sendClose()
            self.harness.flush()

        return close

    def test_engineio_websocket(self):
        self.assertCounted(self.closing(self.ws_socket()), at_least=2)

    def test_upgrading_websocket(self):
        client = self.polling()
        self.assertCounted(self.closing(self.websocket(f"&sid={client.sid}")))
