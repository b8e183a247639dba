"""
What the server counts for C{/metrics}: plain integers in dicts, so that
counting costs the relay no more than an increment. L{signaling.metrics}
reads them at scrape time.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import attrs


@attrs.define(eq=False)
class Counters:
    """
    Totals since the process started. No key grows with users: kinds,
    dialects, error codes and reasons are fixed, short sets.

    :ivar relayed: Signals relayed, by C{(kind, sender's dialect)}.
    :ivar errors: Errors sent to clients, by code.
    :ivar refused: Deliveries refused, by reason (C{buffer-full},
        C{closed}, C{too-large}, C{rate}: a sender over its rate limit).
    :ivar handshakes_refused: Connections refused before they opened, by
        reason (C{origin}, C{auth}).
    :ivar bytes_in: Bytes of WebSocket messages received.
    :ivar bytes_out: Bytes of WebSocket messages sent.
    :ivar relay_timer: Samples the relay's time for C{/metrics}, or None
        when nobody asks (no C{--metrics-port}, or C{--relay-time-sample 0}).
    """

    relayed: defaultdict[tuple[str, str], int] = attrs.Factory(lambda: defaultdict(int))
    errors: dict[str, int] = attrs.Factory(dict)
    refused: dict[str, int] = attrs.Factory(dict)
    handshakes_refused: dict[str, int] = attrs.Factory(dict)
    bytes_in: int = 0
    bytes_out: int = 0
    relay_timer: RelayTimer | None = None

    def count(self, table: dict, key) -> None:
        table[key] = table.get(key, 0) + 1


@attrs.define(eq=False)
class RelayTimer:
    """
    The time from a relayed frame's arrival to the write of its recipient's
    frame, for one frame in C{every}: the transport counts arriving frames
    down (C{countdown}), stamps the sampled one (L{arrived}) and, once the hub
    has handed the signal to a recipient and its frame is written, calls
    L{written}; all of it happens in one call, so one stamp at a time.

    :ivar every: One arriving frame in this many is timed (at least 1).
    :ivar seconds: The clock (C{IReactorTime.seconds}).
    :ivar observe: Takes the sender's dialect and the seconds measured.
    """

    every: int
    seconds: Callable[[], float]
    observe: Callable[[str, float], None]
    countdown: int = 0
    arrived_at: float | None = None
    dialect: str = ""

    def arrived(self, dialect: str) -> None:
        self.arrived_at = self.seconds()
        self.dialect = dialect

    def written(self) -> None:
        """
        A recipient's frame of the stamped signal is written: one sample
        per recipient, so a room's broadcast gives one for each.
        """
        if self.arrived_at is not None:
            self.observe(self.dialect, self.seconds() - self.arrived_at)

    def done(self) -> None:
        self.arrived_at = None
