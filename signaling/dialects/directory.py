"""
The directory dialect at C{/directory}: users register a userId with a public
key, discover each other's presence and relay offers, answers and ICE
candidates by userId. Specified in docs/dialects.rst.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

import orjson
from twisted.internet import defer
from twisted.internet.defer import Deferred

from ..directory import (
    Directory,
    InvalidField,
    Presence,
    Replaced,
    UserIdInUse,
    validate_public_key,
    validate_user_id,
)
from ..errors import DeliveryRefused, HubError
from ..hub import Hub, Member, PeerJoined, PeerLeft, Profile, Signal
from ..keyproof import UnsupportedKey, challenge_text, load_public_key, verify
from ..logs import Logger
from .base import NATIVE_ERROR_CODES, HandshakeInfo, IFrameSink, ProtocolError, Session

NAME = "directory"

#: Incoming relay types: the hub's signal kind and the field carrying it.
_RELAY = {
    "offer": ("offer", "offer"),
    "answer": ("answer", "answer"),
    "ice-candidate": ("candidate", "candidate"),
}
#: The hub's signal kinds this dialect can express: its type and field.
_RENDERED = {
    "offer": ("offer", "offer"),
    "answer": ("answer", "answer"),
    "candidate": ("ice-candidate", "candidate"),
}

_DELIVERY_ERRORS = {
    "too-large": ("message-too-large", "the message is too large for its recipient"),
    "buffer-full": ("dropped", "the recipient is not reading; message dropped"),
    "closed": ("user-not-online", "the recipient has gone"),
}

#: The hub's and the directory's refusal reasons as this dialect's codes.
_HUB_CODES = {
    **NATIVE_ERROR_CODES,
    **{
        reason: reason
        for reason in (
            "invalid-field",
            "not-registered",
            "user-not-online",
            "key-mismatch",
            "proof-required",
            "user-id-in-use",
        )
    },
}


def _code(error: HubError) -> str:
    return _HUB_CODES.get(error.reason, "internal-error")


#: Random bytes in a proof-of-key nonce.
NONCE_BYTES = 32


def _member(member: Member) -> dict[str, Any]:
    entry: dict[str, Any] = {"peerId": member.peer_id}
    # A directory registration, or a user id a token proved; never one
    # merely claimed.
    user_id = member.verified_user_id or member.profile.registered_user_id
    if user_id is not None:
        entry["userId"] = user_id
    return entry


def _required(message: dict, *fields: str) -> None:
    missing = [field for field in fields if message.get(field) is None]
    if missing:
        raise ProtocolError(
            "invalid-field", "Missing required fields: " + ", ".join(missing)
        )


class DirectorySession(Session):
    """
    A client of the directory dialect.

    :ivar _challenge: The userId, key and nonce of a registration waiting
        for its proof, or L{None}.
    :ivar _claim: The userId, key and proof of a registration waiting to
        learn whether the userId's holder is alive, or L{None}.
    """

    _log = Logger()
    not_json_error = ("invalid-json", "Invalid message format: not JSON")
    not_object_error = ("invalid-json", "Invalid message format: not a JSON object")
    too_large_error = ("message-too-large", "the message exceeds the size limit")
    rate_limited_error = ("rate-limited", "too many messages; this one was discarded")

    def __init__(
        self, hub: Hub, sink: IFrameSink, handshake: HandshakeInfo, directory: Directory
    ) -> None:
        super().__init__(hub, sink, handshake)
        self.directory = directory
        self._challenge: tuple[str, str, str] | None = None
        self._claim: tuple[str, str, bool] | None = None

    def opened(self) -> None:
        self.connect_peer(dialect=NAME)

    def closed(self) -> None:
        self._claim = None
        if self.peer is not None:
            self.directory.disconnected(self.peer)
            self.hub.disconnect(self.peer)

    def message_received(self, message: dict) -> None:
        message_type = message.get("type")
        handler = (
            self._handlers.get(message_type) if isinstance(message_type, str) else None
        )
        if handler is None:
            shown = (
                message_type if isinstance(message_type, str) else repr(message_type)
            )
            self.send_error("unknown-type", f"Unknown message type: {shown[:64]}")
            return
        try:
            handler(self, message)
        except ProtocolError as error:
            self.send_error(error.code, error.message)
        except HubError as error:
            self.send_error(_code(error), error.message)
        except Exception:
            # A bug: say so in-band, then let the WebSocket layer log it
            # and close with 1011.
            self.send_error("internal-error", "internal server error")
            raise

    # requests

    def _register(self, message: dict) -> None:
        _required(message, "userId", "publicKey")
        user_id = validate_user_id(message["userId"])
        verified = self.peer.verified_user_id
        if verified is not None and user_id != verified:
            # A token for one user cannot register another.
            raise ProtocolError(
                "forbidden", f"the token is for user {verified}, not {user_id}"
            )
        public_key = validate_public_key(message["publicKey"])
        proof = message.get("proof", False)
        if not isinstance(proof, bool):
            raise InvalidField("'proof' must be a boolean")
        self._claim = None
        if not proof:
            self._challenge = None
            self._take(user_id, public_key, verified=False)
            return
        try:
            load_public_key(public_key)
        except UnsupportedKey as error:
            raise ProtocolError(
                "unsupported-key", f"cannot check proofs for this key: {error}"
            )
        try:
            self.directory.check(self.peer, user_id, public_key, verified=True)
        except UserIdInUse:
            # Decided after the proof: the holder may be gone by then.
            pass
        nonce = base64.urlsafe_b64encode(self.hub.ids.random_bytes(NONCE_BYTES)).decode(
            "ascii"
        )
        self._challenge = (user_id, public_key, nonce)
        self.send_json({"type": "challenge", "userId": user_id, "nonce": nonce})

    def _register_proof(self, message: dict) -> None:
        _required(message, "userId", "signature")
        user_id = validate_user_id(message["userId"])
        signature = message["signature"]
        if not isinstance(signature, str) or len(signature) > 1024:
            raise InvalidField("'signature' must be a base64 string")
        challenge, self._challenge = self._challenge, None
        if challenge is None or challenge[0] != user_id:
            raise ProtocolError(
                "no-challenge", f"no registration of {user_id} is waiting for proof"
            )
        _, public_key, nonce = challenge
        if not verify(
            load_public_key(public_key), signature, challenge_text(user_id, nonce)
        ):
            raise ProtocolError(
                "proof-failed", "the signature does not match the public key"
            )
        self._claim = None
        self._take(user_id, public_key, verified=True)

    def _take(self, user_id: str, public_key: str, verified: bool) -> None:
        """
        Register C{user_id}; if a connection holds it and this registration
        cannot take it over, ping that holder and take it only if the
        holder does not answer within the directory's C{probe_seconds}.
        """
        if self.directory.clustered:
            self._take_in_cluster(user_id, public_key, verified)
            return
        try:
            self.directory.register(self.peer, user_id, public_key, verified)
        except UserIdInUse as in_use:
            holder_sink = in_use.holder.connection
            if not IFrameSink.providedBy(holder_sink):
                raise
            claim = self._claim = (user_id, public_key, verified)
            holder_sink.probe(self.directory.probe_seconds).addCallback(
                self._probed, claim, in_use
            ).addErrback(self._claim_failed)
            return
        self._registered(user_id, verified)

    def _probed(
        self, alive: bool, claim: tuple[str, str, bool], in_use: UserIdInUse
    ) -> None:
        if self._claim is not claim:
            # This connection closed, or asked for something else meanwhile.
            return
        self._claim = None
        user_id, public_key, verified = claim
        if alive:
            self.send_error(_code(in_use), in_use.message)
            return
        self._log.info(
            "{user} taken from a holder that did not answer a ping", user=user_id
        )
        try:
            self.directory.register(
                self.peer, user_id, public_key, verified, gone=in_use.holder
            )
        except HubError as error:
            self.send_error(_code(error), error.message)
            return
        self._registered(user_id, verified)

    def _take_in_cluster(
        self, user_id: str, public_key: str, verified: bool, gone: str | None = None
    ) -> None:
        """
        L{_take} across a cluster: Redis decides; a holder that may be gone
        is pinged by its own node.
        """
        claim = self._claim = (user_id, public_key, verified)
        registering = self.directory.register_in_cluster(
            self.peer, user_id, public_key, verified, gone
        )
        registering.addCallbacks(
            lambda _: self._registered(user_id, verified),
            self._refused_in_cluster,
            errbackArgs=(claim,),
        )
        registering.addErrback(self._claim_failed)

    def _refused_in_cluster(self, failure, claim: tuple[str, str, bool]) -> None:
        failure.trap(HubError)
        in_use = failure.value
        if not isinstance(in_use, UserIdInUse) or self._claim is not claim:
            if self._claim is claim:
                self._claim = None
            self.send_error(_code(in_use), in_use.message)
            return
        holder = in_use.holder
        if holder is not None and IFrameSink.providedBy(holder.connection):
            probing = holder.connection.probe(self.directory.probe_seconds)
        elif holder is None and in_use.node != self.directory.link.bus.node_id:
            probing = self.directory.probe_remote(in_use.node, in_use.peer_id)
        elif holder is None:
            # A peer of this node that has gone: its release is on its way.
            probing = defer.succeed(False)
        else:
            self._claim = None
            self.send_error(_code(in_use), in_use.message)
            return
        probing.addCallback(self._probed_in_cluster, claim, in_use).addErrback(
            self._claim_failed
        )

    def _probed_in_cluster(
        self, alive: bool, claim: tuple[str, str, bool], in_use
    ) -> None:
        if self._claim is not claim:
            return
        if alive:
            self._claim = None
            self.send_error(_code(in_use), in_use.message)
            return
        user_id, public_key, verified = claim
        self._log.info(
            "{user} taken from a holder that did not answer a ping", user=user_id
        )
        self._take_in_cluster(user_id, public_key, verified, gone=in_use.peer_id)

    def _claim_failed(self, failure) -> None:
        self._log.failure("deciding a userId claim failed", failure=failure)

    def _registered(self, user_id: str, verified: bool) -> None:
        reply: dict[str, Any] = {
            "type": "registered",
            "success": True,
            "userId": user_id,
        }
        if verified:
            reply["verified"] = True
        self.send_json(reply)

    def _unregister(self, message: dict) -> None:
        self._claim = None
        user_id = self.directory.unregister(self.peer)
        if user_id is None:
            raise ProtocolError("not-registered", "not registered")
        self.send_json({"type": "unregistered", "userId": user_id})

    def _discover(self, message: dict) -> None:
        _required(message, "userId")
        user_id = validate_user_id(message["userId"])
        watch = message.get("watch")
        if watch is not None and not isinstance(watch, bool):
            raise InvalidField("'watch' must be a boolean")
        # Presence notices only for those who ask: the original's client
        # warns about every message type it does not know.
        if watch:
            self.directory.watch(self.peer, user_id)
        elif watch is False:
            self.directory.unwatch(self.peer, user_id)
        if self.directory.clustered:
            looking = self.directory.lookup_in_cluster(user_id)
            looking.addCallback(
                lambda binding: self._discovered(
                    user_id,
                    binding is not None and binding.online,
                    binding and binding.public_key,
                    binding is not None and binding.proven,
                )
            ).addErrback(self._claim_failed)
            return
        registration = self.directory.lookup(user_id)
        self._discovered(
            user_id,
            registration is not None and registration.online,
            registration and registration.public_key,
            registration is not None and registration.verified,
        )

    def _discovered(
        self, user_id: str, online: bool, public_key: str | None, verified: bool
    ) -> None:
        reply: dict[str, Any] = {
            "type": "discover-response",
            "userId": user_id,
            "online": online,
        }
        if public_key is not None:
            reply["publicKey"] = public_key
            if verified:
                reply["verified"] = True
        self.send_json(reply)

    def _relay(self, message: dict) -> None:
        kind, field = _RELAY[message["type"]]
        _required(message, "to", field)
        target = validate_user_id(message["to"], "to")
        payload = message[field]
        if not isinstance(payload, (dict, str)):
            raise InvalidField(f"'{field}' must be an object or a string")
        room_name = message.get("room")
        try:
            if room_name is None:
                relaying = self.directory.relay(self.peer, target, kind, payload)
                if isinstance(relaying, Deferred):
                    relaying.addErrback(self._relay_failed).addErrback(
                        self._claim_failed
                    )
                return
            if not isinstance(room_name, str):
                raise InvalidField("'room' must be a string")
            # In a room, peers are addressed by hub peer id, as in every
            # other dialect.
            user_id = self.directory.user_of(self.peer)
            signal = Signal(
                kind=kind,
                sender=self.peer.id,
                room=room_name,
                payload=payload,
                extra={"fromUserId": user_id} if user_id is not None else None,
            )
            self.hub.relay(self.peer, room_name, target, signal)
        except DeliveryRefused as refused:
            code, text = _DELIVERY_ERRORS[refused.reason]
            raise ProtocolError(code, text)

    def _relay_failed(self, failure) -> None:
        failure.trap(HubError)
        error = failure.value
        if isinstance(error, DeliveryRefused):
            self.send_error(*_DELIVERY_ERRORS[error.reason])
        else:
            self.send_error(_code(error), error.message)

    def _join(self, message: dict) -> None:
        _required(message, "room")
        room_name = self.hub.validate_room_name(message["room"])
        user_id = self.directory.user_of(self.peer)
        metadata = {"userId": user_id} if user_id is not None else {}
        room = self.hub.join(
            self.peer, room_name, metadata, profile=Profile(registered_user_id=user_id)
        )
        peers = [_member(m) for m in room.members.values() if m.peer_id != self.peer.id]
        self.send_join_reply(
            room_name,
            orjson.dumps(
                {
                    "type": "joined",
                    "room": room_name,
                    "peerId": self.peer.id,
                    "peers": peers,
                }
            ),
        )

    def _leave(self, message: dict) -> None:
        _required(message, "room")
        room_name = self.hub.validate_room_name(message["room"])
        self.hub.leave(self.peer, room_name)
        self.send_json({"type": "left", "room": room_name})

    _handlers: dict[str, Callable[["DirectorySession", dict], None]] = {
        "register": _register,
        "register-proof": _register_proof,
        "unregister": _unregister,
        "discover": _discover,
        "join": _join,
        "leave": _leave,
        **dict.fromkeys(_RELAY, _relay),
    }

    # events

    def render(self, event: Any) -> bytes | None:
        if type(event) is Signal:
            rendered = _RENDERED.get(event.kind)
            if rendered is None:
                return None
            message_type, field = rendered
            if event.room is not None:
                body: dict[str, Any] = {
                    "type": message_type,
                    "room": event.room,
                    "from": event.sender,
                }
                from_user = (event.extra or {}).get("fromUserId")
                if isinstance(from_user, str):
                    body["fromUserId"] = from_user
                body["to"] = self.peer.id
                body[field] = event.payload
                return orjson.dumps(body)
            sender = (event.extra or {}).get("fromUserId", event.sender)
            to = self.directory.user_of(self.peer)
            return orjson.dumps(
                {"type": message_type, "from": sender, "to": to, field: event.payload}
            )
        if type(event) is PeerJoined:
            return orjson.dumps(
                {"type": "peer-joined", "room": event.room, **_member(event.member)}
            )
        if type(event) is PeerLeft:
            return orjson.dumps(
                {"type": "peer-left", "room": event.room, **_member(event.member)}
            )
        if type(event) is Presence:
            return orjson.dumps(
                {"type": "presence", "userId": event.user_id, "online": event.online}
            )
        if type(event) is Replaced:
            return orjson.dumps(
                {
                    "type": "error",
                    "code": "replaced",
                    "message": f"userId {event.user_id} was registered by another connection",
                }
            )
        return None

    # output

    def send_error(self, code: str, text: str) -> None:
        self.count_error(code)
        self.send_json({"type": "error", "message": text, "code": code})
