"""
signaling: a WebRTC signaling server for Twisted.

The layers (docs/architecture.rst): L{transports} (where bytes arrive and
leave) know no dialect; L{dialects} (wire protocols) know no transport beyond
the frame-sink interface; the hub (L{hub}) knows neither. C{tap} builds the
service and C{web} the routes; nothing imports C{tap}. C{tests/test_layers.py}
checks it.
"""

from .errors import HubError
from .hub import (
    CloseReason,
    Hub,
    HubLimits,
    IPeerConnection,
    Member,
    Peer,
    PeerJoined,
    PeerLeft,
    Profile,
    Room,
    Signal,
)
from .ids import IdShape, IdSource


def _version() -> str:
    # One version: pyproject.toml's, as the installed metadata has it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("signaling")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

__all__ = [
    "CloseReason",
    "Hub",
    "HubError",
    "HubLimits",
    "IPeerConnection",
    "IdShape",
    "IdSource",
    "Member",
    "Peer",
    "PeerJoined",
    "PeerLeft",
    "Profile",
    "Room",
    "Signal",
    "__version__",
]
