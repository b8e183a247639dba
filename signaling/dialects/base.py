"""
What every dialect shares: the session interface the WebSocket layer drives,
and the error a client's bad input raises.

It is also the one module of L{signaling.dialects} a transport may import:
the interfaces between the two (L{IFrameSink}, L{IEngineIOSession},
L{IEngineIOHandler}), L{HandshakeInfo}, the close codes and L{Session}, the
base class the WebSocket binding drives.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from zope.interface import Attribute, Interface

from ..auth import AuthPolicy, Identity
from ..errors import DeliveryRefused, HubError, ReplyTooLarge
from ..hub import Hub, IPeerConnection, Peer

#: WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
#: Our own: the hub removed the peer (stale, replaced by a newer connection).
CLOSE_REMOVED = 4000
#: Our own: the client's token expired, or it presented none in time.
CLOSE_UNAUTHENTICATED = 4001


#: The hub's refusal reasons (L{HubError.reason}) as the error codes of the
#: native protocol, whose vocabulary the directory and Socket.IO dialects
#: share.
NATIVE_ERROR_CODES = {
    "invalid-room-name": "invalid-field",
    "room-full": "room-full",
    "too-many-rooms": "too-many-rooms",
    "already-in-room": "already-in-room",
    "verified-only": "forbidden",
    "not-granted": "forbidden",
    "not-in-room": "not-in-room",
    "peer-not-found": "peer-not-found",
    "invalid-metadata": "invalid-metadata",
    "reply-too-large": "reply-too-large",
    "closed": "delivery-refused",
    "buffer-full": "delivery-refused",
    "too-large": "delivery-refused",
}


def native_error_code(error: HubError) -> str:
    """
    C{error}'s code in the native protocol's vocabulary.
    """
    return NATIVE_ERROR_CODES.get(error.reason, "internal-error")


class ProtocolError(Exception):
    """
    The client sent something the dialect cannot accept; it is answered in
    the dialect's error format and the connection stays open.

    :ivar code: The dialect's own error code.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def require_object(payload: Any, message: str = "the data must be an object") -> dict:
    """
    :raises ProtocolError: C{invalid-payload}, unless C{payload} is a dict.
    """
    if not isinstance(payload, dict):
        raise ProtocolError("invalid-payload", message)
    return payload


def require_string(
    data: Mapping[str, Any], field: str, message: str | None = None
) -> str:
    """
    :raises ProtocolError: C{invalid-field}, unless C{data[field]} is a
        non-empty string.
    """
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise ProtocolError(
            "invalid-field", message or f"{field!r} must be a non-empty string"
        )
    return value


@attrs.frozen
class HandshakeInfo:
    """
    What a session may know about the WebSocket opening handshake.

    :ivar path: The request path, percent-decoded.
    :ivar params: The query parameters, first value of each.
    :ivar address: The client's IP address, where it counts against a
        per-address limit.
    :ivar token: The token the request presented (C{?token=}, else
        C{Authorization: Bearer}); never shown in a repr, as it may be logged.
    :ivar auth: What the server does with tokens.
    :ivar identity: What the presented token proved, once checked against
        C{auth}; L{None} when nothing was proved.
    """

    path: str
    params: Mapping[str, str] = attrs.Factory(dict)
    origin: str | None = None
    address: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    auth: AuthPolicy = AuthPolicy()
    identity: Identity | None = None


class IFrameSink(Interface):
    """
    The WebSocket connection as a session sees it.
    """

    def send(frame: bytes) -> None:
        """
        Send one text frame.

        :raises DeliveryRefused: The connection cannot take it.
        """

    def fail(code: int, reason: str) -> None:
        """
        Close the connection with a WebSocket close code, including the
        protocol-level ones (1003, 1007, 1009, 1011).
        """

    def lost() -> bool:
        """
        Whether the connection, now closed, was lost (the network or the
        client's process went away) rather than closed: the client sent no
        close frame and the server did not fail it (a protocol error, a
        frame too large, a bug).
        """

    def probe(timeout: float) -> Deferred:
        """
        Ask the client whether it is still there (a WebSocket ping).

        :param timeout: Seconds the client has to answer.
        :return: A L{Deferred} that fires with C{True} as soon as the client
            answers (or sends anything), or with C{False} once C{timeout}
            passed without an answer or the connection closed.
        """


