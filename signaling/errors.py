"""
Errors the hub raises when a request cannot be carried out.

Each has a C{reason}, in no dialect's words, which every dialect maps to its
own error code. They are the client's fault, never a bug, and a dialect
answers them in its own error format.
"""

from __future__ import annotations


class HubError(Exception):
    """
    A hub operation was refused.

    :cvar reason: Why it was refused, in no dialect's words.
    """

    reason = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRoomName(HubError):
    reason = "invalid-room-name"


class PeerIdInUse(HubError):
    """
    A peer registered under an id allocated elsewhere has the id of a peer
    the hub already has.
    """

    reason = "peer-id-in-use"


class RoomFull(HubError):
    reason = "room-full"


class TooManyRooms(HubError):
    reason = "too-many-rooms"


class AlreadyInRoom(HubError):
    reason = "already-in-room"


class VerifiedOnly(HubError):
    """
    The room was created by a verified peer and admits only verified peers.
    """

    reason = "verified-only"


class NotGranted(HubError):
    """
    The peer's token grants it other rooms than this one.
    """

    reason = "not-granted"


class NotInRoom(HubError):
    reason = "not-in-room"


class PeerNotFound(HubError):
    reason = "peer-not-found"


class InvalidMetadata(HubError):
    """
    Peer or room metadata exceeds its size, depth or element limit.
    """

    reason = "invalid-metadata"


class ReplyTooLarge(HubError):
    """
    The answer to a join (the room's members and their metadata) is larger
    than the client's connection may carry; the join has been undone.
    """

    reason = "reply-too-large"


class DeliveryRefused(HubError):
    """
    A connection could not take a message: it is closing, its outgoing buffer
    is full, or the message would exceed its size limit.

    :ivar reason: C{"closed"}, C{"buffer-full"} or C{"too-large"}.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
