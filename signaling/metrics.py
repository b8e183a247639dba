"""
Prometheus metrics at C{/metrics} on a listener of their own
(C{--metrics-port}), so that they are never public by accident.

What the relay counts (L{signaling.counters.Counters}) and what the hub
holds are read at scrape time; nothing here runs per message. Two
histograms are fed off the relay path: garbage-collection pauses (from
C{gc.callbacks}) and the reactor's lag, how late a timer fires, which is
how long an arriving frame can wait before it is read and relayed (the
relay's own work per frame is measured by C{bench/micro.py}, about 10 µs).
A third, fed from the relay path but only for one frame in
C{--relay-time-sample}, is that work as it happens: the time from a
relayed frame's arrival to its recipient's write (L{RelayTimer}).
No label takes values that grow with users: no room or peer ids.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.twisted import MetricsResource
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from .counters import RelayTimer
from .hub import Hub
from .logs import Logger

_log = Logger()

#: Seconds between two looks at the reactor's lag.
LAG_INTERVAL = 0.25
_PAUSE_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: What C{generate_latest} writes (newer prometheus_client name it
#: C{CONTENT_TYPE_PLAIN_0_0_4}; 0.20 does not).
_TEXT_FORMAT = b"text/plain; version=0.0.4; charset=utf-8"
_BUS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_RELAY_BUCKETS = (
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.005,
    0.025,
    0.1,
    0.5,
)
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
            "signaling_connections",
            "Connected peers by dialect and transport.",
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
        yield GaugeMetricFamily(
            "signaling_peers", "Connected peers.", value=stats.peers_total
        )
        yield GaugeMetricFamily(
            "signaling_peers_in_rooms",
            "Connected peers in at least one room.",
            value=stats.peers_in_rooms,
        )
        yield GaugeMetricFamily("signaling_rooms", "Rooms.", value=stats.rooms_total)
        counters = hub.counters
        relayed = CounterMetricFamily(
            "signaling_relayed",
            "Signals relayed, by kind and the sender's dialect.",
            labels=["kind", "dialect"],
        )
        for (kind, dialect), count in sorted(counters.relayed.items()):
            relayed.add_metric([kind, dialect], count)
        yield relayed
        yield _by_label(
            "signaling_errors",
            "Errors sent to clients, by code.",
            "code",
            counters.errors,
        )
        yield _by_label(
            "signaling_deliveries_refused",
            "Deliveries refused, by reason (buffer-full, closed, too-large, rate).",
            "reason",
            counters.refused,
        )
        yield _by_label(
            "signaling_handshakes_refused",
            "Connections refused before they opened, by reason (origin, auth).",
            "reason",
            counters.handshakes_refused,
        )
        yield CounterMetricFamily(
            "signaling_received_bytes",
            "Bytes of WebSocket messages received.",
            value=counters.bytes_in,
        )
        yield CounterMetricFamily(
            "signaling_sent_bytes",
            "Bytes of WebSocket messages sent.",
            value=counters.bytes_out,
        )


class BusCollector:
    """
    The Redis bus's counts, read at each scrape; no node ids as labels.
    """

    def __init__(self, bus: Any) -> None:
        """
        :param bus: The node's L{signaling.cluster.bus.RedisBus}.
        """
        self.bus = bus

    def collect(self) -> Iterator[Any]:
        bus = self.bus
        yield CounterMetricFamily(
            "signaling_bus_published",
            "Envelopes this node published to other nodes.",
            value=bus.published,
        )
        yield CounterMetricFamily(
            "signaling_bus_publish_dropped",
            "Envelopes published that no node got (it is gone, or Redis is away).",
            value=bus.publish_dropped,
        )
        yield CounterMetricFamily(
            "signaling_bus_reconnects",
            "Reconnections to Redis after it was lost.",
            value=bus.reconnects,
        )
        yield GaugeMetricFamily(
            "signaling_bus_nodes_alive",
            "Live nodes of the cluster at the last heartbeat.",
            value=bus.nodes_alive,
        )


def _by_label(
    name: str, documentation: str, label: str, table: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(table.items()):
        family.add_metric([value], count)
    return family


class MetricsService(Service):
    """
    Keeps the registry's histograms fed while the server runs.
    """

    def __init__(
        self, reactor: Any, hub: Hub, bus: Any = None, relay_sample: int = 100
    ) -> None:
        """
        :param bus: The node's L{signaling.cluster.bus.RedisBus}, if it is
            a node of a cluster.
        :param relay_sample: Time one relayed frame in this many from its
            arrival to its recipient's write (C{--relay-time-sample}); 0
            times none.
        """
        self.reactor = reactor
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(HubCollector(hub))
        self.gc_pauses = Histogram(
            "signaling_gc_pause_seconds",
            "Pauses of the garbage collector, by generation.",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
            registry=self.registry,
        )
        self.reactor_lag = Histogram(
            "signaling_reactor_lag_seconds",
            "How late a timer fires: how long an arriving frame may wait to be read and relayed.",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.relay_time = Histogram(
            "signaling_relay_seconds",
            "Time from a relayed frame's arrival to the write of its recipient's frame "
            "(one per recipient), for one frame in --relay-time-sample, by the sender's "
            "dialect.",
            ["dialect"],
            buckets=_RELAY_BUCKETS,
            registry=self.registry,
        )
        if relay_sample:
            hub.counters.relay_timer = RelayTimer(
                relay_sample, reactor.seconds, self._observe_relay
            )
        # Each dialect's child of the histogram: labels() costs more than
        # the observation.
        self._relay_times: dict[str, Any] = {}
        if bus is not None:
            self.registry.register(BusCollector(bus))
            bus.probe_observer = Histogram(
                "signaling_bus_latency_seconds",
                "Time of a probe envelope through Redis, from this node's publishing "
                "connection to its subscription, once a heartbeat.",
                buckets=_BUS_BUCKETS,
                registry=self.registry,
            ).observe
        self._gc_started: float | None = None
        self._lag_loop: LoopingCall | None = None
        self._lag_due = 0.0

    def _observe_relay(self, dialect: str, seconds: float) -> None:
        child = self._relay_times.get(dialect)
        if child is None:
            child = self._relay_times[dialect] = self.relay_time.labels(dialect)
        child.observe(seconds)

    def site(self) -> Site:
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        return Site(root)

    def worker_site(self) -> Site:
        """
        The site a worker serves on its unix socket for its parent; the
        WSGI resource of L{site} needs an address with a host.
        """
        root = Resource()
        root.putChild(b"metrics", _RegistryText(self.registry))
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


class _RegistryText(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", _TEXT_FORMAT)
        return generate_latest(self.registry)


class WorkersMetricsResource(Resource):
    """
    C{/metrics} of the C{--workers} parent: the whole host in one scrape.

    Each worker serves its own registry on a unix socket in the workers'
    private directory; a scrape here asks every worker at once and adds up
    their samples: counters, histogram buckets and connections add up,
    and the cluster's view (L{CLUSTER_VIEWS}) is taken from the worker
    that sees most of it.
    This stands in for prometheus_client's multiprocess mode, which only
    sees metric objects written to its files, not the collectors above
    that read the hub at scrape time. A worker that does not answer in
    time (it died, it is starting again) is left out of that scrape, and
    the counters of a dead worker leave the sums with it.

    :param socket_paths: The unix socket of each running worker's metrics.
    """

    isLeaf = True

    def __init__(
        self, reactor: Any, socket_paths: Callable[[], list[str]], timeout: float = 5.0
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.socket_paths = socket_paths
        self.timeout = timeout

    def render_GET(self, request: Any) -> Any:
        fetches = [self._fetch(path) for path in self.socket_paths()]
        done = gatherResults(fetches)
        done.addCallback(
            lambda texts: generate_latest(
                _Merged([text for text in texts if text is not None])
            )
        )
        done.addCallback(self._write, request)
        done.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _fetch(self, path: str) -> Deferred:
        agent = Agent.usingEndpointFactory(
            self.reactor, _UnixEndpoints(self.reactor, path)
        )
        fetching = agent.request(b"GET", b"http://worker/metrics")
        fetching.addCallback(
            lambda response: readBody(response) if response.code == 200 else None
        )
        fetching.addTimeout(self.timeout, self.reactor)
        # One worker's silence must not hide the others.
        fetching.addErrback(lambda failure: None)
        return fetching

    def _write(self, body: bytes, request: Any) -> None:
        request.setHeader(b"Content-Type", _TEXT_FORMAT)
        request.write(body)
        request.finish()

    def _failed(self, failure: Any, request: Any) -> None:
        _log.failure("the workers' metrics could not be merged", failure)
        request.setResponseCode(500)
        request.finish()

    def site(self) -> Site:
        root = Resource()
        root.putChild(b"metrics", self)
        return Site(root)


@implementer(IAgentEndpointFactory)
class _UnixEndpoints:
    def __init__(self, reactor: Any, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self.reactor, self.path)


#: Gauges that are the same on every node of a cluster (each hub mirrors
#: the others' peers and rooms): the workers' sum would count each peer
#: once per worker, so their merge takes the largest.
CLUSTER_VIEWS = frozenset(
    {
        "signaling_peers",
        "signaling_peers_in_rooms",
        "signaling_rooms",
        "signaling_bus_nodes_alive",
    }
)


class _Merged:
    """
    A collector of the sum of several processes' Prometheus texts.
    """

    def __init__(self, texts: list[bytes]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple, float]] = {}
        for text in self.texts:
            for family in text_string_to_metric_families(text.decode("utf-8")):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                sums = values.setdefault(merged.name, {})
                for sample in family.samples:
                    if sample.labels.get("transport") == "remote":
                        # A peer of another worker, which counts it itself.
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in sums:
                        sums[key] = sample.value
                    elif sample.name.endswith("_created"):
                        # A start time: the earliest, not a sum.
                        sums[key] = min(sums[key], sample.value)
                    elif family.name in CLUSTER_VIEWS:
                        sums[key] = max(sums[key], sample.value)
                    else:
                        sums[key] += sample.value
        for name, family in families.items():
            for (sample_name, labels), value in values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family