class IEngineIOSession(Interface):
    """
    An Engine.IO session as the dialect on top of it (Socket.IO) sees it,
    whatever carries it (polling or a WebSocket); the Engine.IO transport
    implements it, so the dialect never imports the transport.
    """

    clock = Attribute("The L{IReactorTime} of the session's timers.")
    settings = Attribute("Its settings; C{connect_timeout} is the dialect's.")
    handshake = Attribute("The L{HandshakeInfo} of the request that opened it.")
    transport = Attribute('What carries it now: C{"polling"} or C{"websocket"}.')

    def send_message(data: str) -> None:
        """
        Send one message packet.

        :raises DeliveryRefused: The session cannot take it.
        """

    def close(reason: str, linger: bool = False, code: int = CLOSE_NORMAL) -> None:
        """
        End the session.

        :param linger: Keep it until the client's next poll has collected
            what was queued (a close the server decides).
        :param code: The WebSocket close code, if a WebSocket carries it.
        """


class IEngineIOHandler(Interface):
    """
    What runs on top of an Engine.IO session (Socket.IO): the transport
    calls it.
    """

    def message_received(data: str | bytes) -> None:
        """
        A message packet arrived (text, or binary data).
        """

    def activity() -> None:
        """
        The client did something (a packet, a pong).
        """

    def closed(reason: str) -> None:
        """
        The session is over.
        """


