"""
Engine.IO v4: the session under every Socket.IO connection.

An L{EngineIOSocket} is one client session, whatever carries it: HTTP
long-polling, a WebSocket, or polling upgraded to a WebSocket. It knows
nothing of HTTP requests or WebSocket protocols; the resource in
L{signaling.transports.engineio_resource} feeds it packets and collects its
output through L{EngineIOSocket.poll} or an attached L{IPacketTransport}.
Heartbeats run on an injected clock.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import Interface, implementer

from .. import gcpolicy
from ..dialects.base import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    IEngineIOSession,
)
from ..errors import DeliveryRefused
from ..logs import Logger
from .addresses import AddressLimiter, Slot
from .limits import RateLimit

# Packet types.
OPEN = "0"
CLOSE = "1"
PING = "2"
PONG = "3"
MESSAGE = "4"
UPGRADE = "5"
NOOP = "6"

#: Why a session over C{max_message_rate} ended.
RATE_EXCEEDED = "message rate exceeded"

#: Packets of one polling payload are separated by the record separator.
SEPARATOR = "\x1e"

#: Engine.IO's error codes, their messages and HTTP statuses.
UNKNOWN_TRANSPORT = 0
UNKNOWN_SID = 1
BAD_HANDSHAKE_METHOD = 2
BAD_REQUEST = 3
FORBIDDEN = 4
UNSUPPORTED_PROTOCOL_VERSION = 5

_MESSAGES = {
    UNKNOWN_TRANSPORT: "Transport unknown",
    UNKNOWN_SID: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


class EngineIOError(Exception):
    """
    A request Engine.IO refuses, answered with C{{"code", "message"}} JSON.

    :ivar status: The HTTP status of the answer.
    """

    def __init__(
        self, code: int, message: str | None = None, status: int | None = None
    ) -> None:
        self.code = code
        self.message = message or _MESSAGES[code]
        self.status = status or (403 if code == FORBIDDEN else 400)
        super().__init__(self.message)

    def body(self) -> bytes:
        return orjson.dumps({"code": self.code, "message": self.message})


@attrs.frozen
class EngineIOSettings:
    """
    :ivar ping_interval: Seconds between server pings.
    :ivar ping_timeout: Seconds to wait for the pong.
    :ivar max_payload: Largest polling body or WebSocket message in bytes.
    :ivar max_buffer: Bytes a polling client may leave unread before
        deliveries to it are refused.
    :ivar connect_timeout: Seconds a session may stay without a Socket.IO
        CONNECT.
    :ivar max_send_buffer: Bytes a WebSocket may queue for a client that is
        not reading before deliveries to it are refused.
    :ivar max_message_rate: Packets a second a client may send over
        WebSocket (bursts of twice that); 0 for unlimited.
    :ivar max_message_fragments: Frames one WebSocket message may arrive in.
    :ivar max_message_rate: Packets a second a client may send, over
        polling and WebSocket alike (bursts of twice that); 0 for unlimited.
    :ivar upgrade_timeout: Seconds a WebSocket opened for an upgrade may
        take to complete it before it is closed.
    :ivar trusted_hops: Reverse proxies whose forwarding headers name the
        client of a WebSocket (C{--trust-forwarded}).
    """

    ping_interval: float = 25
    ping_timeout: float = 20
    max_payload: int = 1_000_000
    max_buffer: int = 4_000_000
    connect_timeout: float = 45
    max_send_buffer: int = 256 * 1024
    max_message_rate: float = 0
    max_message_fragments: int = 128
    upgrade_timeout: float = 10
    trusted_hops: int = 0

    @classmethod
    def from_websocket(cls, settings: Any) -> "EngineIOSettings":
        """
        Take the limits of L{signaling.transports.websocket.WebSocketSettings}. Engine.IO
        clients need a heartbeat, so a ping interval of 0 means Engine.IO's
        default rather than none.
        """
        return cls(
            ping_interval=settings.ping_interval or 25,
            ping_timeout=settings.ping_timeout or 20,
            max_payload=settings.max_message_size,
            max_buffer=max(settings.max_send_buffer, settings.max_message_size),
            max_send_buffer=settings.max_send_buffer,
            max_message_rate=settings.max_message_rate,
            max_message_fragments=settings.max_message_fragments,
            upgrade_timeout=settings.upgrade_timeout,
            trusted_hops=settings.trusted_hops,
        )


class IPacketTransport(Interface):
    """
    A WebSocket carrying one Engine.IO session: one packet per frame.
    """

    def send_packet(packet: str | bytes) -> None:
        """
        Send one packet, text or binary.

        :raises DeliveryRefused: The WebSocket cannot take it.
        """

    def close_transport(code: int = CLOSE_NORMAL) -> None:
        """
        Close the WebSocket: normally, or with C{code}
        (L{CLOSE_POLICY_VIOLATION} for a client over the message rate,
        L{CLOSE_INTERNAL_ERROR} when the server's bug ended the session,
        L{CLOSE_GOING_AWAY} when the server shuts down).
        """


def encode_payload(packets: list[str | bytes]) -> bytes:
    """
    Join packets for one polling response; binary ones become C{b<base64>}.
    """
    parts = []
    for packet in packets:
        if isinstance(packet, bytes):
            parts.append("b" + base64.b64encode(packet).decode("ascii"))
        else:
            parts.append(packet)
    return SEPARATOR.join(parts).encode("utf-8")


def decode_payload(body: bytes) -> list[str | bytes]:
    """
    Split a polling request body into packets.

    :raises EngineIOError: It is not UTF-8, or a packet is empty or bad base64.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EngineIOError(BAD_REQUEST, "the payload is not UTF-8")
    packets: list[str | bytes] = []
    for part in text.split(SEPARATOR):
        if not part:
            raise EngineIOError(BAD_REQUEST, "empty packet in payload")
        if part[0] == "b":
            try:
                packets.append(base64.b64decode(part[1:], validate=True))
            except ValueError:
                raise EngineIOError(BAD_REQUEST, "bad base64 packet")
        else:
            packets.append(part)
    return packets


