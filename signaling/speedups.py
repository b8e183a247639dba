"""
Optional accelerators for Autobahn's per-frame work.

Autobahn 26 unmasks every incoming frame with a cffi masker that is set up
anew per frame (an import, two allocations and a finaliser: about 4 us, 6 %
of a relay's time); wsaccel's Cython masker does the same in under 2 us.
wsaccel's own C{patch_autobahn()} targets names that Autobahn no longer uses,
so we swap the factory Autobahn's protocol module calls. Without wsaccel
(the C{speedups} extra) that stays as it is.

Autobahn also pretty-prints its 50 protocol options into a debug message on
every new connection, whether or not debug logging is on (10 % of the time
taken to accept a connection); that formatting now happens only when our
log level is debug.
"""

from __future__ import annotations

import pprint

from . import logs

_installed: bool | None = None
#: wsaccel's masker factory once installed, else None.
create_masker = None


def install() -> bool:
    """
    Make Autobahn mask and unmask frames with wsaccel, if it is installed,
    and format its per-connection debug message only when debugging.

    :return: Whether wsaccel is in use.
    """
    global _installed, create_masker
    if _installed is not None:
        return _installed
    from autobahn.websocket import protocol

    protocol.pformat = _pformat_when_debugging
    try:
        from wsaccel.xormask import createXorMasker
    except ImportError:
        _installed = False
    else:
        protocol.create_xor_masker = create_masker = createXorMasker
        _installed = True
    return _installed


def _pformat_when_debugging(value: object) -> str:
    if logs.debugging():
        return pprint.pformat(value)
    return "(not formatted: debug logging is off)"
