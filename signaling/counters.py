"""
What the server counts for C{/metrics}: plain integers in dicts, so that
counting costs the relay no more than an increment. L{signaling.metrics}
reads them at scrape time.
"""

from __future__ import annotations

from collections import defaultdict

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
    """

    relayed: defaultdict[tuple[str, str], int] = attrs.Factory(lambda: defaultdict(int))
    errors: dict[str, int] = attrs.Factory(dict)
    refused: dict[str, int] = attrs.Factory(dict)
    handshakes_refused: dict[str, int] = attrs.Factory(dict)
    bytes_in: int = 0
    bytes_out: int = 0

    def count(self, table: dict, key) -> None:
        table[key] = table.get(key, 0) + 1
