"""
The C{rooms} event set (seed 000): C{join-room}, C{leave-room}, C{offer},
C{answer} and C{ice-candidate}; C{user-joined}, C{user-left} and
C{room-users}. Payload shapes are in docs/dialects.rst.
"""

from __future__ import annotations

from typing import Any

from ...hub import Member, PeerJoined, PeerLeft, Signal
from ..base import ProtocolError, require_object, require_string

NAME = "rooms"

#: Signal kinds, the event that carries each, and its payload field.
_EVENTS = {
    "offer": ("offer", "offer"),
    "answer": ("answer", "answer"),
    "candidate": ("ice-candidate", "candidate"),
}

MAX_USER_ID_LENGTH = 256


def _object(payload: Any) -> dict:
    return require_object(payload, "the event data must be an object")


def shown_user_id(connection: Any, member: Member | None) -> str | None:
    """
    What C{connection}'s client is shown as C{member}'s C{userId}: the id
    its token proved. Without a key nothing can be proved, so there it is
    the id the member claimed, as in the original servers.
    """
    if member is None:
        return None
    if member.verified_user_id is not None:
        return member.verified_user_id
    if connection.requires_token:
        return None
    return member.profile.unproved_user_id


def user_fields(connection: Any, member: Member) -> dict[str, Any]:
    """
    C{userId} as L{shown_user_id}, and a user id the member merely claimed
    as C{claimedUserId} where it is not shown as C{userId}.
    """
    fields: dict[str, Any] = {"userId": shown_user_id(connection, member)}
    if fields["userId"] is None:
        claim = member.profile.unproved_user_id
        if claim is not None:
            fields["claimedUserId"] = claim
    return fields


def _user(connection: Any, member: Member) -> dict[str, Any]:
    return {"socketId": member.peer_id, **user_fields(connection, member)}


def join_room(connection: Any, payload: Any) -> dict:
    data = _object(payload)
    room_name = connection.hub.validate_room_name(data.get("roomId"))
    claimed = None
    if not connection.authenticated and data.get("userId") is not None:
        claimed = data["userId"]
        if not isinstance(claimed, str) or len(claimed) > MAX_USER_ID_LENGTH:
            raise ProtocolError(
                "invalid-field", "'userId' must be a string of at most 256 characters"
            )
    room = connection.join(
        NAME, room_name, connection.identity(claimed), connection.profile(claimed)
    )
    users = [
        _user(connection, m)
        for m in room.members.values()
        if m.peer_id != connection.peer.id
    ]
    reply = {"roomId": room_name, "users": users}
    connection.emit("room-users", reply)
    return reply


def leave_room(connection: Any, payload: Any) -> dict:
    data = _object(payload)
    room_name = require_string(data, "roomId")
    connection.leave(room_name)
    return {"roomId": room_name}


def _relay(kind: str):
    field = _EVENTS[kind][1]

    def relay(connection: Any, payload: Any) -> None:
        data = _object(payload)
        room_name = require_string(data, "roomId")
        if field not in data:
            raise ProtocolError("invalid-field", f"{field!r} is required")
        signal = Signal(
            kind=kind, sender=connection.peer.id, room=room_name, payload=data[field]
        )
        if kind == "candidate" and data.get("targetId") is None:
            connection.hub.broadcast(connection.peer, room_name, signal)
            return
        connection.hub.relay(
            connection.peer, room_name, require_string(data, "targetId"), signal
        )

    return relay


HANDLERS = {
    "join-room": join_room,
    "leave-room": leave_room,
    "offer": _relay("offer"),
    "answer": _relay("answer"),
    "ice-candidate": _relay("candidate"),
}


def render(connection: Any, event: Any) -> tuple[str, dict] | None:
    if type(event) is Signal:
        if event.kind not in _EVENTS:
            return None
        name, field = _EVENTS[event.kind]
        return name, {
            "roomId": event.room,
            "senderId": event.sender,
            "userId": shown_user_id(connection, event.sender_member),
            field: event.payload,
        }
    if type(event) is PeerJoined:
        return "user-joined", {"roomId": event.room, **_user(connection, event.member)}
    if type(event) is PeerLeft:
        return "user-left", {"roomId": event.room, **_user(connection, event.member)}
    return None


def error(connection: Any, event: str, payload: Any, code: str, message: str) -> dict:
    """
    Tell the client an event failed: an C{error} event, and the answer for
    its acknowledgement if it asked for one.
    """
    body = {"event": event[:64], "code": code, "message": message}
    connection.emit("error", body)
    return {"ok": False, "code": code, "error": message}
