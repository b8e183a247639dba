"""
The C{calls} event set (seed 002): the C{webrtc:*} events of call rooms, with
room metadata, relays naming their sender and room isolation. Payload shapes
are in docs/dialects.rst.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import NotInRoom, PeerNotFound
from ...hub import Member, PeerJoined, PeerLeft, Room, Signal
from ...timefmt import iso8601
from ..base import ProtocolError, require_object, require_string
from .rooms import shown_user_id, user_fields

NAME = "calls"

#: Signal kinds, the event that carries each, and its payload field.
_EVENTS = {
    "offer": ("webrtc:offer", "offer"),
    "answer": ("webrtc:answer", "answer"),
    "candidate": ("webrtc:ice-candidate", "candidate"),
}
#: Fields passed along with a relay when the sender gave them.
_EXTRA_FIELDS = ("sdpMid", "sdpMLineIndex")

JOIN_ERROR = "webrtc:join-room-error"
LEAVE_ERROR = "webrtc:leave-room-error"
SIGNALING_ERROR = "webrtc:signaling-error"
#: The error event of each event that has its own; the others use
#: L{SIGNALING_ERROR}.
_ERROR_EVENTS = {"webrtc:join-room": JOIN_ERROR, "webrtc:leave-room": LEAVE_ERROR}

#: Token claims naming a participant, in order of preference.
_USERNAME_CLAIMS = ("username", "preferred_username")
_REAL_NAME_CLAIMS = ("realName", "name")


def _object(payload: Any) -> dict:
    return require_object(payload, "Invalid message: the event data must be an object")


def _string(data: Mapping[str, Any], field: str) -> str:
    return require_string(data, field, f"Invalid message: {field} is required")


def _authenticated(connection: Any) -> None:
    if connection.requires_token and not connection.authenticated:
        raise ProtocolError(
            "unauthenticated",
            "Authentication required: connect with auth.token to use webrtc events",
        )


def _first_string(values: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = values.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _names(connection: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """
    The C{username} and C{realName} a participant is shown with, which the
    original read from its user database: the verified token's claims, else
    what the join's C{metadata} says (all a tokenless client has). Their
    size is bounded with the token's and the metadata's.
    """
    claims = connection.claims
    return {
        "username": _first_string(claims, _USERNAME_CLAIMS)
        or _first_string(metadata, ("username",)),
        "realName": _first_string(claims, _REAL_NAME_CLAIMS)
        or _first_string(metadata, ("realName",)),
    }


def participant(connection: Any, member: Member) -> dict[str, Any]:
    """
    A member as C{connection}'s client sees it, whatever dialect it joined
    with.
    """
    profile = member.profile
    return {
        "socketId": member.peer_id,
        **user_fields(connection, member),
        "username": profile.username or profile.display_name,
        "realName": profile.real_name,
        "callType": profile.call_type,
        "metadata": dict(member.details),
        "joinedAt": iso8601(member.joined_at),
    }


def _room_metadata(room: Room, call_type: str) -> dict[str, Any]:
    # A room another dialect created has no call metadata of its own.
    metadata = dict(room.metadata)
    metadata.setdefault("callType", call_type)
    metadata.setdefault("createdAt", iso8601(room.created_at))
    metadata.setdefault("createdBy", None)
    return metadata


def join_room(connection: Any, payload: Any) -> dict:
    _authenticated(connection)
    data = _object(payload)
    if data.get("callRoomId") in (None, ""):
        raise ProtocolError("invalid-field", "callRoomId is required")
    room_name = connection.hub.validate_room_name(data["callRoomId"])
    call_type = data.get("callType", "audio")
    if not isinstance(call_type, str) or len(call_type) > 64:
        raise ProtocolError("invalid-field", "callType must be a short string")
    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise ProtocolError("invalid-field", "metadata must be an object")
    now = connection.now()
    room_metadata = {
        **metadata,
        "callType": call_type,
        "createdAt": iso8601(now),
        "createdBy": connection.user_id,
    }
    names = _names(connection, metadata)
    room = connection.peer.rooms.get(room_name)
    if room is None:
        profile = connection.profile(
            username=names["username"],
            real_name=names["realName"],
            call_type=call_type,
            details=metadata,
        )
        room = connection.join(
            NAME,
            room_name,
            {
                **connection.identity(),
                **names,
                "callType": call_type,
                "metadata": metadata,
            },
            profile,
            room_metadata,
        )
    # else: as the original, joining again answers with the room as it is.
    me = connection.peer.id
    reply = {
        "callRoomId": room_name,
        "participantCount": len(room.members),
        "existingParticipants": [
            participant(connection, m) for m in room.members.values() if m.peer_id != me
        ],
        "metadata": _room_metadata(room, call_type),
        "timestamp": iso8601(now),
    }
    connection.emit("webrtc:room-joined", reply)
    return reply


def leave_room(connection: Any, payload: Any) -> dict:
    _authenticated(connection)
    data = _object(payload)
    room_name = _string(data, "callRoomId")
    try:
        connection.leave(room_name)
    except NotInRoom:
        # As the original: leaving a room one is not in is no failure.
        pass
    reply = {"callRoomId": room_name, "timestamp": iso8601(connection.now())}
    connection.emit("webrtc:room-left", reply)
    return reply


def _relay(kind: str):
    field = _EVENTS[kind][1]

    def relay(connection: Any, payload: Any) -> None:
        _authenticated(connection)
        data = _object(payload)
        room_name = _string(data, "callRoomId")
        if field not in data:
            raise ProtocolError(
                "invalid-field", f"Invalid message: {field} is required"
            )
        peer = connection.peer
        extra = {
            name: data[name] for name in _EXTRA_FIELDS if data.get(name) is not None
        }
        signal = Signal(
            kind=kind,
            sender=peer.id,
            room=room_name,
            payload=data[field],
            extra=extra or None,
        )
        target = data.get("targetSocketId")
        try:
            if kind == "candidate" and target is None:
                connection.hub.broadcast(peer, room_name, signal)
            else:
                connection.hub.relay(
                    peer, room_name, _string(data, "targetSocketId"), signal
                )
        except NotInRoom:
            raise ProtocolError("not-in-room", "You are not in this call room")
        except PeerNotFound:
            raise ProtocolError(
                "peer-not-found", "Target participant is not in this call room"
            )

    return relay


HANDLERS = {
    "webrtc:join-room": join_room,
    "webrtc:leave-room": leave_room,
    "webrtc:offer": _relay("offer"),
    "webrtc:answer": _relay("answer"),
    "webrtc:ice-candidate": _relay("candidate"),
}


def render(connection: Any, event: Any) -> tuple[str, dict] | None:
    now = iso8601(connection.now())
    if type(event) is Signal:
        if event.kind not in _EVENTS:
            return None
        name, field = _EVENTS[event.kind]
        body: dict[str, Any] = {
            "callRoomId": event.room,
            "fromSocketId": event.sender,
            "fromUserId": shown_user_id(connection, event.sender_member),
            field: event.payload,
        }
        for extra in _EXTRA_FIELDS:
            if event.extra and event.extra.get(extra) is not None:
                body[extra] = event.extra[extra]
        body["timestamp"] = now
        return name, body
    if type(event) is PeerJoined:
        return "webrtc:participant-joined", {
            "callRoomId": event.room,
            "participant": participant(connection, event.member),
            "timestamp": now,
        }
    if type(event) is PeerLeft:
        return "webrtc:participant-left", {
            "callRoomId": event.room,
            "participant": participant(connection, event.member),
            "timestamp": now,
        }
    return None


def error(connection: Any, event: str, payload: Any, code: str, message: str) -> dict:
    """
    Tell the client an event failed: C{webrtc:join-room-error} for a join,
    C{webrtc:leave-room-error} for a leave, C{webrtc:signaling-error}
    otherwise, and the answer for its acknowledgement if it asked for one.
    """
    body: dict[str, Any] = {"error": message, "code": code, "event": event[:64]}
    if isinstance(payload, dict):
        for field in ("callRoomId", "targetSocketId"):
            if isinstance(payload.get(field), str):
                body[field] = payload[field][:256]
    body["timestamp"] = iso8601(connection.now())
    connection.emit(_ERROR_EVENTS.get(event, SIGNALING_ERROR), body)
    return {"ok": False, "code": code, "error": message}
