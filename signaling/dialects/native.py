"""
The native protocol at C{/signal}: JSON text frames, specified in
docs/protocol.rst.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from ..auth import Identity, InvalidToken
from ..errors import DeliveryRefused, HubError
from ..hub import Member, PeerJoined, PeerLeft, Profile, Signal
from ..logs import Logger
from ..resume import ISessionStore, ResumableConnection, ResumeSettings
from ..turn import IceServers
from .base import ProtocolError, Session, native_error_code, require_string

NAME = "native"
#: The C{reconnect} message's hint of how long to wait before coming back.
RECONNECT_DELAY_MS = 1000

#: Incoming relay types and the hub's signal kind for each.
_RELAY_KINDS = {
    "offer": "offer",
    "answer": "answer",
    "candidate": "candidate",
    "ice-candidate": "candidate",
    "message": "message",
}
#: Kinds that go to every other peer in the room when there is no C{to}.
_BROADCASTABLE = frozenset({"candidate", "message"})

_DELIVERY_ERRORS = {
    "too-large": ("message-too-large", "the message is too large for its recipient"),
    "buffer-full": ("dropped", "the recipient is not reading; message dropped"),
    "closed": ("peer-not-found", "the recipient has gone"),
}


def _member(member: Member) -> dict[str, Any]:
    entry = {"id": member.peer_id, "metadata": member.metadata}
    if member.verified_user_id is not None:
        # Only a token proves a user id; metadata.userId is a claim.
        entry["userId"] = member.verified_user_id
    return entry


def _string(metadata: dict, *keys: str) -> str | None:
    for key in keys:
        value = metadata.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _profile(metadata: dict) -> Profile:
    """
    What the other dialects show of a native member: the fields of its
    free-form metadata that have a meaning of their own.
    """
    user_id = metadata.get("userId")
    return Profile(
        display_name=_string(metadata, "display_name", "name"),
        username=_string(metadata, "username"),
        real_name=_string(metadata, "realName", "name"),
        claimed_user_id=user_id if isinstance(user_id, str) else None,
        endpoint=metadata.get("endpoint"),
    )


def _event_body(event: Any) -> dict | None:
    """
    The body of the frame that shows a hub event to a native client.
    """
    if type(event) is Signal:
        return {
            "type": event.kind,
            "room": event.room,
            "from": event.sender,
            "payload": event.payload,
        }
    if type(event) is PeerJoined:
        return {
            "type": "peer-joined",
            "room": event.room,
            "peer": _member(event.member),
        }
    if type(event) is PeerLeft:
        return {"type": "peer-left", "room": event.room, "peer": _member(event.member)}
    return None


def _last_seen(params: Any) -> int | None:
    """
    The C{last} of a resume: the highest C{seq} the client processed, or
    L{None} when it names none (or nonsense).
    """
    value = params.get("last", "")
    return int(value) if value.isascii() and value.isdigit() else None


@attrs.frozen
class Resume:
    """
    What a native session needs to offer session resume.
    """

    settings: ResumeSettings
    store: ISessionStore


class NativeSession(Session):
    """
    A client of the native protocol.

    :ivar resumable: The peer's hub connection across resumes, when resume
        is on; else the socket itself is the hub connection.
    """

    _log = Logger()
    not_json_error = ("invalid-json", "the frame is not valid JSON")
    too_large_error = ("message-too-large", "the message exceeds the size limit")
    rate_limited_error = ("rate-limited", "too many messages; this one was discarded")
    _ice_call: IDelayedCall | None = None
    resumable: ResumableConnection | None = None
    #: Whether L{prepare} looked the resume token up (C{_located} is then
    #: what it found).
    _prepared = False
    _located: ResumableConnection | None = None

    def __init__(
        self,
        *args: Any,
        ice_servers: IceServers = IceServers(),
        resume: Resume | None = None,
        **kwargs: Any,
    ) -> None:
        """
        :param ice_servers: The STUN and TURN servers clients are told of.
        :param resume: Session resume, or L{None} for none.
        """
        super().__init__(*args, **kwargs)
        self.ice_servers = ice_servers
        self.resume = resume

    def opened(self) -> None:
        resumed = False
        if self.resume is None:
            self.connect_peer(dialect=NAME)
        else:
            resumed = self._open_resumable()
        welcome: dict[str, Any] = {"type": "welcome", "peerId": self.peer.id}
        if self.peer.verified_user_id is not None:
            welcome["userId"] = self.peer.verified_user_id
        if self._gets_ice_servers:
            welcome["iceServers"] = self._fresh_ice_servers()
        if self.resumable is not None:
            welcome["resumeToken"] = self.resume.store.issue(self.resumable)
            welcome["resumed"] = resumed
            if resumed:
                welcome["rooms"] = sorted(self.peer.rooms)
                self._log.info("{peer} resumed its session", peer=self.peer.id)
        self.send_json(welcome)
        if resumed:
            self.resumable.replay()
        if self._awaiting_token:
            self._expiry_call = self.hub.clock.callLater(
                self.handshake.auth.message_deadline,
                self.end_unauthenticated,
                "unauthenticated",
                "no token was presented in time",
            )

    def prepare(self) -> Deferred | None:
        """
        Find the session the C{resume} token names, which may be held by
        another node of a cluster, before the handshake is answered.
        """
        token = self.handshake.params.get("resume") if self.resume is not None else None
        if not token:
            return None
        self._prepared = True
        located = self.resume.store.locate(token, self.resume.settings, _event_body)

        def found(session: ResumableConnection | None) -> None:
            self._located = session

        return located.addCallback(found)

    def _open_resumable(self) -> bool:
        """
        Take over the session the handshake's C{resume} token names, or
        start a new one.

        :return: Whether a session was resumed.
        """
        store = self.resume.store
        if self._prepared:
            resumable, self._located = self._located, None
        else:
            token = self.handshake.params.get("resume")
            resumable = store.claim(token) if token else None
        if resumable is not None and not self._may_resume(resumable):
            resumable = None
        if resumable is None:
            self.resumable = ResumableConnection(
                self.hub, store, self.resume.settings, _event_body
            )
            self.resumable.peer = self.connect_peer(
                connection=self.resumable, dialect=NAME
            )
            self.resumable.attach(self.sink)
            return False
        self.resumable = resumable
        self.peer = resumable.peer
        resumable.attach(self.sink, _last_seen(self.handshake.params))
        identity = self.handshake.identity
        if identity is not None:
            self.watch_expiry(identity)
        elif resumable.expires is not None:
            # The proof the session was made with still ends it.
            clock = self.hub.clock
            self._expiry_call = clock.callLater(
                max(0.0, resumable.expires - clock.seconds()),
                self.end_unauthenticated,
                *self.token_expired_error,
            )
        return True

    def _may_resume(self, resumable: ResumableConnection) -> bool:
        """
        Whether this connection may take C{resumable} over: not with a
        token for another user, nor once the token the session was proved
        with has expired.
        """
        identity = self.handshake.identity
        if identity is not None and identity.user_id != resumable.peer.verified_user_id:
            return False
        expires = resumable.expires
        return expires is None or expires > self.hub.clock.seconds()

    def watch_expiry(self, identity: Identity | None) -> None:
        super().watch_expiry(identity)
        if self.resumable is not None:
            # A resume of the session is bound by the same expiry.
            self.resumable.expires = identity.expires if identity is not None else None

    @property
    def _awaiting_token(self) -> bool:
        return self.handshake.auth.required and self.peer.verified_user_id is None

    @property
    def _gets_ice_servers(self) -> bool:
        # With --auth on, TURN credentials only for a valid token, as at
        # GET /api/ice-servers: they let their holder relay any traffic.
        unverified = self.peer.verified_user_id is None
        return self.ice_servers.configured and not (
            self.handshake.auth.checks_tokens and unverified
        )

    def going_away(self) -> None:
        # A resuming client comes back (to another node, behind a load
        # balancer) after the hint plus its own jitter.
        self.send_json(
            {"type": "reconnect", "reason": "going-away", "delayMs": RECONNECT_DELAY_MS}
        )
        if self.resumable is not None:
            self.resumable.told_to_reconnect(self.sink)

    def closed(self) -> None:
        if self.resumable is not None:
            # Only a lost socket is waited for: a client that closed it
            # meant to go, and one the server failed is not to come back.
            self.resumable.detach(self.sink, hold=self.sink.lost())
        elif self.peer is not None:
            self.hub.disconnect(self.peer)

    def stop_timers(self) -> None:
        super().stop_timers()
        call, self._ice_call = self._ice_call, None
        if call is not None and call.active():
            call.cancel()

    def _fresh_ice_servers(self) -> list[dict[str, Any]]:
        """
        Credentials for this peer, and a push of fresh ones before they
        expire.
        """
        clock = self.hub.clock
        if self._ice_call is not None and self._ice_call.active():
            self._ice_call.cancel()
        self._ice_call = clock.callLater(
            self.ice_servers.refresh_in(), self._push_ice_servers
        )
        user = self.peer.verified_user_id or self.peer.id
        return self.ice_servers.for_user(user, clock.seconds())

    def _push_ice_servers(self) -> None:
        self._ice_call = None
        self.send_json({"type": "ice-servers", "iceServers": self._fresh_ice_servers()})

    def message_received(self, message: dict) -> None:
        request_id = message.get("id")
        if request_id is not None and not isinstance(request_id, (str, int)):
            self.send_error("invalid-field", "'id' must be a string or a number")
            return
        message_type = message.get("type")
        handler = (
            self._handlers.get(message_type) if isinstance(message_type, str) else None
        )
        if handler is None:
            self.send_error(
                "unknown-type", f"unknown message type {message_type!r}", request_id
            )
            return
        if self._awaiting_token and handler not in (
            NativeSession._auth,
            NativeSession._ping,
        ):
            self.send_error(
                "unauthenticated", "send an auth message with a token first", request_id
            )
            return
        try:
            handler(self, message, request_id)
        except ProtocolError as error:
            self.send_error(error.code, error.message, request_id)
        except HubError as error:
            self.send_error(native_error_code(error), error.message, request_id)
        except Exception:
            # A bug: say so in-band, then let the WebSocket layer log it
            # and close with 1011.
            self.send_error("internal-error", "internal server error", request_id)
            raise

    # requests

    def _join(self, message: dict, request_id: Any) -> None:
        room_name = self.hub.validate_room_name(message.get("room"))
        metadata = message.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ProtocolError("invalid-field", "'metadata' must be an object")
        room = self.hub.join(
            self.peer, room_name, metadata, profile=_profile(metadata or {})
        )
        peers = [_member(m) for m in room.members.values() if m.peer_id != self.peer.id]
        joined = self._reply(
            {"type": "joined", "room": room_name, "peers": peers}, request_id
        )
        self.send_join_reply(room_name, orjson.dumps(joined))

    def _leave(self, message: dict, request_id: Any) -> None:
        room_name = require_string(message, "room")
        self.hub.leave(self.peer, room_name)
        self.send_json(self._reply({"type": "left", "room": room_name}, request_id))

    def _relay(self, message: dict, request_id: Any) -> None:
        kind = _RELAY_KINDS[message["type"]]
        room_name = require_string(message, "room")
        if "payload" not in message:
            raise ProtocolError("invalid-field", "'payload' is required")
        signal = Signal(
            kind=kind, sender=self.peer.id, room=room_name, payload=message["payload"]
        )
        target = message.get("to")
        if target is None:
            if kind not in _BROADCASTABLE:
                raise ProtocolError("invalid-field", f"'to' is required for {kind}")
            self.hub.broadcast(self.peer, room_name, signal)
            return
        if not isinstance(target, str):
            raise ProtocolError("invalid-field", "'to' must be a string")
        try:
            self.hub.relay(self.peer, room_name, target, signal)
        except DeliveryRefused as refused:
            code, text = _DELIVERY_ERRORS[refused.reason]
            raise ProtocolError(code, text)

    def _ping(self, message: dict, request_id: Any) -> None:
        self.send_json(self._reply({"type": "pong"}, request_id))

    def _ack(self, message: dict, request_id: Any) -> None:
        seq = message.get("seq")
        if type(seq) is not int or seq < 0:
            raise ProtocolError("invalid-field", "'seq' must be a whole number")
        if self.resumable is not None:
            self.resumable.acknowledge(seq)

    def _ice_servers(self, message: dict, request_id: Any) -> None:
        if not self.ice_servers.configured:
            raise ProtocolError(
                "unsupported", "this server has no STUN or TURN servers configured"
            )
        if not self._gets_ice_servers:
            raise ProtocolError(
                "unauthenticated", "send an auth message with a token first"
            )
        reply = {"type": "ice-servers", "iceServers": self._fresh_ice_servers()}
        self.send_json(self._reply(reply, request_id))

    def _auth(self, message: dict, request_id: Any) -> None:
        """
        Present a token, or a fresh one before the last expires; the user
        it names cannot change within a connection.
        """
        auth = self.handshake.auth
        if not auth.checks_tokens:
            raise ProtocolError(
                "unsupported", "this server does not check tokens (--auth off)"
            )
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("invalid-field", "'token' must be a non-empty string")
        try:
            identity = auth.identify(token, self.hub.clock.seconds())
        except InvalidToken as error:
            raise ProtocolError("invalid-token", str(error))
        peer = self.peer
        if (
            peer.verified_user_id is not None
            and peer.verified_user_id != identity.user_id
        ):
            raise ProtocolError(
                "forbidden", "the token is for another user than this connection's"
            )
        first = not self._gets_ice_servers
        peer.verified_user_id = identity.user_id
        peer.room_grants = identity.room_grants
        peer.max_rooms = identity.limits.max_rooms_per_peer
        self.watch_expiry(identity)
        reply: dict[str, Any] = {"type": "authenticated", "userId": identity.user_id}
        if identity.expires is not None:
            reply["expiresAt"] = identity.claims["exp"]
        self.send_json(self._reply(reply, request_id))
        if first and self._gets_ice_servers:
            self._push_ice_servers()

    _handlers: dict[str, Callable[["NativeSession", dict, Any], None]] = {
        "join": _join,
        "leave": _leave,
        "ping": _ping,
        "ack": _ack,
        "auth": _auth,
        "ice-servers": _ice_servers,
        **dict.fromkeys(_RELAY_KINDS, _relay),
    }

    # events

    def render(self, event: Any) -> bytes | None:
        body = _event_body(event)
        return None if body is None else orjson.dumps(body)

    # output

    @staticmethod
    def _reply(body: dict, request_id: Any) -> dict:
        if request_id is not None:
            body["id"] = request_id
        return body

    def send_error(self, code: str, text: str, request_id: Any = None) -> None:
        self.count_error(code)
        self.send_json(
            self._reply({"type": "error", "code": code, "message": text}, request_id)
        )
