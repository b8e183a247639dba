"""
signaling: a WebRTC signaling server for Twisted.
"""

from .errors import HubError
from .hub import Hub, HubLimits, IPeerConnection, Member, Peer, PeerJoined, PeerLeft, Room, Signal
from .ids import IdShape, IdSource

__version__ = "0.1.0"

__all__ = [
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
    "Room",
    "Signal",
    "__version__",
]
