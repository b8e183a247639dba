"""
Log levels for our own loggers.

twistd owns the log observer, so C{--log-level} cannot filter it; instead our
L{Logger} drops events below the configured level before they are emitted.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import IO

import orjson
import twisted.logger
import txaio
from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import directlyProvides

_ORDER = [
    LogLevel.debug,
    LogLevel.info,
    LogLevel.warn,
    LogLevel.error,
    LogLevel.critical,
]
LEVEL_NAMES = ("debug", "info", "warn", "error")
FORMATS = ("text", "json")
_suppressed: frozenset = frozenset({LogLevel.debug})
#: Every level there is (Twisted's Logger.emit checks against them).
LEVELS = frozenset(LogLevel.iterconstants())


def set_level(name: str) -> None:
    """
    Drop events below level C{name} (one of L{LEVEL_NAMES}), ours and Autobahn's.
    """
    global _suppressed
    threshold = _ORDER.index(LogLevel.levelWithName(name))
    _suppressed = frozenset(_ORDER[:threshold])
    txaio.set_global_log_level(name)


def debugging() -> bool:
    """
    Whether debug messages are emitted.
    """
    return LogLevel.debug not in _suppressed


class Logger(twisted.logger.Logger):
    """
    A L{twisted.logger.Logger} that honours L{set_level}.
    """

    def emit(self, level, format=None, **kwargs):
        if level in _suppressed:
            return
        if level not in LEVELS or "log_trace" in kwargs:
            super().emit(level, format, **kwargs)
            return
        # Twisted's emit, without its check of the level against a list of
        # all levels, sorted on every event: about a tenth of logging a
        # connection's line.
        kwargs.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time.time(),
        )
        self.observer(kwargs)


#: Keys of an event that are the logging system's own, not the event's fields.
_NOT_FIELDS = frozenset(
    {"format", "message", "system", "isError", "why", "failure", "time"}
)


def json_observer(output: IO[str] | None = None) -> ILogObserver:
    """
    An observer writing one JSON object per line to C{output} (stdout):
    C{time}, C{level}, C{namespace}, the formatted C{message}, and the
    event's own fields (for journald and log shippers).
    """
    # Taken now: once logging begins, twistd points sys.stdout at the log.
    stream = output if output is not None else sys.stdout

    def observe(event: dict) -> None:
        level = event.get("log_level")
        record = {
            "time": datetime.datetime.fromtimestamp(
                event.get("log_time") or 0, datetime.timezone.utc
            ).isoformat(timespec="milliseconds"),
            "level": level.name
            if level is not None
            else ("error" if event.get("isError") else "info"),
            "namespace": event.get("log_namespace") or event.get("system"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if (
                not key.startswith("log_")
                and key not in _NOT_FIELDS
                and key not in record
            ):
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        stream.write(orjson.dumps(record, default=str).decode("utf-8") + "\n")
        stream.flush()

    directlyProvides(observe, ILogObserver)
    return observe


truncate_address = None


def log_connection(
    log: Logger,
    what: str,
    dialect: str,
    peer_id: str,
    address: str | None,
    code: int | None = None,
) -> None:
    """
    Log a peer's connection C{what} (C{opened} or C{closed}) at info: its
    dialect, peer id and address, truncated (never the full address at info).
    """
    global truncate_address
    if truncate_address is None:
        # Imported once, on the first line (the module imports this one).
        from .transports.addresses import truncate_address
    log.emit(
        LogLevel.info,
        "{dialect} connection {what}: peer {peer} from {address}",
        what=what,
        dialect=dialect,
        peer=peer_id,
        address=truncate_address(address) if address else "(unknown)",
        code=code,
    )
