"""
Timeouts of one length on one reactor call: what every new connection arms
and nearly always cancels (the request deadline, the opening handshake's
timeout), without a reactor call of its own.

Twisted keeps its timed calls in a heap whose comparisons run in Python;
with thousands of connections each holding a ping timer, arming and
cancelling a call per handshake was the largest single function of a
connection ramp (docs/performance.rst, "Cheaper handshakes, third round").
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .logs import Logger

_log = Logger()


class Deadline:
    """
    One call of a L{DeadlineQueue}; cancelling it again, or after it ran,
    is no error.
    """

    __slots__ = ("_queue", "_call")

    def __init__(self, queue: DeadlineQueue, call: Callable[[], Any]) -> None:
        self._queue = queue
        self._call = call

    def active(self) -> bool:
        return self in self._queue._due

    def cancel(self) -> None:
        self._queue._cancel(self)


class DeadlineQueue:
    """
    Calls each due C{period} seconds after it was made, in the order they
    were made (so the first waiting is always the next due), on one reactor
    call armed for the first: making or cancelling one is a dict entry.

    The reactor call, when it finds the first call not due yet (the calls
    before it were cancelled), is armed again for that one; it is cancelled
    when no call waits.
    """

    def __init__(self, period: float, clock: Callable[[], IReactorTime]) -> None:
        """
        :param period: Seconds from making a call to running it.
        :param clock: The reactor to run on (asked each time it is armed:
            Autobahn's timers follow C{txaio.config.loop}).
        """
        self.period = period
        self._clock = clock
        self._due: dict[Deadline, float] = {}
        self._timer: IDelayedCall | None = None

    def call_later(self, func: Callable[..., Any], *args: Any) -> Deadline:
        """
        Call C{func(*args)} C{period} seconds from now, unless cancelled.
        """
        deadline = Deadline(self, (lambda: func(*args)) if args else func)
        clock = self._clock()
        self._due[deadline] = clock.seconds() + self.period
        if self._timer is None:
            self._timer = clock.callLater(self.period, self._expire)
        return deadline

    def _cancel(self, deadline: Deadline) -> None:
        due = self._due
        if due.pop(deadline, None) is not None and not due:
            timer, self._timer = self._timer, None
            if timer is not None and timer.active():
                timer.cancel()

    def _expire(self) -> None:
        self._timer = None
        clock = self._clock()
        now = clock.seconds()
        due = self._due
        while due:
            deadline = next(iter(due))
            when = due[deadline]
            if when > now:
                self._timer = clock.callLater(when - now, self._expire)
                return
            del due[deadline]
            try:
                deadline._call()
            except Exception:
                _log.failure("a timeout failed")
