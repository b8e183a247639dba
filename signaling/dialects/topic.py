"""
The topic dialect at C{/ws/{topic}} (seed 001): the topic in the URL is a hub
room, joined on connect and left on close; peers have ULIDs; offers, answers
and ICE candidates go to one peer named by C{to}.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import DeliveryRefused, HubError, PeerNotFound
from ..hub import Member, PeerJoined, PeerLeft, Signal
from ..ids import IdShape
from .base import CLOSE_POLICY_VIOLATION, Session

NAME = "topic"
PREFIX = "/ws/"

#: Wire type → hub signal kind, and back.
_KINDS = {"offer": "offer", "answer": "answer", "ice-candidate": "candidate"}
_WIRE_TYPES = {kind: wire for wire, kind in _KINDS.items()}
#: Why the hub refused a join, as this dialect's error codes.
_JOIN_ERRORS = {
    "room-full": "room_full",
    "verified-only": "forbidden",
    "not-granted": "forbidden",
    "too-many-rooms": "too_many_rooms",
    "invalid-metadata": "invalid_metadata",
    "invalid-room-name": "invalid_topic",
}


#: The last room event rendered and its frame (see L{TopicSession.render}).
_last_rendered: list[Any] = [None, b""]


def _peer(member: Member) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": member.peer_id}
    if member.metadata:
        entry["metadata"] = member.metadata
    if member.verified_user_id is not None:
        # Only a token proves it; metadata is what the peer says.
        entry["userId"] = member.verified_user_id
    return entry


class TopicSession(Session):
    """
    A client of the topic dialect.
    """

    topic: str = ""
    # As the original server: a frame that is not JSON ends the connection
    # with 1007 (not_json_error stays None).
    not_object_error = ("invalid_type", "a message must be a JSON object")
    rate_limited_error = ("rate_limited", "too many messages; this one was discarded")
    token_expired_error = ("token_expired", "the token has expired")

    def opened(self) -> None:
        try:
            self.topic = self.hub.validate_room_name(self.handshake.path[len(PREFIX) :])
        except HubError as error:
            self._refuse("invalid_topic", error.message)
            return
        self.connect_peer(dialect=NAME, shape=IdShape.ULID)
        try:
            room = self.hub.join(self.peer, self.topic)
        except HubError as error:
            self.hub.disconnect(self.peer)
            self.peer = None
            self._refuse(_JOIN_ERRORS.get(error.reason, "join_refused"), error.message)
            return
        self.send_json({"type": "welcome", "selfId": self.peer.id})
        others = [_peer(m) for m in room.members.values() if m.peer_id != self.peer.id]
        try:
            self.send_join_reply(
                self.topic, orjson.dumps({"type": "peer-list", "peers": others})
            )
        except HubError as error:
            # The topic is the connection: a peer that cannot learn who is
            # there is not left in it half-joined.
            self.hub.disconnect(self.peer)
            self.peer = None
            self._refuse("peer_list_too_large", error.message)
        except DeliveryRefused:
            pass

    def closed(self) -> None:
        if self.peer is not None:
            self.hub.disconnect(self.peer)

    def message_received(self, message: dict) -> None:
        msg_id = message.get("msgId")
        wire_type = message.get("type")
        kind = _KINDS.get(wire_type) if isinstance(wire_type, str) else None
        if kind is None:
            self.send_error(
                "invalid_type", "type must be offer, answer or ice-candidate", msg_id
            )
            return
        target = message.get("to")
        if not isinstance(target, str) or not target:
            self.send_error(
                "missing_target", "'to' must name a peer of the topic", msg_id
            )
            return
        signal = Signal(
            kind=kind,
            sender=self.peer.id,
            room=self.topic,
            payload=message.get("payload"),
            extra=None if msg_id is None else {"msgId": msg_id},
        )
        try:
            self.hub.relay(self.peer, self.topic, target, signal)
        except PeerNotFound:
            self.send_error("target_not_found", "peer not found", msg_id)
        except DeliveryRefused as refused:
            self.send_error(
                "dropped", f"message not delivered ({refused.reason})", msg_id
            )

    def binary_received(self, data: bytes) -> None:
        # The original never looks at the frame type: JSON in a binary
        # frame is a message, anything else closes with 1007.
        self.text_received(data)

    def render(self, event: Any) -> bytes | None:
        if type(event) is Signal:
            wire_type = _WIRE_TYPES.get(event.kind)
            if wire_type is None:
                # The topic protocol relays WebRTC signaling only.
                return None
            frame: dict[str, Any] = {
                "type": wire_type,
                "from": event.sender,
                "payload": event.payload,
            }
            if event.extra and "msgId" in event.extra:
                frame["msgId"] = event.extra["msgId"]
            return orjson.dumps(frame)
        if type(event) is PeerJoined or type(event) is PeerLeft:
            # The hub hands one event to every member of the room in turn:
            # rendered for the first, the same frame for the rest.
            last = _last_rendered
            if last[0] is event:
                return last[1]
            if type(event) is PeerJoined:
                frame = {"type": "peer-joined", "peerId": event.member.peer_id}
                if event.member.metadata:
                    frame["metadata"] = event.member.metadata
                if event.member.verified_user_id is not None:
                    frame["userId"] = event.member.verified_user_id
                rendered = orjson.dumps(frame)
            else:
                rendered = orjson.dumps(
                    {"type": "peer-left", "peerId": event.member.peer_id}
                )
            last[0], last[1] = event, rendered
            return rendered
        return None

    def send_error(self, code: str, text: str, msg_id: Any = None) -> None:
        self.count_error(code)
        body = {"type": "error", "code": code, "message": text}
        if msg_id is not None:
            body["msgId"] = msg_id
        self.send_json(body)

    def _refuse(self, code: str, text: str) -> None:
        self.send_error(code, text)
        self.sink.fail(CLOSE_POLICY_VIOLATION, text)
