"""
The token bucket behind C{--max-message-rate}, shared by every transport: a
WebSocket counts its frames, an Engine.IO session its packets.
"""

from __future__ import annotations


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
