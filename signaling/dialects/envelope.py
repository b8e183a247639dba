"""
The envelope dialect at C{/ws}: upper-case message types in one snake_case
envelope (C{type}, C{peer_id}, C{target_id}, C{room_id}, C{payload},
C{timestamp}, C{request_id}), 8-hex-character peer ids, one room at a time.

Specified in docs/dialects.rst.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson

from ..errors import AlreadyInRoom, DeliveryRefused, HubError, NotInRoom, PeerNotFound
from ..hub import Member, PeerJoined, PeerLeft, Profile, Room, Signal
from ..ids import IdShape
from ..timefmt import milliseconds
from .base import ProtocolError, Session

NAME = "envelope"

INVALID_MESSAGE = "INVALID_MESSAGE"
ROOM_NOT_FOUND = "ROOM_NOT_FOUND"
PEER_NOT_FOUND = "PEER_NOT_FOUND"
NOT_IN_ROOM = "NOT_IN_ROOM"
ALREADY_IN_ROOM = "ALREADY_IN_ROOM"
ROOM_FULL = "ROOM_FULL"
INTERNAL_ERROR = "INTERNAL_ERROR"
RATE_LIMITED = "RATE_LIMITED"
UNAUTHORIZED = "UNAUTHORIZED"

#: The hub's refusal reasons as envelope error codes; others are
#: INVALID_MESSAGE.
_HUB_CODES = {
    "room-full": ROOM_FULL,
    "already-in-room": ALREADY_IN_ROOM,
    "not-in-room": NOT_IN_ROOM,
    "peer-not-found": PEER_NOT_FOUND,
    "verified-only": UNAUTHORIZED,
    "not-granted": UNAUTHORIZED,
}

_DELIVERY_ERRORS = {
    "closed": (PEER_NOT_FOUND, "target peer has gone"),
    "too-large": (INVALID_MESSAGE, "the message is too large for its target"),
    "buffer-full": (INTERNAL_ERROR, "the target is not reading; message dropped"),
}

#: Envelope relay types and the hub's signal kinds, both ways.
_RELAY_KINDS = {"OFFER": "offer", "ANSWER": "answer", "CANDIDATE": "candidate"}
_RELAY_TYPES = {kind: message_type for message_type, kind in _RELAY_KINDS.items()}


def _envelope(message_type: str, **fields: Any) -> dict[str, Any]:
    """
    An envelope with the empty fields left out, as the original server's
    C{omitempty} tags do.
    """
    body: dict[str, Any] = {"type": message_type}
    for name, value in fields.items():
        if value is not None and value != "":
            body[name] = value
    return body


def _display_name(member: Member) -> str | None:
    # A peer of another dialect may have no name, only a user id.
    profile = member.profile
    return (
        profile.display_name
        or member.verified_user_id
        or profile.unproved_user_id
        or None
    )


def _peer_info(member: Member) -> dict[str, Any]:
    info: dict[str, Any] = {"peer_id": member.peer_id}
    name = _display_name(member)
    if name is not None:
        info["display_name"] = name
    if member.profile.endpoint is not None:
        info["endpoint"] = member.profile.endpoint
    if member.verified_user_id is not None:
        # Only a token proves it; a display_name is what the peer says.
        info["user_id"] = member.verified_user_id
    info["joined_at"] = milliseconds(member.joined_at)
    return info


def _peer_list(room: Room) -> dict[str, Any]:
    return {
        "room_id": room.name,
        "peers": [_peer_info(member) for member in room.members.values()],
    }


def _join_metadata(payload: Any) -> dict[str, Any]:
    """
    The member metadata of a C{JOIN}'s payload: C{display_name} and
    C{endpoint}, when given.
    """
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ProtocolError(INVALID_MESSAGE, "payload must be an object")
    metadata: dict[str, Any] = {}
    display_name = payload.get("display_name")
    if display_name is not None:
        if not isinstance(display_name, str):
            raise ProtocolError(INVALID_MESSAGE, "display_name must be a string")
        if display_name:
            metadata["display_name"] = display_name
    endpoint = payload.get("endpoint")
    if endpoint is not None:
        if not isinstance(endpoint, dict):
            raise ProtocolError(INVALID_MESSAGE, "endpoint must be an object")
        metadata["endpoint"] = endpoint
    return metadata


class EnvelopeSession(Session):
    """
    A client of the envelope dialect. It is in at most one room: joining
    another leaves the first.
    """

    not_json_error = (INVALID_MESSAGE, "invalid JSON")
    not_object_error = (INVALID_MESSAGE, "a message must be a JSON object")
    too_large_error = (INVALID_MESSAGE, "the message exceeds the size limit")
    # The document has no code for this; ours, in its style.
    rate_limited_error = (RATE_LIMITED, "too many messages; this one was discarded")
    token_expired_error = (UNAUTHORIZED, "the token has expired")

    def opened(self) -> None:
        self.connect_peer(dialect=NAME, shape=IdShape.HEX8)
        self._send(
            _envelope("ACK", peer_id=self.peer.id, payload={"message": "connected"})
        )

    def closed(self) -> None:
        if self.peer is not None:
            self.hub.disconnect(self.peer)

    def message_received(self, message: dict) -> None:
        request_id = message.get("request_id")
        if request_id is not None and (
            isinstance(request_id, bool) or not isinstance(request_id, (str, int))
        ):
            self.send_error(
                INVALID_MESSAGE, "request_id must be a string or an integer"
            )
            return
        message_type = message.get("type")
        handler = (
            self._handlers.get(message_type) if isinstance(message_type, str) else None
        )
        if handler is None:
            shown = repr(message_type)[:64]
            self.send_error(
                INVALID_MESSAGE, f"unknown message type: {shown}", request_id
            )
            return
        try:
            handler(self, message, request_id)
        except ProtocolError as error:
            self.send_error(error.code, error.message, request_id)
        except DeliveryRefused as refused:
            code, text = _DELIVERY_ERRORS[refused.reason]
            self.send_error(code, text, request_id, details=refused.reason)
        except HubError as error:
            self.send_error(
                _HUB_CODES.get(error.reason, INVALID_MESSAGE), error.message, request_id
            )
        except Exception:
            # A bug: tell the client in its own terms, then let the
            # WebSocket layer log it and close with 1011.
            self.send_error(INTERNAL_ERROR, "internal error", request_id)
            raise

    # requests

    def _current_room(self) -> str | None:
        return next(iter(self.peer.rooms), None)

    def _join(self, message: dict, request_id: Any) -> None:
        room_name = message.get("room_id")
        if not room_name:
            raise ProtocolError(INVALID_MESSAGE, "room_id is required")
        self.hub.validate_room_name(room_name)
        metadata = _join_metadata(message.get("payload"))
        current = self._current_room()
        if current == room_name:
            raise AlreadyInRoom("already in this room")
        # One room at a time; a refused join keeps the client where it was.
        profile = Profile(
            display_name=metadata.get("display_name"), endpoint=metadata.get("endpoint")
        )
        room = self.hub.join(
            self.peer, room_name, metadata, instead_of=current, profile=profile
        )
        ack = _envelope(
            "ACK",
            peer_id=self.peer.id,
            room_id=room_name,
            payload=_peer_list(room),
            request_id=request_id,
        )
        self.send_join_reply(room_name, self._frame(ack))

    def _leave(self, message: dict, request_id: Any) -> None:
        current = self._current_room()
        if current is None:
            raise NotInRoom("not in any room")
        self.hub.leave(self.peer, current)
        self._send(
            _envelope(
                "ACK",
                peer_id=self.peer.id,
                room_id=current,
                payload={"message": "left room"},
                request_id=request_id,
            )
        )

    def _discover(self, message: dict, request_id: Any) -> None:
        room_name = message.get("room_id")
        if room_name is None or room_name == "":
            room_name = self._current_room()
            if room_name is None:
                raise NotInRoom("no room specified and not in any room")
        else:
            self.hub.validate_room_name(room_name)
        # Only the caller's own room: the member list holds display names
        # and endpoints, which are for the room's members, not for anyone
        # who can guess (or try) its name.
        room = self.peer.rooms.get(room_name)
        if room is None:
            raise NotInRoom("DISCOVER lists only the room you are in")
        self._send(
            _envelope(
                "PEER_LIST",
                peer_id=self.peer.id,
                room_id=room_name,
                payload=_peer_list(room),
                request_id=request_id,
            )
        )

    def _relay(self, message: dict, request_id: Any) -> None:
        target = message.get("target_id")
        if not isinstance(target, str) or not target:
            raise ProtocolError(INVALID_MESSAGE, "target_id is required")
        room_name = self._current_room()
        if room_name is None:
            raise NotInRoom("join a room before signaling")
        signal = Signal(
            kind=_RELAY_KINDS[message["type"]],
            sender=self.peer.id,
            room=room_name,
            payload=message.get("payload"),
            extra={"request_id": request_id} if request_id is not None else None,
        )
        try:
            self.hub.relay(self.peer, room_name, target, signal)
        except PeerNotFound:
            raise ProtocolError(PEER_NOT_FOUND, "target peer not found")

    def _keep_alive(self, message: dict, request_id: Any) -> None:
        # The WebSocket layer has already marked the peer active.
        self._send(_envelope("ACK", peer_id=self.peer.id, request_id=request_id))

    _handlers: dict[str, Callable[["EnvelopeSession", dict, Any], None]] = {
        "JOIN": _join,
        "LEAVE": _leave,
        "DISCOVER": _discover,
        "KEEP_ALIVE": _keep_alive,
        **dict.fromkeys(_RELAY_KINDS, _relay),
    }

    # events

    def render(self, event: Any) -> bytes | None:
        if type(event) is Signal:
            message_type = _RELAY_TYPES.get(event.kind)
            if message_type is None:
                # Free-form "message" signals have no envelope type.
                return None
            extra = event.extra or {}
            return self._frame(
                _envelope(
                    message_type,
                    peer_id=event.sender,
                    target_id=self.peer.id if self.peer is not None else None,
                    room_id=event.room,
                    payload=event.payload,
                    request_id=extra.get("request_id"),
                )
            )
        if type(event) is PeerJoined:
            return self._frame(
                _envelope(
                    "PEER_JOINED",
                    peer_id=event.member.peer_id,
                    room_id=event.room,
                    payload=_peer_info(event.member),
                )
            )
        if type(event) is PeerLeft:
            return self._frame(
                _envelope("PEER_LEFT", peer_id=event.member.peer_id, room_id=event.room)
            )
        return None

    # output

    def _frame(self, body: dict[str, Any]) -> bytes:
        body["timestamp"] = milliseconds(self.hub.clock.seconds())
        return orjson.dumps(body)

    def _send(self, body: dict[str, Any]) -> None:
        self.send_frame(self._frame(body))

    def send_error(
        self, code: str, text: str, request_id: Any = None, details: str | None = None
    ) -> None:
        self.count_error(code)
        payload = {"code": code, "message": text}
        if details:
            payload["details"] = details
        self._send(_envelope("ERROR", payload=payload, request_id=request_id))
