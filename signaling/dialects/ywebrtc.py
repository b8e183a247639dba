"""
The y-webrtc dialect (the signaling protocol of y-webrtc's C{bin/server.js},
which Yjs providers speak): a client subscribes to topics, each a hub room,
and publishes messages that every subscriber of the topic receives, the
sender included, with C{clients} set to the number of subscribers.

A published C{data} is passed on as it came, never read: a room with a
password sends an opaque string.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import orjson

from ..errors import DeliveryRefused, HubError
from ..hub import Hub, PeerJoined, Signal
from ..ids import IdShape
from .base import HandshakeInfo, IFrameSink, Session

NAME = "y-webrtc"

#: Why the hub refused a subscription, as this dialect's error codes.
_JOIN_ERRORS = {
    "invalid-room-name": "invalid-topic",
    "room-full": "topic-full",
    "too-many-rooms": "too-many-topics",
    "verified-only": "forbidden",
    "not-granted": "forbidden",
}
#: Topic names one error frame lists at most.
_LISTED = 16


@attrs.frozen
class YWebRTCSettings:
    """
    :ivar path: Where the WebSocket is (C{--y-webrtc-path}).
    :ivar any_path: Whether it is also at C{/} and at any path no other
        route takes, as the original accepts (C{--y-webrtc-any-path}).
    :ivar max_topics: The topics one connection may be subscribed to at
        once (C{--y-webrtc-max-topics}); 0 for the hub's
        C{--max-rooms-per-peer}.
    :ivar replay_window: Seconds the first publish after a subscribe (a
        y-webrtc client's C{announce}) is kept, to be passed on to a
        subscriber on another node whose subscription arrives meanwhile
        (C{--y-webrtc-replay-window}); 0 keeps nothing.
    :ivar replay_bytes: The largest publish kept so (C{--y-webrtc-replay-bytes}).
    """

    path: str = "/y-webrtc"
    any_path: bool = False
    max_topics: int = 32
    replay_window: float = 5.0
    replay_bytes: int = 4096


#: Seconds a node waits, once it learns that a y-webrtc client of another
#: node subscribed, for that client's announce before passing its own on:
#: the other node sends the announce right after the subscription, in order.
REPLAY_DELAY = 1.0


@attrs.define
class _Kept:
    """
    A client's announce (its first publish after a subscribe), kept for
    subscribers on other nodes that it could not reach.

    :ivar at: When it was published.
    :ivar reached: The topic's members when it was published.
    :ivar heard: Who this client has heard from in the topic since.
    """

    at: float
    data: Any
    reached: frozenset[str]
    heard: set[str] = attrs.Factory(set)


class YWebRTCSession(Session):
    """
    A y-webrtc client: C{subscribe}, C{unsubscribe}, C{publish}, C{ping}.
    """

    # The original crashes on a frame that is not JSON; here it is told.
    not_json_error = ("invalid-json", "a message must be JSON")
    not_object_error = ("invalid-json", "a message must be a JSON object")
    too_large_error = ("too-large", "the message is over the size limit")
    rate_limited_error = ("rate-limited", "too many messages; this one was discarded")
    token_expired_error = ("token-expired", "the token has expired")

    def __init__(
        self,
        hub: Hub,
        sink: IFrameSink,
        handshake: HandshakeInfo,
        settings: YWebRTCSettings = YWebRTCSettings(),
    ) -> None:
        super().__init__(hub, sink, handshake)
        self.settings = settings
        #: Topics whose next publish is kept (a subscribe was just sent).
        self._keep_next: set[str] = set()
        #: The publish kept per topic.
        self._kept: dict[str, _Kept] = {}

    def opened(self) -> None:
        peer = self.connect_peer(dialect=NAME, shape=IdShape.TOKEN)
        most = self.settings.max_topics
        if most and (not peer.max_rooms or peer.max_rooms > most):
            peer.max_rooms = most

    def closed(self) -> None:
        self._kept.clear()
        if self.peer is not None:
            self.hub.disconnect(self.peer)

    # messages

    def message_received(self, message: dict) -> None:
        wire_type = message.get("type")
        handler = self._handlers.get(wire_type) if isinstance(wire_type, str) else None
        if handler is None:
            self.send_error(
                "unknown-type",
                "type must be subscribe, unsubscribe, publish or ping",
            )
            return
        handler(self, message)

    def _topics(self, message: dict) -> list | None:
        topics = message.get("topics")
        if not isinstance(topics, list):
            self.send_error("invalid-field", "'topics' must be a list of topic names")
            return None
        return topics

    def _subscribe(self, message: dict) -> None:
        topics = self._topics(message)
        if topics is None:
            return
        peer = self.peer
        refused: dict[str, list] = {}
        texts: dict[str, str] = {}
        for topic in topics:
            if not isinstance(topic, str):
                # The original skips them silently.
                refused.setdefault("invalid-topic", [])
                texts.setdefault("invalid-topic", "a topic must be a string")
                continue
            if self.settings.replay_window > 0:
                # A client announces itself right after it subscribes.
                self._keep_next.add(topic)
            if topic in peer.rooms:
                continue
            try:
                self.hub.join(peer, topic)
            except HubError as error:
                self._keep_next.discard(topic)
                code = _JOIN_ERRORS.get(error.reason, "subscribe-refused")
                refused.setdefault(code, []).append(topic)
                texts.setdefault(code, error.message)
        for code, names in refused.items():
            self.count_error(code)
            body: dict[str, Any] = {
                "type": "error",
                "code": code,
                "message": texts[code],
            }
            if names:
                body["topics"] = names[:_LISTED]
            self.send_json(body)

    def _unsubscribe(self, message: dict) -> None:
        topics = self._topics(message)
        if topics is None:
            return
        peer = self.peer
        for topic in topics:
            # As the original: a topic not subscribed is no error.
            if isinstance(topic, str) and topic in peer.rooms:
                self.hub.leave(peer, topic)
                self._kept.pop(topic, None)
                self._keep_next.discard(topic)

    def _publish(self, message: dict) -> None:
        topic = message.get("topic")
        if not isinstance(topic, str):
            self.send_error("invalid-topic", "'topic' must be a string")
            return
        data = message.get("data")
        if not isinstance(data, (dict, str)):
            # A client that gets anything else throws.
            self.send_error("invalid-field", "'data' must be an object or a string")
            return
        peer = self.peer
        room = peer.rooms.get(topic)
        if room is None:
            self.send_error("not-subscribed", "subscribe to the topic first")
            return
        clients = len(room.members)
        signal = Signal(
            kind="message",
            sender=peer.id,
            room=topic,
            payload=data,
            extra={"clients": clients},
        )
        self.hub.broadcast(peer, topic, signal)
        self.send_frame(_publish_frame(topic, data, clients))
        if topic in self._keep_next:
            self._keep_next.discard(topic)
            self._keep(topic, data, room.members)

    def _ping(self, message: dict) -> None:
        self.send_frame(b'{"type":"pong"}')

    _handlers: dict[str, Callable[["YWebRTCSession", dict], None]] = {
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "publish": _publish,
        "ping": _ping,
    }

    # what is kept for subscribers on other nodes

    def _keep(self, topic: str, data: Any, members: Any) -> None:
        if isinstance(data, str):
            size = len(data)
        else:
            size = len(orjson.dumps(data))
        if size <= self.settings.replay_bytes:
            self._kept[topic] = _Kept(
                self.hub.clock.seconds(), data, frozenset(members)
            )
        else:
            self._kept.pop(topic, None)

    def _joined(self, event: PeerJoined) -> None:
        """
        A y-webrtc client of another node subscribed to a topic we announced
        ourselves in, and our announce missed it (its node was not yet known
        here). If its own announce misses us too (our node was not yet
        known there), neither would ever call the other: so unless we hear
        from it within L{REPLAY_DELAY}, it gets our announce, to it alone.
        Of two clients in that plight, only the one with the lower peer id
        does so, or both would call each other at once.
        """
        member = event.member
        kept = self._kept.get(event.room)
        if (
            kept is None
            or member.dialect != NAME
            or member.peer_id in kept.reached
            or member.peer_id < self.peer.id
            or self.hub.is_local(member.peer_id)
        ):
            return
        if self.hub.clock.seconds() - kept.at > self.settings.replay_window:
            del self._kept[event.room]
            return
        self.hub.clock.callLater(
            REPLAY_DELAY, self._replay, event.room, member.peer_id, kept
        )

    def _heard(self, topic: str, sender: str) -> None:
        kept = self._kept.get(topic)
        if kept is None:
            return
        if self.hub.clock.seconds() - kept.at > self.settings.replay_window:
            # Nothing waits for it any more.
            del self._kept[topic]
        else:
            kept.heard.add(sender)

    def _replay(self, topic: str, target: str, kept: _Kept) -> None:
        peer = self.peer
        room = peer.rooms.get(topic) if peer is not None else None
        if (
            room is None
            or self._kept.get(topic) is not kept
            or target in kept.heard
            or self.hub.find(peer.id) is not peer
        ):
            return
        signal = Signal(
            kind="message",
            sender=peer.id,
            room=topic,
            payload=kept.data,
            extra={"clients": len(room.members)},
        )
        try:
            self.hub.relay(peer, topic, target, signal)
        except (HubError, DeliveryRefused):
            pass

    # events

    def render(self, event: Any) -> bytes | None:
        if type(event) is Signal:
            if event.kind != "message" or event.room is None:
                # Offers, answers and candidates of other dialects mean
                # nothing to a y-webrtc client.
                return None
            extra = event.extra
            clients = extra.get("clients") if extra else None
            if type(clients) is not int:
                room = self.hub.room(event.room)
                clients = len(room.members) if room is not None else 0
            if self._kept:
                self._heard(event.room, event.sender)
            return _publish_frame(event.room, event.payload, clients)
        if type(event) is PeerJoined and self._kept:
            self._joined(event)
        # y-webrtc has no joins or leaves on the wire.
        return None

    def send_error(self, code: str, text: str) -> None:
        self.count_error(code)
        self.send_json({"type": "error", "code": code, "message": text})


def _publish_frame(topic: str, data: Any, clients: int) -> bytes:
    return orjson.dumps(
        {"type": "publish", "topic": topic, "data": data, "clients": clients}
    )


def session_factory(
    settings: YWebRTCSettings,
) -> Callable[[Hub, IFrameSink, HandshakeInfo], YWebRTCSession]:
    """
    What C{SignalingFactory} makes each connection's session with.
    """

    def make(hub: Hub, sink: IFrameSink, handshake: HandshakeInfo) -> YWebRTCSession:
        return YWebRTCSession(hub, sink, handshake, settings)

    return make
