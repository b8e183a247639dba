"""
Per-address accounting: how many connections one client address holds and
how fast it opens new ones.

One L{AddressLimiter} serves the whole site: the HTTP channel takes a slot for
each TCP connection, and Engine.IO takes one for each polling session (a
session outlives the requests that carry it). The clock is injected.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from ..logs import Logger


@functools.lru_cache(maxsize=1024)
def truncate_address(address: str) -> str:
    """
    An address as it may appear in a log at info level: an IPv4 address
    without its last byte, an IPv6 address cut to its /48. Each connection's
    open and close lines ask; most ask again for an address seen before.
    """
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return "(not an IP address)"
    if parsed.version == 4:
        return str(parsed).rsplit(".", 1)[0] + ".x"
    return str(ipaddress.ip_network(f"{parsed}/48", strict=False))


def _forwarded_for(value: str) -> list[str]:
    """
    The C{for=} addresses of a C{Forwarded} header (RFC 7239), in order.
    """
    found = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, node = pair.strip().partition("=")
            if name.strip().lower() != "for":
                continue
            node = node.strip().strip('"')
            if node.startswith("["):
                node = node[1 : node.find("]")]
            elif node.count(":") == 1:
                node = node.partition(":")[0]
            found.append(node)
    return found


def forwarded_address(
    peer: str, forwarded: list[str], x_forwarded_for: list[str], trusted_hops: int
) -> str:
    """
    The client's address: the socket peer's, or, behind C{trusted_hops}
    proxies, the one the outermost trusted proxy saw.

    Each proxy appends the address it received the request from, so the
    client is the C{trusted_hops}-th entry from the right; entries left of it
    are whatever the client chose to send. A request with fewer entries did
    not come through the proxies: its peer address counts.

    :param forwarded: The values of every C{Forwarded} header; they win over
        C{X-Forwarded-For}.
    """
    if trusted_hops <= 0:
        return peer
    if forwarded:
        chain = _forwarded_for(",".join(forwarded))
    else:
        chain = [
            entry.strip()
            for entry in ",".join(x_forwarded_for).split(",")
            if entry.strip()
        ]
    if len(chain) < trusted_hops:
        return peer
    return chain[-trusted_hops]


@attrs.frozen
class AddressLimits:
    """
    :ivar max_connections: Connections (and polling sessions) one address may
        hold at once; 0 for unlimited.
    :ivar max_new_per_second: New connections (and sessions) one address may
        open a second, with bursts of twice that; 0 for unlimited.
    :ivar log_interval: Seconds between two log lines about refusals.
    """

    max_connections: int = 512
    max_new_per_second: float = 50
    log_interval: float = 10


@attrs.define(eq=False)
class _Address:
    held: int = 0
    tokens: float = 0.0
    updated: float = 0.0
    forget_call: Any = None


@attrs.define(eq=False)
class Slot:
    """
    One connection or session of an address; release it when it ends.
    """

    _release: Callable[[], None] | None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class AddressLimiter:
    """
    Counts the connections of each client address and the rate at which it
    opens them.

    :ivar refused: Refusals since the last log line.
    """

    _log = Logger()

    def __init__(
        self, clock: IReactorTime, limits: AddressLimits = AddressLimits()
    ) -> None:
        self.clock = clock
        self.limits = limits
        self._addresses: dict[str, _Address] = {}
        self._last_logged: float | None = None
        self.refused = 0

    @property
    def _burst(self) -> float:
        return max(1.0, 2 * self.limits.max_new_per_second)

    def held(self, address: str) -> int:
        """
        How many slots C{address} holds.
        """
        entry = self._addresses.get(address)
        return entry.held if entry else 0

    def acquire(self, address: str) -> Slot | None:
        """
        A new connection from C{address}: its slot, or None when the address
        is over a limit (the refusal is logged, at most once an interval).
        """
        now = self.clock.seconds()
        entry = self._addresses.get(address)
        if entry is None:
            entry = _Address(tokens=self._burst, updated=now)
        limits = self.limits
        if limits.max_connections and entry.held >= limits.max_connections:
            self._refuse(address, "connections", entry)
            return None
        if limits.max_new_per_second:
            entry.tokens = min(
                self._burst,
                entry.tokens + (now - entry.updated) * limits.max_new_per_second,
            )
            entry.updated = now
            if entry.tokens < 1:
                self._refuse(address, "new connections a second", entry)
                return None
            entry.tokens -= 1
        entry.held += 1
        self._addresses[address] = entry
        return Slot(lambda: self._release(address, entry))

    def _release(self, address: str, entry: _Address) -> None:
        entry.held -= 1
        if entry.held <= 0 and entry.forget_call is None:
            self._forget_when_full(address, entry)

    def _forget_when_full(self, address: str, entry: _Address) -> None:
        # An idle address is kept until its bucket has refilled, so that
        # closing connections quickly does not reset its rate; then it is
        # dropped, so that addresses seen once do not accumulate.
        entry.forget_call = None
        if entry.held > 0 or self._addresses.get(address) is not entry:
            return
        rate = self.limits.max_new_per_second
        missing = 0.0
        if rate:
            missing = (
                self._burst
                - entry.tokens
                - (self.clock.seconds() - entry.updated) * rate
            )
        if missing > 0:
            entry.forget_call = self.clock.callLater(
                missing / rate, self._forget_when_full, address, entry
            )
        else:
            del self._addresses[address]

    def _refuse(self, address: str, limit: str, entry: _Address) -> None:
        self.refused += 1
        now = self.clock.seconds()
        if (
            self._last_logged is not None
            and now - self._last_logged < self.limits.log_interval
        ):
            return
        self._last_logged = now
        self._log.warn(
            "refused connections from {address}: over the limit of {limit} "
            "({refused} refused since the last such line)",
            address=truncate_address(address),
            limit=limit,
            refused=self.refused,
        )
        self.refused = 0


__all__ = [
    "AddressLimiter",
    "AddressLimits",
    "Slot",
    "forwarded_address",
    "truncate_address",
]
