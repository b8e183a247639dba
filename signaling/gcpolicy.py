"""
When the server's memory is garbage-collected, so that thousands of idle
peers do not make every full collection pause the reactor.

CPython's cyclic collector scans every tracked object in a full collection:
with 19,000 connected peers (about 150 objects each) that is a pause of
several hundred milliseconds, repeated each time the heap grows by a
quarter. Idle peers are long-lived and never garbage, so ten times a second
this policy collects what is young (cheap: only objects made since the last
tick) and then freezes everything that survived (C{gc.freeze()}), which takes
it out of all later scans. While the policy runs, CPython collects nothing
by itself: each object is scanned once, by the tick after it was made.
(CPython's young collections, every 700 new objects, scanned each new
peer's objects once more before the tick, and its collections of the
second generation again and again: 2–3 % of taking a peer in, see
docs/performance.rst. Garbage in a cycle waits for the next tick, a tenth
of a second of the server's work at most.) Frozen objects that die
later are reclaimed by reference counting unless they sit in a cycle, as a
closed connection's objects do; so when as many connections have closed as a quarter of the
peers still connected (at least C{min_closes}), or C{full_interval} has
passed, the policy unfreezes and runs one full collection. Every kind of
connection counts: a WebSocket, an Engine.IO session, an Engine.IO WebSocket.
Garbage that no close announces is caught by memory instead: growth of the
process's resident memory since the last full collection that new peers do
not explain (C{peer_bytes} each) is taken for frozen garbage, and once it
reaches a quarter of what the process held then (at least C{min_growth}
bytes) the next tick runs a full collection. Joins of new peers never cause
a full collection; churn causes ones whose cost is in proportion to it.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from .logs import Logger

_closed = 0


def connection_closed() -> None:
    """
    Note that a connection (and its cycle of protocol objects) has ended.
    """
    global _closed
    _closed += 1


def connections_closed() -> int:
    return _closed


def resident_memory() -> int | None:
    """
    The bytes of this process's memory in RAM, where the system says
    (Linux's C{/proc}); else L{None}.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class CollectionPolicy(Service):
    """
    Collects young garbage and freezes survivors every C{interval} seconds;
    a full collection only after enough closed connections or growth of
    memory.

    :param clock: An C{IReactorTime}.
    :param peers: How many peers are connected now.
    :param min_growth: Bytes of growth of resident memory since the last
        full collection, beyond what new peers explain, that bring the next
        one (or a quarter of what it was then, whichever is more); 0 never.
    :param peer_bytes: Memory one more connected peer is expected to hold
        (5–6 KB measured; see docs/performance.rst). Too high, and garbage
        that arrives with new peers passes for theirs.
    :param collector: The C{gc} module, or a double of it in tests.
    :param memory: The process's resident memory in bytes, or L{None} when
        unknown.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        peers: Callable[[], int],
        interval: float = 0.1,
        min_closes: int = 256,
        full_interval: float = 600.0,
        collector: Any = gc,
        closed: Callable[[], int] = connections_closed,
        min_growth: int = 32 * 1024 * 1024,
        memory: Callable[[], int | None] = resident_memory,
        peer_bytes: int = 8 * 1024,
    ) -> None:
        self.clock = clock
        self.peers = peers
        self.interval = interval
        self.min_closes = min_closes
        self.full_interval = full_interval
        self.collector = collector
        self.closed = closed
        self.min_growth = min_growth
        self.memory = memory
        self.peer_bytes = peer_bytes
        self._loop: LoopingCall | None = None
        self._closed_at_full = 0
        self._full_at = 0.0
        self._memory_base: int | None = None
        self._peers_base = 0
        self.full_collections = 0

    def startService(self) -> None:
        Service.startService(self)
        self._thresholds = self.collector.get_threshold()
        # (A threshold of 0 turns CPython's own collections off.)
        self.collector.set_threshold(0)
        # Start-up objects (modules, classes, the reactor) are never garbage.
        self._full()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.collector.unfreeze()
        self.collector.set_threshold(*self._thresholds)

    def tick(self) -> None:
        try:
            closes = self.closed() - self._closed_at_full
            overdue = self.clock.seconds() - self._full_at >= self.full_interval
            if (
                overdue
                or (closes >= self.min_closes and closes >= self.peers() // 4)
                or self._memory_grew()
            ):
                self._full()
            else:
                # Scans only what is not frozen: objects made since last tick.
                self.collector.collect()
                self.collector.freeze()
        except Exception:
            self._log.failure("garbage collection policy failed")

    def _memory_grew(self) -> bool:
        """
        Whether memory that new peers do not explain has grown past the
        threshold; peers are counted (a pass over all of them) only once
        memory as a whole has.
        """
        if not self.min_growth or self._memory_base is None:
            return False
        now = self.memory()
        if now is None:
            return False
        threshold = max(self.min_growth, self._memory_base // 4)
        if now - self._memory_base < threshold:
            return False
        peers = self.peers()
        explained = max(0, peers - self._peers_base) * self.peer_bytes
        if now - self._memory_base - explained >= threshold:
            return True
        # What new peers hold is theirs, not garbage: count from here on.
        self._memory_base += explained
        self._peers_base = peers
        return False

    def _full(self) -> None:
        self.collector.unfreeze()
        self.collector.collect()
        self.collector.freeze()
        self._closed_at_full = self.closed()
        self._full_at = self.clock.seconds()
        # What the collection left is the new baseline: memory the allocator
        # keeps after freeing is not garbage to chase again.
        if self.min_growth:
            self._memory_base = self.memory()
            self._peers_base = self.peers()
        self.full_collections += 1
