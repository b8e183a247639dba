"""
Log levels for our own loggers.

twistd owns the log observer, so C{--log-level} cannot filter it; instead our
L{Logger} drops events below the configured level before they are emitted.
"""

from __future__ import annotations

import twisted.logger
import txaio
from twisted.logger import LogLevel

_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]
LEVEL_NAMES = ("debug", "info", "warn", "error")
_suppressed: frozenset = frozenset({LogLevel.debug})


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
        super().emit(level, format, **kwargs)
