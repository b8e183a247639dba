"""
Errors the hub raises when a request cannot be carried out.

Each has a C{code}: the native protocol's error code, which other dialects map
to their own. They are the client's fault, never a bug, and a dialect answers
them in its own error format.
"""

from __future__ import annotations


class HubError(Exception):
    """
    A hub operation was refused.

    :cvar code: The native protocol's error code for this refusal.
    """

    code = "internal-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRoomName(HubError):
    code = "invalid-field"


class RoomFull(HubError):
    code = "room-full"


class TooManyRooms(HubError):
    code = "too-many-rooms"


class AlreadyInRoom(HubError):
    code = "already-in-room"


class VerifiedOnly(HubError):
    """
    The room was created by a verified peer and admits only verified peers.
    """

    code = "forbidden"


class NotInRoom(HubError):
    code = "not-in-room"


class PeerNotFound(HubError):
    code = "peer-not-found"


class InvalidMetadata(HubError):
    """
    Peer or room metadata exceeds its size, depth or element limit.
    """

    code = "invalid-metadata"


class ReplyTooLarge(HubError):
    """
    The answer to a join (the room's members and their metadata) is larger
    than the client's connection may carry; the join has been undone.
    """

    code = "reply-too-large"


class DeliveryRefused(HubError):
    """
    A connection could not take a message: it is closing, its outgoing buffer
    is full, or the message would exceed its size limit.

    :ivar reason: C{"closed"}, C{"buffer-full"} or C{"too-large"}.
    """

    code = "delivery-refused"

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
