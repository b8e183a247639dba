"""
Socket.IO v5 over an Engine.IO session: the packet codec, the default
namespace's CONNECT (with its C{auth} payload), events, acknowledgements and
DISCONNECT, and the hub peer behind each connection.

The events themselves belong to two event sets, L{rooms} (000) and L{calls}
(002), which share this one namespace.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import orjson
from twisted.internet.interfaces import IDelayedCall
from zope.interface import implementer

from ...auth import (
    AuthPolicy,
    Identity,
    InvalidToken,
    MissingToken,
    TokenVerifier,
    unverified_claims,
    user_id_of,
)
from ...errors import DeliveryRefused, HubError, ReplyTooLarge
from ...hub import CloseReason, Hub, IPeerConnection, Peer, Profile, Room
from ...logs import Logger, log_connection
from ...turn import IceServers
from ..base import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    IEngineIOHandler,
    IEngineIOSession,
    ProtocolError,
    native_error_code,
)
from . import calls, rooms

CONNECT = 0
DISCONNECT = 1
EVENT = 2
ACK = 3
CONNECT_ERROR = 4
BINARY_EVENT = 5
BINARY_ACK = 6

#: The hub dialect of a connection that has joined no room yet.
NAME = "socketio"

#: Event sets, in the order their events are looked up.
EVENT_SETS = (rooms, calls)
_SETS_BY_NAME = {event_set.NAME: event_set for event_set in EVENT_SETS}
_HANDLERS = {
    event: (event_set, handler)
    for event_set in EVENT_SETS
    for event, handler in event_set.HANDLERS.items()
}


_ASCII_DIGITS = frozenset("0123456789")


class PacketError(Exception):
    """
    A Socket.IO packet cannot be decoded.
    """


@attrs.frozen
class Packet:
    type: int
    namespace: str = "/"
    data: Any = None
    id: int | None = None
    attachments: int = 0


def decode(text: str) -> Packet:
    """
    Parse one Socket.IO packet.

    :raises PacketError: It is not a well-formed packet.
    """
    if not text or not "0" <= text[0] <= "6":
        raise PacketError("unknown packet type")
    kind = int(text[0])
    position = 1
    attachments = 0
    if kind in (BINARY_EVENT, BINARY_ACK):
        dash = text.find("-", position)
        count = text[position:dash] if dash > 0 else ""
        if not _ASCII_DIGITS.issuperset(count) or not count or len(count) > 6:
            raise PacketError("bad attachment count")
        attachments = int(count)
        position = dash + 1
    namespace = "/"
    if text.startswith("/", position):
        comma = text.find(",", position)
        end = comma if comma >= 0 else len(text)
        namespace = text[position:end]
        position = end + 1 if comma >= 0 else end
    digits_end = position
    while digits_end < len(text) and text[digits_end] in _ASCII_DIGITS:
        digits_end += 1
    packet_id = None
    if digits_end > position:
        if digits_end - position > 15:
            raise PacketError("bad ack id")
        packet_id = int(text[position:digits_end])
    rest = text[digits_end:]
    data = None
    if rest:
        try:
            data = orjson.loads(rest)
        except orjson.JSONDecodeError:
            raise PacketError("bad JSON")
    if kind in (EVENT, BINARY_EVENT):
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise PacketError("an event must be a list starting with its name")
    elif kind in (ACK, BINARY_ACK):
        if packet_id is None or not isinstance(data, list):
            raise PacketError("an ack must have an id and a list")
    elif kind == CONNECT:
        if data is not None and not isinstance(data, dict):
            raise PacketError("the CONNECT payload must be an object")
    return Packet(kind, namespace, data, packet_id, attachments)


def encode(packet: Packet) -> str:
    head = str(packet.type)
    if packet.namespace != "/":
        head += packet.namespace + ","
    if packet.id is not None:
        head += str(packet.id)
    if packet.data is None:
        return head
    return head + orjson.dumps(packet.data).decode("utf-8")


@attrs.define
class SocketIOStats:
    """
    Counters of one site's Socket.IO connections, for C{/api/stats}.

    :ivar unhandled_events: Events no event set has a handler for; like any
        Socket.IO server we answer them with nothing.
    """

    unhandled_events: int = 0


@attrs.frozen
class SocketIOContext:
    """
    What every connection of one site shares.

    :ivar verifier: Checks tokens; L{None} when no key is configured.
    :ivar auth: What is done with tokens; with C{required}, a CONNECT
        without one is refused.
    :ivar ice_servers: The STUN and TURN servers clients are told of, in an
        C{ice-servers} event after CONNECT and again before they expire.
    """

    hub: Hub
    verifier: TokenVerifier | None = None
    auth: AuthPolicy = AuthPolicy()
    ice_servers: IceServers = IceServers()
    stats: SocketIOStats = attrs.Factory(SocketIOStats)


@implementer(IEngineIOHandler, IPeerConnection)
class SocketIOConnection:
    """
    One Socket.IO client on the default namespace; the hub sees it as one
    peer whatever transport carries it.

    :ivar peer: The hub peer, from CONNECT until DISCONNECT; its id is the
        client's C{socket.id}.
    :ivar user_id: Who the client is, from its token or C{auth.userId}.
    :ivar authenticated: Whether a token was verified with the configured key.
    :ivar claims: The verified token's claims; empty when nothing was
        verified.
    """

    _log = Logger()

    def __init__(self, engine: IEngineIOSession, context: SocketIOContext) -> None:
        self.engine = engine
        self.context = context
        self.hub = context.hub
        self.peer: Peer | None = None
        self.user_id: str | None = None
        self.authenticated = False
        self.claims: Mapping[str, Any] = {}
        self.room_grants: tuple[str, ...] | None = None
        self.max_rooms: int | None = None
        self._room_sets: dict[str, Any] = {}
        self._skip_attachments = 0
        # What the event being handled did: the room it joined, and whether
        # an answer to the client was too large to send.
        self._joined_now: str | None = None
        self._answer_too_large = False
        self._connect_call: IDelayedCall | None = engine.clock.callLater(
            engine.settings.connect_timeout, self._connect_missing
        )
        self._expiry_call: IDelayedCall | None = None
        self._ice_call: IDelayedCall | None = None

    @property
    def transport_name(self) -> str:
        return self.engine.transport

    @property
    def requires_token(self) -> bool:
        """
        Whether a key is configured, so that calls events need a verified
        token.
        """
        return self.context.verifier is not None

    def now(self) -> float:
        return self.hub.clock.seconds()

    # IEngineIOHandler

    def activity(self) -> None:
        if self.peer is not None:
            self.hub.touch(self.peer)

    def message_received(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            # Attachments of a refused binary event; anything else binary is
            # not ours to read either.
            if self._skip_attachments:
                self._skip_attachments -= 1
            return
        try:
            packet = decode(data)
        except PacketError as error:
            # What the reference server does with an undecodable packet.
            self._log.debug("bad Socket.IO packet: {error}", error=str(error))
            self.engine.close("parse error")
            return
        if packet.type == CONNECT:
            self._connect(packet)
        elif packet.type == DISCONNECT:
            if packet.namespace == "/":
                self._disconnect_peer()
        elif packet.type in (EVENT, BINARY_EVENT):
            self._event(packet)
        elif packet.type == BINARY_ACK:
            self._skip_attachments = packet.attachments
        # ACK (we ask for none) and CONNECT_ERROR (server-only) are ignored.

    def closed(self, reason: str) -> None:
        if self._connect_call is not None and self._connect_call.active():
            self._connect_call.cancel()
        self._connect_call = None
        self._disconnect_peer()

    # connecting

    def _connect_missing(self) -> None:
        self._connect_call = None
        if self.peer is None:
            self.engine.close("connect timeout")

    def _connect(self, packet: Packet) -> None:
        if packet.namespace != "/":
            self._send(
                Packet(
                    CONNECT_ERROR, packet.namespace, {"message": "Invalid namespace"}
                )
            )
            return
        if self.peer is not None:
            self._send(Packet(CONNECT, data={"sid": self.peer.id}))
            return
        self.user_id, self.authenticated, self.claims = None, False, {}
        self.room_grants = self.max_rooms = None
        try:
            self.user_id, self.authenticated, expires = self._identify(
                packet.data or {}
            )
        except InvalidToken as error:
            self._log.info("refused a Socket.IO connection: {error}", error=str(error))
            self.hub.counters.count(self.hub.counters.handshakes_refused, "auth")
            self._send(
                Packet(
                    CONNECT_ERROR, data={"message": f"Authentication failed: {error}"}
                )
            )
            return
        if self._connect_call is not None and self._connect_call.active():
            self._connect_call.cancel()
        self._connect_call = None
        self.peer = self.hub.connect(
            self,
            dialect=NAME,
            verified_user_id=self.user_id if self.authenticated else None,
            room_grants=self.room_grants,
            max_rooms=self.max_rooms,
        )
        log_connection(self._log, "opened", NAME, self.peer.id, self._address())
        if expires is not None:
            self._expiry_call = self.engine.clock.callLater(
                max(0.0, expires - self.now()), self._token_expired
            )
        self._send(Packet(CONNECT, data={"sid": self.peer.id}))
        # With --auth on, TURN credentials only for a valid token, as at
        # GET /api/ice-servers.
        if self.context.ice_servers.configured and (
            self.authenticated or not self.context.auth.checks_tokens
        ):
            self._push_ice_servers()

    def _push_ice_servers(self) -> None:
        """
        Send credentials for this peer, and again before they expire.
        """
        ice_servers = self.context.ice_servers
        clock = self.engine.clock
        self._ice_call = clock.callLater(
            ice_servers.refresh_in(), self._push_ice_servers
        )
        user = self.peer.verified_user_id or self.peer.id
        self.emit("ice-servers", {"iceServers": ice_servers.for_user(user, self.now())})

    def _identify(
        self, auth: Mapping[str, Any]
    ) -> tuple[str | None, bool, float | None]:
        """
        Who a connecting client is, whether a token proved it, and when that
        token stops being valid (its C{exp} plus the leeway L{TokenVerifier}
        allows; L{None} when nothing was verified or it has no C{exp}).

        :raises InvalidToken: A key is configured and the client presented a
            token that is not valid for it, or names no user; or it
            presented none and C{--auth required}.
        """
        token = auth.get("token")
        if token is None:
            token = self.engine.handshake.token
        if isinstance(token, str) and token.lower().startswith("bearer "):
            token = token[7:].strip()
        verifier = self.context.verifier
        if token is not None and token != "":
            if verifier is not None:
                identity = Identity.from_claims(verifier.verify(token, self.now()))
                self.claims = identity.claims
                self.room_grants = identity.room_grants
                self.max_rooms = identity.limits.max_rooms_per_peer
                return identity.user_id, True, identity.expires
            user_id = user_id_of(unverified_claims(token))
            if user_id is not None:
                return user_id, False, None
        elif self.context.auth.required:
            raise MissingToken("a token is required")
        claimed = auth.get("userId")
        if isinstance(claimed, str) and 0 < len(claimed) <= 256:
            return claimed, False, None
        return None, False, None

    def _token_expired(self) -> None:
        """
        The verified token has expired: the client is told as a refused
        connection is (C{CONNECT_ERROR}), then disconnected.
        """
        self._expiry_call = None
        self._log.info("ended a Socket.IO connection: its token expired")
        self._send(
            Packet(
                CONNECT_ERROR,
                data={
                    "message": "Authentication failed: the token has expired",
                    "data": {"code": "token-expired"},
                },
            )
        )
        self._send(Packet(DISCONNECT))
        self.engine.close("token expired", linger=True)

    def _disconnect_peer(self) -> None:
        # The token's expiry concerns this connection only: a client that
        # disconnects and connects again brings its token again.
        for call in (self._expiry_call, self._ice_call):
            if call is not None and call.active():
                call.cancel()
        self._expiry_call = self._ice_call = None
        if self.peer is not None:
            peer, self.peer = self.peer, None
            log_connection(self._log, "closed", NAME, peer.id, self._address())
            self.hub.disconnect(peer)
        self._room_sets.clear()

    def _address(self) -> str | None:
        return getattr(self.engine.handshake, "address", None)

    # events

    def _event(self, packet: Packet) -> None:
        name = packet.data[0]
        payload = packet.data[1] if len(packet.data) > 1 else None
        if packet.type == BINARY_EVENT:
            self._skip_attachments = packet.attachments
        if packet.namespace != "/" or self.peer is None:
            # The reference server drops events for a namespace the client
            # has not connected to.
            return
        entry = _HANDLERS.get(name)
        if entry is None:
            # As any Socket.IO server: an event nobody listens for gets no
            # answer. Calls clients emit webrtc:signaling-error ("busy") and
            # chat events on this socket, and take an error from us for a
            # failed call.
            self.context.stats.unhandled_events += 1
            self._log.debug("no handler for Socket.IO event {event}", event=name[:64])
            return
        event_set = entry[0]
        try:
            if packet.type == BINARY_EVENT:
                raise ProtocolError("unsupported", "binary events are not supported")
            self._joined_now, self._answer_too_large = None, False
            result = entry[1](self, payload)
            if self._answer_too_large and self._joined_now is not None:
                # The client cannot have learnt that it joined: undo it.
                self.leave(self._joined_now)
                raise ReplyTooLarge(
                    "the room's member list is too large to send; not joined"
                )
        except (ProtocolError, HubError) as error:
            code = (
                error.code
                if isinstance(error, ProtocolError)
                else native_error_code(error)
            )
            answer = event_set.error(self, name, payload, code, error.message)
            if packet.id is not None:
                self._ack(packet.id, answer)
            return
        if packet.id is not None:
            self._ack(packet.id, {"ok": True, **(result or {})})

    def _ack(self, ack_id: int, answer: Mapping[str, Any]) -> None:
        self._send(Packet(ACK, data=[answer], id=ack_id))

    # what event sets use

    def identity(self, claimed: object = None) -> dict[str, Any]:
        """
        Who this client is, as member metadata other peers are shown: its
        verified user id as C{userId}; with a key configured, a user id it
        merely claims as C{claimedUserId}, which is never shown as a
        C{userId}; without a key, where nothing can be verified, the
        claimed id as C{userId}, as the original servers did.

        :param claimed: A user id the client gave with the event, used when
            no token proved one.
        """
        if self.authenticated:
            return {"userId": self.user_id}
        claim = self._claim(claimed)
        if claim is None:
            return {}
        return {"claimedUserId" if self.requires_token else "userId": claim}

    def profile(self, claimed: object = None, **fields: Any) -> Profile:
        """
        Who this client is, for the other dialects: a user id it merely
        claims (the verified one is the hub peer's), and the event set's
        C{fields} of L{Profile}.

        :param claimed: As for L{identity}.
        """
        return Profile(claimed_user_id=self._claim(claimed), **fields)

    def _claim(self, claimed: object) -> Any:
        if self.authenticated:
            return None
        return claimed if claimed is not None else self.user_id

    def emit(self, name: str, payload: Any) -> None:
        """
        Send one event to this client; a client that cannot take it misses it.
        """
        self._send(Packet(EVENT, data=[name, payload]))

    def join(
        self,
        event_set_name: str,
        room_name: str,
        metadata: Mapping[str, Any],
        profile: Profile,
        room_metadata: Mapping[str, Any] | None = None,
    ) -> Room:
        """
        Join C{room_name}; the hub's events of that room are then rendered by
        the event set named C{event_set_name}.

        :param metadata: As for L{Hub.join}; native and topic peers see it.
        :param profile: As for L{Hub.join}; from L{profile}.
        """
        event_set = _SETS_BY_NAME[event_set_name]
        peer = self.peer
        # Other members see which event set this peer joined with.
        peer.dialect = event_set_name
        room = self.hub.join(peer, room_name, metadata, room_metadata, profile=profile)
        self._room_sets[room_name] = event_set
        self._joined_now = room_name
        return room

    def leave(self, room_name: str) -> None:
        self.hub.leave(self.peer, room_name)
        self._room_sets.pop(room_name, None)

    def event_set_of(self, room_name: str) -> Any:
        return self._room_sets.get(room_name)

    def _send(self, packet: Packet) -> None:
        try:
            self.engine.send_message(encode(packet))
        except DeliveryRefused as refused:
            # Our own client is going away or not reading, or the answer
            # is over its size limit (see _event).
            if refused.reason == "too-large":
                self._answer_too_large = True

    # IPeerConnection

    def deliver(self, event: Any) -> None:
        room_name = getattr(event, "room", None)
        event_set = self._room_sets.get(room_name) if room_name is not None else None
        if event_set is None:
            return
        try:
            rendered = event_set.render(self, event)
        except Exception:
            # The recipient's bug: it ends the recipient's session, not the
            # sender's.
            self._log.failure("rendering a hub event failed")
            self.close(CloseReason.FAILED)
            raise DeliveryRefused("closed", "the recipient failed")
        if rendered is None:
            return
        name, payload = rendered
        self.engine.send_message(encode(Packet(EVENT, data=[name, payload])))

    def close(self, reason: CloseReason) -> None:
        # Usually the hub has already forgotten the peer; after our own
        # bug (see deliver) it learns of it here.
        self._disconnect_peer()
        if reason is CloseReason.FAILED:
            # No DISCONNECT, which would tell the client not to come back:
            # our bug is no reason for it to stay away.
            self.engine.close(reason.value, linger=True, code=CLOSE_INTERNAL_ERROR)
            return
        if reason is CloseReason.GOING_AWAY:
            # No DISCONNECT either: the client is to come back, to another
            # node. Engine.IO's close packet tells it the server went.
            self.engine.close(reason.value, linger=True, code=CLOSE_GOING_AWAY)
            return
        self._send(Packet(DISCONNECT))
        self.engine.close(reason.value, linger=True)
