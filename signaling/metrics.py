"""
Prometheus metrics at C{/metrics} on a listener of their own
(C{--metrics-port}), so that they are never public by accident.

What the relay counts (L{signaling.counters.Counters}) and what the hub
holds are read at scrape time; nothing here runs per message. Two
histograms are fed off the relay path: garbage-collection pauses (from
C{gc.callbacks}) and the reactor's lag, how late a timer fires, which is
how long an arriving frame can wait before it is read and relayed (the
relay's own work per frame is measured by C{bench/micro.py}, about 10 µs).
No label takes values that grow with users: no room or peer ids.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Site

from .hub import Hub

#: Seconds between two looks at the reactor's lag.
LAG_INTERVAL = 0.25
_PAUSE_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HubCollector:
    """
    The hub's gauges and the relay's counters, read at each scrape.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        hub = self.hub
        connections = GaugeMetricFamily(
            "signaling_connections", "Connected peers by dialect and transport.",
            labels=["dialect", "transport"],
        )
        by_kind: dict[tuple[str, str], int] = {}
        for peer in hub.peers():
            key = (peer.dialect, getattr(peer.connection, "transport_name", "other"))
            by_kind[key] = by_kind.get(key, 0) + 1
        for (dialect, transport), count in sorted(by_kind.items()):
            connections.add_metric([dialect, transport], count)
        yield connections
        stats = hub.stats()
        yield GaugeMetricFamily("signaling_peers", "Connected peers.", value=stats.peers_total)
        yield GaugeMetricFamily(
            "signaling_peers_in_rooms", "Connected peers in at least one room.",
            value=stats.peers_in_rooms,
        )
        yield GaugeMetricFamily("signaling_rooms", "Rooms.", value=stats.rooms_total)
        counters = hub.counters
        relayed = CounterMetricFamily(
            "signaling_relayed", "Signals relayed, by kind and the sender's dialect.",
            labels=["kind", "dialect"],
        )
        for (kind, dialect), count in sorted(counters.relayed.items()):
            relayed.add_metric([kind, dialect], count)
        yield relayed
        yield _by_label("signaling_errors", "Errors sent to clients, by code.", "code", counters.errors)
        yield _by_label(
            "signaling_deliveries_refused",
            "Deliveries refused, by reason (buffer-full, closed, too-large, rate).",
            "reason", counters.refused,
        )
        yield _by_label(
            "signaling_handshakes_refused",
            "Connections refused before they opened, by reason (origin, auth).",
            "reason", counters.handshakes_refused,
        )
        yield CounterMetricFamily(
            "signaling_received_bytes", "Bytes of WebSocket messages received.",
            value=counters.bytes_in,
        )
        yield CounterMetricFamily(
            "signaling_sent_bytes", "Bytes of WebSocket messages sent.",
            value=counters.bytes_out,
        )


def _by_label(name: str, documentation: str, label: str, table: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(table.items()):
        family.add_metric([value], count)
    return family


class MetricsService(Service):
    """
    Keeps the registry's histograms fed while the server runs.
    """

    def __init__(self, reactor: Any, hub: Hub) -> None:
        self.reactor = reactor
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(HubCollector(hub))
        self.gc_pauses = Histogram(
            "signaling_gc_pause_seconds", "Pauses of the garbage collector, by generation.",
            ["generation"], buckets=_PAUSE_BUCKETS, registry=self.registry,
        )
        self.reactor_lag = Histogram(
            "signaling_reactor_lag_seconds",
            "How late a timer fires: how long an arriving frame may wait to be read and relayed.",
            buckets=_LAG_BUCKETS, registry=self.registry,
        )
        self._gc_started: float | None = None
        self._lag_loop: LoopingCall | None = None
        self._lag_due = 0.0

    def site(self) -> Site:
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        return Site(root)

    def startService(self) -> None:
        Service.startService(self)
        gc.callbacks.append(self._on_gc)
        self._lag_due = self.reactor.seconds()
        self._lag_loop = LoopingCall(self._look_at_lag)
        self._lag_loop.clock = self.reactor
        self._lag_loop.start(LAG_INTERVAL, now=True)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._lag_loop is not None and self._lag_loop.running:
            self._lag_loop.stop()

    def _look_at_lag(self) -> None:
        now = self.reactor.seconds()
        self.reactor_lag.observe(max(0.0, now - self._lag_due))
        self._lag_due = now + LAG_INTERVAL

    def _on_gc(self, phase: str, info: dict) -> None:
        # A pause is wall time with everything else stopped; the reactor's
        # clock is what tests may fake, so a real one measures it.
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.gc_pauses.labels(str(info.get("generation", "?"))).observe(
                time.perf_counter() - self._gc_started
            )
            self._gc_started = None