@implementer(IEngineIOSession)
class EngineIOSocket:
    """
    One Engine.IO session.

    :ivar sid: The session id: a credential, never shown to other clients.
    :ivar transport: C{"polling"} or C{"websocket"}.
    :ivar handshake: What the first request carried (query, origin).
    :ivar close_reason: Why the session ended, once it has.
    """

    _log = Logger()

    def __init__(
        self,
        sid: str,
        clock: IReactorTime,
        settings: EngineIOSettings,
        handshake: Any,
        forget: Callable[["EngineIOSocket"], None],
    ) -> None:
        self.sid = sid
        self.clock = clock
        self.settings = settings
        self.handshake = handshake
        self.transport = "polling"
        self.handler: Any = None
        self.state = "opening"
        self.upgrading: Any = None
        self.close_reason: str | None = None
        self._forget = forget
        self._queue: list[str | bytes] = []
        self._queued_bytes = 0
        self._poll: Deferred | None = None
        self._websocket: Any = None
        self._ping_call: IDelayedCall | None = None
        self._pong_call: IDelayedCall | None = None
        self._linger_call: IDelayedCall | None = None
        self._upgrade_call: IDelayedCall | None = None
        self._rate_limit = (
            RateLimit(settings.max_message_rate, clock.seconds())
            if settings.max_message_rate
            else None
        )

    # opening

    def open_packet(self) -> str:
        upgrades = ["websocket"] if self.transport == "polling" else []
        return OPEN + orjson.dumps(
            {
                "sid": self.sid,
                "upgrades": upgrades,
                "pingInterval": int(self.settings.ping_interval * 1000),
                "pingTimeout": int(self.settings.ping_timeout * 1000),
                "maxPayload": self.settings.max_payload,
            }
        ).decode("utf-8")

    def open(self, handler: Any, websocket: Any = None) -> None:
        """
        Start the session: queue (or send) the open packet and the heartbeat.

        :param websocket: The L{IPacketTransport} of a WebSocket-only session.
        """
        self.handler = handler
        if websocket is not None:
            self.transport = "websocket"
            self._websocket = websocket
        self.state = "open"
        self._write(self.open_packet())
        self._schedule_ping()

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    # output

    def send(self, packet: str | bytes) -> None:
        """
        Send one packet to the client by whichever transport it is on.

        :raises DeliveryRefused: The session is closed, or a polling client
            has left too much unread.
        """
        if self.state != "open":
            raise DeliveryRefused("closed", "the session is closed")
        if (
            self._websocket is None
            and self._queued_bytes + len(packet) > self.settings.max_buffer
        ):
            raise DeliveryRefused("buffer-full", "the client is not polling")
        self._write(packet)

    def send_message(self, data: str) -> None:
        self.send(MESSAGE + data)

    def _write(self, packet: str | bytes) -> None:
        if self._websocket is not None:
            self._websocket.send_packet(packet)
            return
        self._queue.append(packet)
        self._queued_bytes += len(packet)
        self._flush()

    def _flush(self) -> None:
        if self._poll is None or not self._queue:
            return
        poll, self._poll = self._poll, None
        packets, self._queue, self._queued_bytes = self._queue, [], 0
        poll.callback(encode_payload(packets))

    # polling

    def poll(self) -> Deferred:
        """
        A polling GET: fires with the payload to answer it with, at once if
        packets are waiting, else when one is sent.

        :raises EngineIOError: Another GET is pending, or the session is not
            on polling.
        """
        if self.transport != "polling":
            raise EngineIOError(BAD_REQUEST, "the session is not on polling")
        if self._poll is not None:
            # Engine.IO ends a session whose client overlaps its polls.
            self.close("overlapping polls")
            raise EngineIOError(BAD_REQUEST, "a poll is already pending")
        poll = Deferred(self._poll_cancelled)
        self._poll = poll
        if self.state == "closing":
            self._finish_closing()
            return poll
        if self.upgrading is not None and not self._queue:
            # The client is upgrading: release it at once so it can pause.
            self._queue.append(NOOP)
        self._flush()
        return poll

    def _poll_cancelled(self, poll: Deferred) -> None:
        # The client went away while its GET was pending.
        if self._poll is poll:
            self._poll = None

    def post(self, body: bytes) -> None:
        """
        A polling POST: handle every packet in C{body}.

        :raises EngineIOError: The body is too large or malformed (the session
            is then closed), or the session is not on polling.
        """
        if self.transport != "polling" or self.state != "open":
            raise EngineIOError(BAD_REQUEST, "the session is not on polling")
        if len(body) > self.settings.max_payload:
            self.close("payload too large")
            raise EngineIOError(BAD_REQUEST, "Payload too large", status=413)
        try:
            packets = decode_payload(body)
        except EngineIOError:
            self.close("bad payload")
            raise
        for packet in packets:
            if self.state != "open":
                break
            if self.admit():
                self.packet_received(packet)
        if self.close_reason == RATE_EXCEEDED:
            raise EngineIOError(BAD_REQUEST, "Too many packets", status=429)

    # input

    def admit(self) -> bool:
        """
        Count one packet from the client, whatever carried it, against
        C{max_message_rate}.

        :return: Whether to handle it. A packet over the rate is dropped;
            persistent excess ends the session (a WebSocket carrying it
            closes with 1008, a poll gets the close packet).
        """
        rate_limit = self._rate_limit
        if rate_limit is None or rate_limit.admit(self.clock.seconds()):
            return True
        if rate_limit.persistent and self.state == "open":
            self._log.info("an Engine.IO session exceeded the message rate")
            self.close(RATE_EXCEEDED, linger=True, code=CLOSE_POLICY_VIOLATION)
        return False

    def packet_received(self, packet: str | bytes) -> None:
        """
        Handle one packet from the active transport.
        """
        if self.state != "open":
            return
        if isinstance(packet, bytes):
            self._activity()
            self.handler.message_received(packet)
            return
        kind, data = packet[:1], packet[1:]
        if kind == MESSAGE:
            self._activity()
            self.handler.message_received(data)
        elif kind == PONG:
            self._activity()
            self._pong_received()
        elif kind == CLOSE:
            self.close("client close")
        elif kind == NOOP:
            pass
        else:
            # An open, ping (from v3 clients) or upgrade here is a protocol
            # error; Engine.IO ends the session.
            self._log.debug(
                "bad packet type {kind!r} on {sid}", kind=kind, sid=self.sid
            )
            self.close("bad packet")

    def _activity(self) -> None:
        self.handler.activity()

    # heartbeat

    def _schedule_ping(self) -> None:
        self._ping_call = self.clock.callLater(self.settings.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_call = None
        try:
            self._write(PING)
        except DeliveryRefused:
            pass
        self._pong_call = self.clock.callLater(
            self.settings.ping_timeout, self._pong_missing
        )

    def _pong_received(self) -> None:
        if self._pong_call is None:
            return
        self._pong_call.cancel()
        self._pong_call = None
        self._schedule_ping()

    def _pong_missing(self) -> None:
        self._pong_call = None
        self._log.debug("session {sid} missed its pong", sid=self.sid)
        self.close("ping timeout")

    # upgrade

    def attach(self, websocket: Any) -> bool:
        """
        A WebSocket opened with this session's sid: it has
        C{upgrade_timeout} seconds to probe and take the session over, and is
        closed with the session.

        :return: Whether it is accepted: the session is open on polling and
            no other WebSocket is upgrading it (as the reference server, one
            at a time).
        """
        if (
            self.state != "open"
            or self.transport != "polling"
            or self.upgrading is not None
        ):
            return False
        self.upgrading = websocket
        self._upgrade_call = self.clock.callLater(
            self.settings.upgrade_timeout, self._upgrade_expired
        )
        return True

    def _upgrade_expired(self) -> None:
        self._upgrade_call = None
        upgrading, self.upgrading = self.upgrading, None
        if upgrading is not None:
            self._log.debug("an upgrade of {sid} timed out", sid=self.sid)
            upgrading.close_transport()

    def _stop_upgrade_deadline(self) -> None:
        if self._upgrade_call is not None and self._upgrade_call.active():
            self._upgrade_call.cancel()
        self._upgrade_call = None

    def probe(self, websocket: Any) -> bool:
        """
        The attached WebSocket sent C{2probe}: answer C{3probe} on it and
        release a pending poll with a noop so the client can pause polling.

        :return: Whether the probe is accepted.
        """
        if self.state != "open" or self.transport != "polling":
            return False
        if self.upgrading is not websocket:
            return False
        websocket.send_packet(PONG + "probe")
        if self._poll is not None and not self._queue:
            self._queue.append(NOOP)
            self._flush()
        return True

    def upgrade(self, websocket: Any) -> None:
        """
        The probing WebSocket sent C{5}: it carries the session from now on,
        starting with whatever was waiting for the next poll.
        """
        if self.upgrading is not websocket or self.state != "open":
            websocket.close_transport()
            return
        self.upgrading = None
        self._stop_upgrade_deadline()
        self.transport = "websocket"
        self._websocket = websocket
        if self._poll is not None:
            poll, self._poll = self._poll, None
            poll.callback(encode_payload([NOOP]))
        packets, self._queue, self._queued_bytes = self._queue, [], 0
        for packet in packets:
            if packet != NOOP:
                websocket.send_packet(packet)
        self._activity()

    def probe_failed(self, websocket: Any) -> None:
        """
        The probing WebSocket closed before the upgrade; stay on polling.
        """
        if self.upgrading is websocket:
            self.upgrading = None
            self._stop_upgrade_deadline()

    # closing

    def transport_closed(self, websocket: Any) -> None:
        """
        The WebSocket went away (the client closed or vanished).
        """
        if websocket is self._websocket:
            self._websocket = None
            self.close("transport close")
        else:
            self.probe_failed(websocket)

    def close(
        self, reason: str, linger: bool = False, code: int = CLOSE_NORMAL
    ) -> None:
        """
        End the session: tell the handler, stop the heartbeat, and close
        every WebSocket attached to it; a pending poll gets a close packet.

        :param linger: Without a pending poll, keep the session until the
            client's next poll collects what was queued and the close packet
            (for closes the server decides), but no longer than the ping
            timeout.
        :param code: The close code of the WebSockets: 1000, or 1008 or 1011
            (a bug on our side ended it), or 1001 (the server shuts down;
            a WebSocket gets the close packet first).
        """
        if self.state in ("closing", "closed"):
            return
        self.state = "closing"
        self.close_reason = reason
        for call in (self._ping_call, self._pong_call):
            if call is not None and call.active():
                call.cancel()
        self._ping_call = self._pong_call = None
        self._stop_upgrade_deadline()
        upgrading, self.upgrading = self.upgrading, None
        if upgrading is not None:
            upgrading.close_transport(code)
        handler = self.handler
        if handler is not None:
            try:
                handler.closed(reason)
            except Exception:
                self._log.failure("closing the session's handler failed")
        if self._websocket is not None:
            websocket, self._websocket = self._websocket, None
            if code == CLOSE_GOING_AWAY:
                # A polling client gets the close packet on its poll; over
                # a WebSocket it comes before the close frame.
                try:
                    websocket.send_packet(CLOSE)
                except DeliveryRefused:
                    pass
            websocket.close_transport(code)
            self._finish_closing()
        elif self._poll is not None or not linger:
            self._finish_closing()
        else:
            self._linger_call = self.clock.callLater(
                self.settings.ping_timeout, self._finish_closing
            )

    def _finish_closing(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        if self._poll is not None:
            poll, self._poll = self._poll, None
            packets, self._queue = self._queue + [CLOSE], []
            poll.callback(encode_payload(packets))
        self._queue = []
        self._forget(self)


class EngineIOServer:
    """
    Every Engine.IO session of one site, by sid.

    :ivar handler_factory: Makes the
        L{signaling.dialects.base.IEngineIOHandler} of a new session.
    :ivar limiter: Counts each polling session as a connection of its
        client's address until it ends (a WebSocket session is counted by
        its TCP connection).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        new_sid: Callable[[], str],
        settings: EngineIOSettings,
        handler_factory: Callable[[EngineIOSocket], Any],
        limiter: AddressLimiter | None = None,
    ) -> None:
        self.clock = clock
        self.new_sid = new_sid
        self.settings = settings
        self.handler_factory = handler_factory
        self.limiter = limiter
        self.sessions: dict[str, EngineIOSocket] = {}
        self._slots: dict[str, Slot] = {}

    def open(self, handshake: Any, websocket: Any = None) -> EngineIOSocket:
        """
        Start a session, on polling or (with C{websocket}) on a WebSocket.

        :raises EngineIOError: The client's address is over a limit (429).
        """
        slot = None
        address = getattr(handshake, "address", None)
        if websocket is None and self.limiter is not None and address is not None:
            slot = self.limiter.acquire(address)
            if slot is None:
                raise EngineIOError(
                    BAD_REQUEST, "Too many connections from this address", status=429
                )
        sid = self.new_sid()
        while sid in self.sessions:
            sid = self.new_sid()
        socket = EngineIOSocket(sid, self.clock, self.settings, handshake, self._forget)
        self.sessions[sid] = socket
        if slot is not None:
            self._slots[sid] = slot
        socket.open(self.handler_factory(socket), websocket)
        return socket

    def find(self, sid: str | None) -> EngineIOSocket:
        """
        :raises EngineIOError: There is no live session C{sid}.
        """
        socket = self.sessions.get(sid) if sid else None
        if socket is None:
            raise EngineIOError(UNKNOWN_SID)
        return socket

    def _forget(self, socket: EngineIOSocket) -> None:
        if self.sessions.get(socket.sid) is socket:
            del self.sessions[socket.sid]
            # A session is a cycle of objects (socket, handler, timers) that
            # the collection policy must hear of, as of a closed WebSocket.
            gcpolicy.connection_closed()
            slot = self._slots.pop(socket.sid, None)
            if slot is not None:
                slot.release()


__all__ = [
    "EngineIOError",
    "EngineIOServer",
    "EngineIOSettings",
    "EngineIOSocket",
    "IPacketTransport",
    "decode_payload",
    "encode_payload",
]
