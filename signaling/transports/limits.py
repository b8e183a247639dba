"""
The per-connection limits every transport shares: the token bucket behind
C{--max-message-rate} (a WebSocket counts its frames, an Engine.IO session its
packets), the bounded send buffer behind C{--max-send-buffer}, and the
WebSocket protocol that applies both, with the cap on fragments.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from .. import fastpath
from ..dialects.base import CLOSE_POLICY_VIOLATION
from ..errors import DeliveryRefused

_OPEN = WebSocketProtocol.STATE_OPEN


class RateLimit:
    """
    A token bucket: C{rate} messages a second, bursts of C{2 * rate}.

    :ivar refused: Messages refused since the last one admitted.
    """

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, 2 * rate)
        self.tokens = self.burst
        self.updated = now
        self.refused = 0

    def admit(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return True
        self.refused += 1
        return False

    @property
    def persistent(self) -> bool:
        """
        Whether more messages than a burst have been refused in a row: the
        sender is not slowing down.
        """
        return self.refused > self.burst


def watch_send_buffer(transport, limit: int) -> SendBuffer:
    """
    Make a L{SendBuffer} of C{limit} bytes the producer of C{transport}.
    """
    send_buffer = SendBuffer(limit)
    # Under a WebSocketResource the HTTP channel that parsed the upgrade is
    # still registered as the transport's producer; the transport's pause
    # and resume now concern the WebSocket.
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()
    transport.registerProducer(send_buffer, True)
    return send_buffer


@implementer(IPushProducer)
class SendBuffer:
    """
    Bounds what one connection queues for a reader that is not reading.

    The transport tells its producer to pause when its own buffer is full
    and to resume when it has drained; while paused, frames are admitted
    only up to C{limit} more bytes, so a stalled reader cannot grow the
    server's memory without bound.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused = False
        self.pending = 0

    def admit(self, size: int) -> bool:
        if not self.paused:
            return True
        if self.pending + size > self.limit:
            return False
        self.pending += size
        return True

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pending = 0

    def stopProducing(self) -> None:
        pass


class LimitedProtocol(WebSocketServerProtocol):
    """
    A WebSocket with the per-connection limits: a bounded send buffer and a
    message rate. Its factory has C{settings} (C{max_send_buffer},
    C{max_message_rate}) and C{clock}.
    """

    send_buffer: SendBuffer | None = None
    rate_limit: RateLimit | None = None

    def connectionMade(self) -> None:
        fastpath.connection_made(self, super().connectionMade)
        settings = self.factory.settings
        self.send_buffer = watch_send_buffer(self.transport, settings.max_send_buffer)
        if settings.max_message_rate:
            self.rate_limit = RateLimit(
                settings.max_message_rate, self.factory.clock.seconds()
            )

    def over_rate(self) -> bool:
        """
        Whether the message just received is over the rate and must be
        dropped; persistent excess also closes the connection with 1008.
        """
        rate_limit = self.rate_limit
        if rate_limit is None or rate_limit.admit(self.factory.clock.seconds()):
            return False
        if rate_limit.persistent:
            fastpath.fail_connection(
                self, CLOSE_POLICY_VIOLATION, "message rate limit exceeded"
            )
        return True

    # A fragmented message: Autobahn keeps a list of frames of a list of
    # chunks, some hundred bytes per one-byte frame; one bytearray holds it
    # at its own size, and the frames are counted against a cap and the rate.
    # Only Autobahn's documented frame callbacks are overridden.

    pending_message: bytearray | None = None

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self.pending_message = bytearray()
        self.pending_binary = isBinary
        self.message_fragments = 0
        self.message_length = 0

    def onMessageFrameBegin(self, length: int) -> None:
        self.message_fragments += 1
        self.message_length += length
        if self.message_fragments > 1 and not fastpath.failed(self):
            if 0 < self.factory.settings.max_message_fragments < self.message_fragments:
                fastpath.fail_connection(
                    self, CLOSE_POLICY_VIOLATION, "too many fragments in one message"
                )
                return
            # The first frame is counted with the whole message.
            self.over_rate()
            if fastpath.failed(self):
                return
        if not fastpath.failed(self) and (
            0 < self.maxMessagePayloadSize < self.message_length
            or 0 < self.maxFramePayloadSize < length
        ):
            # Autobahn closes the connection with 1009 next.
            self.message_too_large()
        super().onMessageFrameBegin(length)

    def onMessageFrameData(self, payload: bytes) -> None:
        if not fastpath.failed(self):
            self.pending_message += payload

    def onMessageFrameEnd(self) -> None:
        # The frame's bytes are in pending_message already.
        pass

    def onMessageEnd(self) -> None:
        if not fastpath.failed(self):
            self.onMessage(bytes(self.pending_message), self.pending_binary)
        self.pending_message = None

    def message_too_large(self) -> None:
        """
        Called when a message is found over the size limit, just before the
        connection is closed with 1009.
        """

    def check_send(self, size: int) -> None:
        """
        :raises DeliveryRefused: The connection cannot take C{size} more bytes.
        """
        if self.state != _OPEN:
            raise DeliveryRefused("closed", "the connection is closing")
        if not self.send_buffer.admit(size):
            raise DeliveryRefused("buffer-full", "the peer is not reading")
