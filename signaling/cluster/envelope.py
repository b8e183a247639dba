"""
What travels between nodes: an L{Envelope} (a hub event addressed to peers
on another node) and a room member's blob in the directory, both as small
versioned byte strings.

Version 1 is the byte C{0x01} followed by a JSON array; a node that reads a
version it does not know drops the message with a warning instead of
guessing, so nodes of two releases can share a bus during an upgrade.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import orjson

from ..hub import Member, Profile

VERSION = 1
_PREFIX = bytes([VERSION])


class InvalidEnvelope(ValueError):
    """
    Bytes from the bus that are not an envelope of a known version.
    """


@attrs.frozen
class Envelope:
    """
    A hub event on its way to peers on another node.

    :ivar kind: What happened: a signal's kind (C{"offer"}, C{"message"},
        ...), or a room event (C{"joined"}, C{"left"}); the glue that
        receives it decides.
    :ivar room: The room it concerns, or L{None} for a direct message.
    :ivar sender: The sending peer as its rooms see it, or L{None} for
        events of no peer.
    :ivar targets: The peer ids on the receiving node it is for.
    :ivar payload: The signal's payload, passed on unchanged (anything JSON
        can carry).
    :ivar extra: Dialect fields carried along, or L{None}.
    """

    kind: str
    room: str | None
    sender: Member | None
    targets: tuple[str, ...]
    payload: Any = None
    extra: Mapping[str, Any] | None = None


def member_to_list(member: Member) -> list:
    return [
        member.peer_id,
        member.dialect,
        dict(member.metadata),
        member.joined_at,
        member.verified_user_id,
        attrs.asdict(member.profile, recurse=False),
    ]


_PROFILE_FIELDS = frozenset(field.name for field in attrs.fields(Profile))


def member_from_list(fields: Any) -> Member:
    if not isinstance(fields, list) or len(fields) != 6:
        raise InvalidEnvelope("a member has six fields")
    peer_id, dialect, metadata, joined_at, verified_user_id, profile = fields
    if not isinstance(peer_id, str) or not isinstance(dialect, str):
        raise InvalidEnvelope("a member's peer id and dialect are strings")
    if not isinstance(metadata, dict) or not isinstance(joined_at, (int, float)):
        raise InvalidEnvelope("a member's metadata is an object, joined_at a number")
    if verified_user_id is not None and not isinstance(verified_user_id, str):
        raise InvalidEnvelope("a member's verified user id is a string or null")
    if not isinstance(profile, dict) or not _PROFILE_FIELDS.issuperset(profile):
        raise InvalidEnvelope("a member's profile is an object of Profile's fields")
    try:
        typed_profile = Profile(**profile)
    except (TypeError, ValueError) as error:
        raise InvalidEnvelope(f"a member's profile is not valid: {error}")
    return Member(
        peer_id, dialect, metadata, float(joined_at), verified_user_id, typed_profile
    )


def encode_member(member: Member) -> bytes:
    """
    The blob the directory keeps for a room member: what every node needs
    to render it in any dialect.
    """
    return _PREFIX + orjson.dumps(member_to_list(member))


def decode_member(data: bytes) -> Member:
    """
    :raises InvalidEnvelope: C{data} is not a member blob of a known version.
    """
    return member_from_list(_body(data))


def encode_envelope(envelope: Envelope) -> bytes:
    """
    :raises TypeError: The payload or extra holds something JSON cannot
        carry.
    """
    return _PREFIX + orjson.dumps(envelope_to_fields(envelope))


def envelope_to_fields(envelope: Envelope) -> list:
    """
    C{envelope} as the JSON array of its encoding (for a batch of them).
    """
    sender = None if envelope.sender is None else member_to_list(envelope.sender)
    extra = None if envelope.extra is None else dict(envelope.extra)
    return [
        envelope.kind,
        envelope.room,
        sender,
        list(envelope.targets),
        envelope.payload,
        extra,
    ]


def decode_envelope(data: bytes) -> Envelope:
    """
    :raises InvalidEnvelope: C{data} is not an envelope of a known version.
    """
    return envelope_from_fields(_body(data))


def envelope_from_fields(fields: Any) -> Envelope:
    """
    :raises InvalidEnvelope: C{fields} is not what L{envelope_to_fields}
        makes.
    """
    if not isinstance(fields, list) or len(fields) != 6:
        raise InvalidEnvelope("an envelope has six fields")
    kind, room, sender, targets, payload, extra = fields
    if not isinstance(kind, str) or (room is not None and not isinstance(room, str)):
        raise InvalidEnvelope("an envelope's kind and room are strings")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise InvalidEnvelope("an envelope's targets are a list of peer ids")
    if extra is not None and not isinstance(extra, dict):
        raise InvalidEnvelope("an envelope's extra is an object or null")
    return Envelope(
        kind,
        room,
        None if sender is None else member_from_list(sender),
        tuple(targets),
        payload,
        extra,
    )


def _body(data: bytes) -> Any:
    if not data or data[0] != VERSION:
        version = data[0] if data else None
        raise InvalidEnvelope(f"unknown version {version!r}")
    try:
        body = orjson.loads(data[1:])
    except orjson.JSONDecodeError as error:
        raise InvalidEnvelope(f"not JSON: {error}") from None
    if not isinstance(body, list):
        raise InvalidEnvelope("the body is a JSON array")
    return body
