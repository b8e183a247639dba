"""
The two ways the wire protocols write a moment.
"""

from __future__ import annotations

import datetime


def milliseconds(seconds: float) -> int:
    """
    Seconds since the epoch as whole milliseconds since the epoch.
    """
    return int(seconds * 1000)


def iso8601(seconds: float) -> str:
    """
    Seconds since the epoch as ISO 8601 in UTC with milliseconds, the way
    JavaScript's C{Date.prototype.toISOString} writes it.
    """
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
