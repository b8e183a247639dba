"""
What twistd does around the server's life: graceful drain on SIGTERM and
the systemd notification protocol (C{Type=notify}).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from .hub import CloseReason, Hub
from .logs import Logger

#: How often a drain looks whether every peer has gone.
DRAIN_POLL_SECONDS = 0.05


class DrainService(Service):
    """
    On stop (SIGTERM, C{systemctl stop}), tell every peer in its dialect
    that the server is going away, and wait for them to go, but no longer
    than C{timeout} seconds. The listeners stop accepting at the same time.
    """

    _log = Logger()

    def __init__(self, reactor: Any, hub: Hub, timeout: float) -> None:
        self.reactor = reactor
        self.hub = hub
        self.timeout = timeout
        self._draining = False
        self._waiters: list[Deferred] = []

    def drained(self) -> Deferred:
        """
        Fires once the drain is over: at once if none began.
        """
        if not self._draining:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred:
        Service.stopService(self)
        self._draining = True
        # Its own peers: a cluster's hub also holds mirrors of other nodes'.
        asked = self.hub.local_peer_count()
        self.hub.close_all(CloseReason.GOING_AWAY)
        self._log.info(
            "draining: told {count} peers the server is going away; waiting up to {timeout} s",
            count=asked,
            timeout=self.timeout,
        )
        started = self.reactor.seconds()
        done: Deferred = Deferred()

        def check() -> None:
            remaining = self.hub.local_peer_count()
            waited = self.reactor.seconds() - started
            if remaining and waited < self.timeout:
                return
            poll.stop()
            if remaining:
                self._log.warn(
                    "drain timeout: {count} peers still connected are dropped",
                    count=remaining,
                )
            else:
                self._log.info("drained in {seconds:.2f} s", seconds=waited)
            self._draining = False
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
            done.callback(None)

        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(DRAIN_POLL_SECONDS, now=True)
        return done


def notify_address(environ: Mapping[str, str]) -> str | bytes | None:
    """
    The address of $NOTIFY_SOCKET (an abstract one starts with C{@}).
    """
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """
    Seconds between C{WATCHDOG=1} pings: half of systemd's C{WatchdogSec},
    when it is set for this process.
    """
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


class SystemdNotifier(Service):
    """
    The few lines of systemd's notification protocol: C{READY=1} once the
    reactor runs (every port listens), C{WATCHDOG=1} from the reactor's own
    loop, C{STOPPING=1} when the drain begins. Without $NOTIFY_SOCKET it
    does nothing.
    """

    _log = Logger()

    def __init__(self, reactor: Any, environ: Mapping[str, str]) -> None:
        self.reactor = reactor
        self.address = notify_address(environ)
        self.watchdog_interval = watchdog_interval(environ)
        self._watchdog: LoopingCall | None = None

    def notify(self, message: str) -> None:
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.sendto(message.encode(), self.address)
        except OSError as error:
            self._log.warn(
                "cannot notify systemd ({message}): {error}",
                message=message,
                error=error.strerror,
            )

    def startService(self) -> None:
        Service.startService(self)
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        if not self.running:
            return
        self.notify("READY=1")
        if self.watchdog_interval:
            self._watchdog = LoopingCall(self.notify, "WATCHDOG=1")
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.watchdog_interval, now=True)

    def stopService(self) -> None:
        # The watchdog keeps pinging through the drain: the reactor still
        # runs, and it ends with the reactor.
        Service.stopService(self)
        self.notify("STOPPING=1")
