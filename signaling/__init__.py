"""
signaling: a WebRTC signaling server for Twisted.
"""

from .errors import HubError
from .hub import CloseReason, Hub, HubLimits, IPeerConnection, Member, Peer, PeerJoined, PeerLeft, Profile, Room, Signal
from .ids import IdShape, IdSource

__version__ = "0.1.0"

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
