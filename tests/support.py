"""
Test doubles and an in-memory WebSocket harness.

L{Harness} wires real Autobahn client protocols to the real Klein site over
L{twisted.test.iosim}, with a L{MemoryReactorClock} as both the hub's clock
and txaio's loop, so whole protocol exchanges run synchronously.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport, IOPump
from twisted.web.server import Site
from zope.interface import implementer

from signaling.dialects.peerjs import PeerJSRealm, PeerJSSettings
from signaling.dialects.ywebrtc import YWebRTCSettings
from signaling.errors import DeliveryRefused
from signaling.directory import Directory
from signaling.hub import Hub, HubLimits, IPeerConnection
from signaling.ids import IdSource
from signaling.web import SignalingSite
from signaling.transports.websocket import WebSocketSettings

txaio.use_twisted()


def make_site(
    hub: Hub, settings: WebSocketSettings = WebSocketSettings(), **kwargs: Any
) -> SignalingSite:
    """
    A site of C{hub} with a directory of the default limits, as
    L{signaling.tap} builds one beside the hub.
    """
    return SignalingSite(hub, settings, directory=Directory(hub), **kwargs)


def counting_random_bytes():
    """
    A deterministic stand-in for C{os.urandom}: every call returns the next
    counter value, so ids are distinct and predictable.
    """
    counter = itertools.count(1)

    def random_bytes(count: int) -> bytes:
        return next(counter).to_bytes(count, "big")

    return random_bytes


@implementer(IPeerConnection)
class RecordingConnection:
    """
    An L{IPeerConnection} that records what the hub does to it.

    :ivar refuse: When set, L{deliver} raises L{DeliveryRefused} with it.
    """

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closed: list[str] = []
        self.refuse: str | None = None

    def deliver(self, event: Any) -> None:
        if self.refuse:
            raise DeliveryRefused(self.refuse)
        self.events.append(event)

    def close(self, reason: str) -> None:
        self.closed.append(reason)


class BrokenEventSet:
    """
    A Socket.IO event set whose render has a bug, to put into a recipient.
    """

    @staticmethod
    def render(connection: Any, event: Any) -> None:
        raise RuntimeError("a bug in a recipient's render")


def broken_render(event: Any) -> bytes:
    raise RuntimeError("a bug in a recipient's render")


class Client(WebSocketClientProtocol):
    """
    A WebSocket client that records decoded frames and how it closed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self.raw: list[bytes] = []
        self.opened = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.answer_pings = True

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append(payload)
        self.received.append(orjson.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        self.close_reason = reason

    def onPing(self, payload: bytes) -> None:
        if self.answer_pings:
            super().onPing(payload)

    def send_json(self, message: Any) -> None:
        self.sendMessage(orjson.dumps(message))

    def take(self) -> list[Any]:
        """
        Return and forget what arrived since the last call.
        """
        received, self.received = self.received, []
        return received


class Harness:
    """
    One hub and site, and any number of in-memory clients connected to it.
    """

    def __init__(
        self,
        limits: HubLimits = HubLimits(),
        settings: WebSocketSettings = WebSocketSettings(),
        peerjs: PeerJSSettings | None = None,
        ywebrtc: YWebRTCSettings | None = YWebRTCSettings(),
        hub_class: type[Hub] = Hub,
    ) -> None:
        """
        :param peerjs: Mount the PeerJS dialect with these settings.
        :param ywebrtc: The y-webrtc dialect's settings; L{None} for none.
        :param hub_class: What the hub is made of (a test's own kind).
        """
        self.clock = MemoryReactorClock()
        self.clock.advance(1_700_000_000)
        self._previous_loop = txaio.config.loop
        txaio.config.loop = self.clock
        self.hub = hub_class(
            clock=self.clock, ids=IdSource(counting_random_bytes()), limits=limits
        )
        self.peerjs = PeerJSRealm(self.hub, peerjs) if peerjs is not None else None
        self.site = make_site(
            self.hub, settings, peerjs=self.peerjs, ywebrtc_settings=ywebrtc
        )
        self.web = Site(self.site.resource())
        self.pumps: list[IOPump] = []
        self._ports = itertools.count(40000)

    def restore(self) -> None:
        txaio.config.loop = self._previous_loop

    def connect(
        self,
        path: str = "/signal",
        origin: str | None = None,
        client_class=Client,
        turn_clock: bool = True,
    ) -> Client:
        """
        Open a WebSocket to C{path} and flush until the handshake is done.

        :param turn_clock: Whether to run what is due on the clock meanwhile
            (see L{flush}).
        """
        headers = {"Origin": origin} if origin else None
        client_factory = WebSocketClientFactory(
            f"ws://localhost:8080{path}", headers=headers
        )
        client_factory.protocol = client_class
        client_factory.setProtocolOptions(autoPingInterval=0, failByDrop=False)
        server = self.web.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        client = client_factory.buildProtocol(None)
        client_address = IPv4Address("TCP", "127.0.0.1", next(self._ports))
        server_transport = FakeTransport(
            server, isServer=True, peerAddress=client_address
        )
        client_transport = FakeTransport(client, isServer=False)
        server.makeConnection(server_transport)
        client.makeConnection(client_transport)
        pump = IOPump(client, server, client_transport, server_transport, debug=False)
        self.pumps.append(pump)
        client.server_transport = server_transport
        self.flush(turn_clock)
        return client

    @staticmethod
    def server_side(client: Client):
        """
        The server's protocol for C{client}'s connection (after the upgrade,
        the WebSocket protocol that took the transport over).
        """
        return client.server_transport.protocol

    def flush(self, turn_clock: bool = True) -> None:
        """
        Move bytes in every direction, and run what is due now on the clock
        (a reactor's next turn: closes waiting in the CloseQueue), until
        nothing is left to move.
        """
        for _ in range(1000):
            if turn_clock:
                self.clock.advance(0)
            moved = any([pump.pump() for pump in self.pumps])
            if not moved and not (turn_clock and self._due()):
                self.pumps = [
                    pump
                    for pump in self.pumps
                    if not (pump.clientIO.disconnected and pump.serverIO.disconnected)
                ]
                return
        raise AssertionError("the connections never went quiet")

    def turn(self) -> None:
        """
        Run the calls due now on the clock, as one turn of a reactor does:
        not those they schedule for now in turn (C{Clock.advance(0)} runs
        those too), which a reactor runs on its next turn.
        """
        now = self.clock.seconds()
        for call in [c for c in self.clock.getDelayedCalls() if c.getTime() <= now]:
            if call.active():
                self.clock.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)

    def _due(self) -> bool:
        now = self.clock.seconds()
        return any(call.getTime() <= now for call in self.clock.getDelayedCalls())

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """
        Let C{seconds} pass in small steps, flushing after each.
        """
        elapsed = 0.0
        while elapsed < seconds:
            self.clock.advance(step)
            self.flush()
            elapsed += step


def message_types(messages: list[dict]) -> list[str]:
    return [message["type"] for message in messages]