class Session:
    """
    One client's conversation in one dialect: turns its frames into hub
    calls and hub events into its frames.

    The WebSocket layer calls L{opened}, L{text_received},
    L{binary_received}, L{too_large} and L{closed}; it asks L{render} for the
    frame of each hub event delivered to the peer.

    A dialect of JSON objects implements L{message_received} and
    L{send_error} and names its errors for what every such dialect answers
    alike; L{text_received} decodes each frame.
    """

    #: The hub peer, once the dialect has connected one; the WebSocket layer
    #: marks it active on every frame and pong, for the stale-peer sweep.
    peer: Peer | None = None

    #: The code and text of the error for a frame that is not JSON; L{None}
    #: closes the connection with 1007 instead.
    not_json_error: tuple[str, str] | None = None
    #: The code and text of the error for JSON that is not an object.
    not_object_error: tuple[str, str] = (
        "invalid-json",
        "a message must be a JSON object",
    )
    #: The code and text of the error sent before a frame over the size
    #: limit closes the connection; L{None} sends none.
    too_large_error: tuple[str, str] | None = None
    #: The code and text of the error for a frame over the rate limit;
    #: L{None} sends none.
    rate_limited_error: tuple[str, str] | None = None
    #: The code and text of the error sent before the connection closes
    #: with L{CLOSE_UNAUTHENTICATED} because the token expired.
    token_expired_error: tuple[str, str] = ("token-expired", "the token has expired")
    _expiry_call: IDelayedCall | None = None

    def __init__(self, hub: Hub, sink: IFrameSink, handshake: HandshakeInfo) -> None:
        self.hub = hub
        self.sink = sink
        self.handshake = handshake

    def prepare(self) -> Deferred | None:
        """
        Called before the handshake is answered; the handshake waits for
        the Deferred this may return (it fires with L{None}).
        """
        return None

    def opened(self) -> None:
        raise NotImplementedError()

    def connect_peer(
        self, connection: IPeerConnection | None = None, **kwargs: Any
    ) -> Peer:
        """
        Connect this client's hub peer with what its token proved (see
        L{HandshakeInfo.identity}), and end the connection when that proof
        expires.

        :param connection: The peer's hub connection, if not the socket
            itself (a session that outlives its sockets).
        :param kwargs: As for L{Hub.connect}.
        """
        identity = self.handshake.identity
        self.peer = self.hub.connect(
            self.sink if connection is None else connection,
            verified_user_id=identity.user_id if identity is not None else None,
            room_grants=identity.room_grants if identity is not None else None,
            max_rooms=identity.limits.max_rooms_per_peer
            if identity is not None
            else None,
            **kwargs,
        )
        self.watch_expiry(identity)
        return self.peer

    def watch_expiry(self, identity: Identity | None) -> None:
        """
        End the connection when C{identity}'s token expires (replacing any
        earlier watch).
        """
        self._cancel_expiry()
        if identity is not None and identity.expires is not None:
            clock = self.hub.clock
            self._expiry_call = clock.callLater(
                max(0.0, identity.expires - clock.seconds()),
                self.end_unauthenticated,
                *self.token_expired_error,
            )

    def stop_timers(self) -> None:
        """
        The connection has closed: cancel what this session had scheduled.
        """
        self._cancel_expiry()

    def _cancel_expiry(self) -> None:
        call, self._expiry_call = self._expiry_call, None
        if call is not None and call.active():
            call.cancel()

    def end_unauthenticated(self, code: str, text: str) -> None:
        """
        Tell the client, in the dialect's error form, that its token no
        longer holds, and close with L{CLOSE_UNAUTHENTICATED}.
        """
        self._expiry_call = None
        self.send_error(code, text)
        self.sink.fail(CLOSE_UNAUTHENTICATED, text)

    def text_received(self, data: bytes) -> None:
        """
        Decode a text frame as one JSON object for L{message_received},
        answering what is not one with the dialect's error.
        """
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            if self.not_json_error is None:
                self.sink.fail(CLOSE_INVALID_PAYLOAD, "invalid JSON")
            else:
                self.send_error(*self.not_json_error)
            return
        if not isinstance(message, dict):
            self.send_error(*self.not_object_error)
            return
        self.message_received(message)

    def message_received(self, message: dict) -> None:
        """
        One JSON object arrived.
        """
        raise NotImplementedError()

    def send_error(self, code: str, text: str) -> None:
        """
        Tell the client, in the dialect's error form, that what it sent
        cannot be accepted.
        """
        raise NotImplementedError()

    def count_error(self, code: str) -> None:
        """
        Count an error sent to the client, for C{/metrics}.
        """
        self.hub.counters.count(self.hub.counters.errors, code)

    def binary_received(self, data: bytes) -> None:
        """
        A binary frame arrived; by default it closes the connection with
        1003, since most dialects carry no binary data.
        """
        self.sink.fail(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")

    def too_large(self) -> None:
        """
        A frame over the size limit is arriving; the connection closes with
        1009 right after this, so a dialect may send its error first.
        """
        if self.too_large_error is not None:
            self.send_error(*self.too_large_error)

    def rate_limited(self) -> None:
        """
        A frame arrived over the message rate limit and was discarded; a
        dialect may tell its client. Persistent excess closes with 1008.
        """
        if self.rate_limited_error is not None:
            self.send_error(*self.rate_limited_error)

    def render(self, event: Any) -> bytes | None:
        raise NotImplementedError()

    def send_frame(self, frame: bytes) -> None:
        """
        Send a frame to this session's own client. A client that is going
        away or not reading is not told anything more.
        """
        try:
            self.sink.send(frame)
        except DeliveryRefused:
            pass

    def send_json(self, body: Any) -> None:
        self.send_frame(orjson.dumps(body))

    def send_join_reply(self, room_name: str, frame: bytes) -> None:
        """
        Answer a join of C{room_name} that the hub has just carried out with
        C{frame}. A client that cannot take the answer is taken out of the
        room again: it must not be a member that does not know it is one.

        :raises ReplyTooLarge: The answer is over the connection's size
            limit (a big room of peers with big metadata).
        :raises DeliveryRefused: The connection cannot take it for another
            reason (closing, not reading).
        """
        try:
            self.sink.send(frame)
        except DeliveryRefused as refused:
            self.hub.leave(self.peer, room_name)
            if refused.reason == "too-large":
                raise ReplyTooLarge(
                    "the room's member list is too large to send; not joined"
                )
            raise

    def going_away(self) -> None:
        """
        The server is shutting down: say so in the dialect's own words
        before the WebSocket closes with 1001 (by default, nothing more).
        """

    def closed(self) -> None:
        raise NotImplementedError()
