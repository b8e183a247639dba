"""
The PeerJS dialect (the npm C{peer} server 1.0, for the C{peerjs} client
1.5) under C{--peerjs-path} (default C{/peerjs}): a WebSocket at
C{{path}/peerjs?key=&id=&token=}, OPEN, ID-TAKEN, ERROR, HEARTBEAT, and
OFFER, ANSWER, CANDIDATE, LEAVE and EXPIRE addressed by PeerJS id with the
server writing C{src}; messages for an id that is not connected wait in a
bounded queue and expire with EXPIRE.

Each PeerJS id is the hub peer id of its client, so an id is unique among
the peers of every dialect. PeerJS has no rooms: a client whose path is
C{{path}/room/{name}/} (the C{peerjs} client's C{path} option) is also a
member of the hub room C{name}, where peers of the other dialects meet it
and reach it by its id (docs/dialects.rst, "PeerJS").
"""

from __future__ import annotations

import hmac
import re
import uuid
from typing import Any, Callable, Mapping

import attrs
import orjson

from ..errors import DeliveryRefused, HubError, PeerIdInUse
from ..hub import CloseReason, Hub, PeerLeft, Profile, Signal
from ..ids import IdShape
from ..logs import Logger
from .base import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_REMOVED,
    HandshakeInfo,
    IFrameSink,
    Session,
)

NAME = "peerjs"

#: The ids the C{peerjs} client accepts (its C{util.validateId}); the
#: original server takes any string, which its own client then refuses.
ID_PATTERN = re.compile(r"[A-Za-z0-9]+(?:[ _-][A-Za-z0-9]+)*\Z")
#: PeerJS ids and tokens are at most this many characters (the room name
#: limit); the original bounds neither.
MAX_ID_LENGTH = 256

#: Relayed types → hub signal kinds, and back.
_KINDS = {
    "OFFER": "offer",
    "ANSWER": "answer",
    "CANDIDATE": "candidate",
    "LEAVE": "leave",
    "EXPIRE": "expire",
}
_WIRE_TYPES = {kind: wire for wire, kind in _KINDS.items()}
#: Types kept for a destination that is not connected (the original's:
#: LEAVE and EXPIRE are never queued).
_QUEUED = frozenset(("OFFER", "ANSWER", "CANDIDATE"))

#: The banner at C{GET {path}/}, in the original's shape.
BANNER = {
    "name": "PeerJS Server",
    "description": "The PeerJS dialect of signaling: a server side element to "
    "broker connections between PeerJS clients.",
    "website": "https://peerjs.com/",
}


@attrs.frozen
class PeerJSSettings:
    """
    :ivar path: Where the dialect is mounted (C{--peerjs-path}), with no
        trailing slash.
    :ivar key: The API key clients must present (C{--peerjs-key}).
    :ivar discovery: Whether C{GET {path}/{key}/peers} lists the connected
        ids (C{--peerjs-discovery}).
    :ivar expire_timeout: Seconds a queued message waits for its
        destination before its sender is told EXPIRE.
    :ivar alive_timeout: Seconds a client may go without a HEARTBEAT before
        it is closed and its id freed; 0 never.
    :ivar concurrent_limit: PeerJS clients connected to this process at once.
    :ivar queue_messages: Messages queued for one offline id.
    :ivar queue_bytes: Bytes queued for one offline id.
    :ivar queue_total_bytes: Bytes queued for all offline ids together.
    """

    path: str = "/peerjs"
    key: str = "peerjs"
    discovery: bool = False
    expire_timeout: float = 5.0
    alive_timeout: float = 60.0
    concurrent_limit: int = 5000
    queue_messages: int = 64
    queue_bytes: int = 64 * 1024
    queue_total_bytes: int = 16 * 1024 * 1024

    @property
    def sweep_interval(self) -> float:
        """
        Seconds between two checks of the queues' expiry and the clients'
        heartbeats: a quarter of the shorter timeout, at most a second (the
        original checks every second and every 300 ms).
        """
        timeouts = [t for t in (self.expire_timeout, self.alive_timeout) if t > 0]
        return max(0.05, min([1.0, *(t / 4 for t in timeouts)]))


@attrs.define(eq=False)
class _Queue:
    """
    The messages waiting for one offline id.

    :ivar created: When its first message arrived; the queue expires
        L{PeerJSSettings.expire_timeout} after it, as the original's does.
    """

    created: float
    frames: list[tuple[str, bytes]] = attrs.Factory(list)
    size: int = 0


@attrs.define(eq=False)
class PeerJSRealm:
    """
    The PeerJS clients of one hub and the messages waiting for offline ids.

    It knows no socket: a client is its L{PeerJSSession}, time comes from the
    hub's clock; L{sweep} runs on a timer (C{tap.py}).
    """

    hub: Hub
    settings: PeerJSSettings = PeerJSSettings()
    _clients: dict[str, "PeerJSSession"] = attrs.Factory(dict)
    _queues: dict[str, _Queue] = attrs.Factory(dict)
    _queued_bytes: int = 0
    #: Under a cluster, where the other nodes' ids are and the relay to
    #: them (L{signaling.cluster.peerjs.PeerJSCluster}); this realm is its
    #: receiver.
    cluster: Any = None
    _log = Logger()

    def client(self, peer_id: str) -> "PeerJSSession | None":
        return self._clients.get(peer_id)

    def ids(self) -> list[str]:
        return list(self._clients)

    def count(self) -> int:
        return len(self._clients)

    def register(self, session: "PeerJSSession") -> None:
        self._clients[session.peer.id] = session
        if self.cluster is not None:
            self.cluster.announce(session.peer.id, True)

    def unregister(self, session: "PeerJSSession") -> None:
        if session.peer is not None and self._clients.get(session.peer.id) is session:
            del self._clients[session.peer.id]
            if self.cluster is not None:
                self.cluster.announce(session.peer.id, False)

    def remote_node(self, peer_id: str) -> str | None:
        """
        The other node of the cluster known to hold C{peer_id}.
        """
        return self.cluster.node_of(peer_id) if self.cluster is not None else None

    def send_to(self, peer_id: str, frame: bytes) -> None:
        """
        Write C{frame} to C{peer_id}'s client, on this node or another; a
        client that cannot take it now misses it.
        """
        client = self._clients.get(peer_id)
        if client is not None:
            client.send_frame(frame)
            return
        node = self.remote_node(peer_id)
        if node is not None:
            self.cluster.forward(node, peer_id, frame)

    # from the other nodes

    def forwarded(self, destination: str, frame: bytes) -> None:
        """
        Another node relayed C{frame} to C{destination}, which it believes
        is here; if it is not (it has just gone), the frame is queued as
        for any id not connected.
        """
        client = self._clients.get(destination)
        if client is not None:
            try:
                client.sink.send(frame)
            except DeliveryRefused:
                pass
            return
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return
        source = message.get("src") if isinstance(message, dict) else None
        # An EXPIRE or LEAVE for a client that has gone is dropped, as here.
        if isinstance(source, str) and message.get("type") in _QUEUED:
            self.enqueue(source, destination, frame)

    def came_online(self, peer_id: str, node: str) -> None:
        """
        C{peer_id} connected to C{node}: what waits for it here goes there.
        """
        for frame in self.take_queue(peer_id):
            self.cluster.forward(node, peer_id, frame)

    def new_id(self) -> str:
        """
        A fresh id for C{GET {path}/{key}/id}: a UUID, as the original's,
        from the hub's id source.
        """
        return str(uuid.UUID(bytes=self.hub.ids.random_bytes(16), version=4))

    # the offline queue

    def enqueue(self, source: str, destination: str, frame: bytes) -> bool:
        """
        Keep C{frame} from C{source} until C{destination} connects.

        :return: Whether it was kept; not when a queue limit is reached.
        """
        settings = self.settings
        queue = self._queues.get(destination)
        held = len(queue.frames) if queue is not None else 0
        size = queue.size if queue is not None else 0
        if (
            held >= settings.queue_messages
            or size + len(frame) > settings.queue_bytes
            or self._queued_bytes + len(frame) > settings.queue_total_bytes
        ):
            return False
        if queue is None:
            queue = self._queues[destination] = _Queue(self.hub.clock.seconds())
            if self.cluster is not None:
                # It may have connected to another node before this one
                # heard of it.
                self.cluster.lookup(destination).addCallback(
                    self._looked_up, destination
                )
        queue.frames.append((source, frame))
        queue.size += len(frame)
        self._queued_bytes += len(frame)
        return True

    def _looked_up(self, node: str | None, destination: str) -> None:
        if node is not None:
            self.came_online(destination, node)

    def take_queue(self, destination: str) -> list[bytes]:
        """
        The frames waiting for C{destination}, now no longer queued.
        """
        queue = self._queues.pop(destination, None)
        if queue is None:
            return []
        self._queued_bytes -= queue.size
        return [frame for _, frame in queue.frames]

    def queued_bytes(self) -> int:
        return self._queued_bytes

    # the timer

    def sweep(self) -> None:
        """
        Drop queues older than the expire timeout, telling each of their
        senders EXPIRE once per destination, and close clients that sent
        no HEARTBEAT within the alive timeout.
        """
        now = self.hub.clock.seconds()
        settings = self.settings
        for destination, queue in list(self._queues.items()):
            if now - queue.created < settings.expire_timeout:
                continue
            del self._queues[destination]
            self._queued_bytes -= queue.size
            for source in dict.fromkeys(source for source, _ in queue.frames):
                self.send_to(source, expire_frame(destination, source))
        if settings.alive_timeout > 0:
            for session in list(self._clients.values()):
                if now - session.last_heartbeat >= settings.alive_timeout:
                    self._log.info(
                        "closing PeerJS peer {peer}: no heartbeat for {seconds} s",
                        peer=session.peer.id,
                        seconds=settings.alive_timeout,
                    )
                    session.end(CloseReason.STALE)


class PeerJSSession(Session):
    """
    A client of the PeerJS dialect.

    :ivar last_heartbeat: When it connected or last sent a HEARTBEAT.
    """

    # The original has one error form, ERROR {payload: {msg}}; the codes
    # here only count errors for /metrics.
    not_json_error = ("invalid-json", "Invalid message: not JSON")
    not_object_error = ("invalid-json", "Invalid message: not a JSON object")
    too_large_error = ("too-large", "Message too large")
    rate_limited_error = ("rate-limited", "Too many messages; this one was dropped")
    room: str | None = None
    token: str = ""
    last_heartbeat: float = 0.0
    #: Under a cluster, the other node that holds the id asked for.
    _elsewhere: str | None = None

    def __init__(
        self,
        hub: Hub,
        sink: IFrameSink,
        handshake: HandshakeInfo,
        realm: PeerJSRealm,
        refuse_all: str | None = None,
    ) -> None:
        """
        :param refuse_all: Refuse every connection with this ERROR message
            (a server whose tokens are required: a PeerJS client presents
            none).
        """
        super().__init__(hub, sink, handshake)
        self.realm = realm
        self._refuse_all = refuse_all

    def prepare(self):
        peer_id = self.handshake.params.get("id")
        if self.realm.cluster is None or not peer_id or len(peer_id) > MAX_ID_LENGTH:
            return None
        # Asked before the handshake is answered, so that an id held on
        # another node is refused with ID-TAKEN like one held here.
        looking = self.realm.cluster.lookup(peer_id)
        looking.addCallback(self._looked_up)
        return looking

    def _looked_up(self, node: str | None) -> None:
        self._elsewhere = node

    def opened(self) -> None:
        params = self.handshake.params
        peer_id, token = params.get("id", ""), params.get("token", "")
        refusal = self._refuse_all or handshake_error(params, self.realm.settings)
        room = room_of(self.realm.settings.path, self.handshake.path)
        if refusal is None and room is not None:
            try:
                room = self.hub.validate_room_name(room)
            except HubError as error:
                refusal = error.message
        if refusal is not None:
            self._refuse(refusal)
            return
        holder = self.realm.client(peer_id)
        if holder is None and self._elsewhere is not None:
            # Its token is known only to that node: never replaced from here.
            self._id_taken()
            return
        if holder is not None:
            if not hmac.compare_digest(holder.token.encode(), token.encode()):
                self._id_taken()
                return
            # The same client again (peer.reconnect() presents the same id
            # and token): the newer socket wins, and the older one is told
            # why it ends.
            holder.end_replaced()
        elif self.realm.count() >= self.realm.settings.concurrent_limit:
            self._refuse("Server has reached its concurrent user limit")
            return
        try:
            self.connect_peer(dialect=NAME, shape=IdShape.TOKEN, peer_id=peer_id)
        except PeerIdInUse:
            # A peer of another dialect has this id.
            self._id_taken()
            return
        if room is not None:
            try:
                self.hub.join(self.peer, room, profile=Profile(display_name=peer_id))
            except HubError as error:
                self.hub.disconnect(self.peer)
                self.peer = None
                self._refuse(error.message)
                return
            self.room = room
        self.token = token
        self.last_heartbeat = self.hub.clock.seconds()
        self.realm.register(self)
        self.send_frame(b'{"type":"OPEN"}')
        for frame in self.realm.take_queue(peer_id):
            try:
                self.sink.send(frame)
            except DeliveryRefused:
                break

    def _refuse(self, text: str) -> None:
        self.send_error("refused", text)
        self.sink.fail(CLOSE_POLICY_VIOLATION, text)

    def _id_taken(self) -> None:
        self.count_error("id-taken")
        self.send_json({"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}})
        self.sink.fail(CLOSE_POLICY_VIOLATION, "ID is taken")

    def _forget(self) -> None:
        """
        Free this client's id, in the realm and in the hub.
        """
        if self.peer is not None:
            self.realm.unregister(self)
            self.hub.disconnect(self.peer)
            self.peer = None

    def end(self, reason: CloseReason) -> None:
        """
        Free the id at once and close the connection: a client that does
        not answer must not hold its id through a closing handshake.
        """
        connection = self.peer.connection if self.peer is not None else None
        self._forget()
        if connection is not None:
            connection.close(reason)

    def end_replaced(self) -> None:
        self._forget()
        self.sink.fail(CLOSE_REMOVED, "replaced by a newer connection with this id")

    def closed(self) -> None:
        self._forget()

    # messages

    def message_received(self, message: dict) -> None:
        if self.peer is None:
            return
        message_type = message.get("type")
        if message_type == "HEARTBEAT":
            self.last_heartbeat = self.hub.clock.seconds()
            return
        if not isinstance(message_type, str):
            self.send_error("invalid-type", "Invalid message: 'type' must be a string")
            return
        kind = _KINDS.get(message_type)
        if kind is None:
            # As the original: other types are dropped.
            return
        destination = message.get("dst")
        if destination is None and message_type == "LEAVE":
            # The original unregisters the sender and keeps a socket that
            # can do nothing more; here the connection ends.
            self._forget()
            self.sink.fail(CLOSE_NORMAL, "left")
            return
        if (
            not isinstance(destination, str)
            or not destination
            or len(destination) > MAX_ID_LENGTH
        ):
            self.send_error("invalid-field", "Invalid message: 'dst' must be a peer id")
            return
        self._relay(message_type, kind, destination, message)

    def _relay(self, message_type: str, kind: str, destination: str, message: dict):
        source = self.peer.id
        body: dict[str, Any] = {"type": message_type, "src": source, "dst": destination}
        if "payload" in message:
            body["payload"] = message["payload"]
        target = self.realm.client(destination)
        if target is not None:
            self.hub.counters.relayed[kind, NAME] += 1
            try:
                target.sink.send(orjson.dumps(body))
                timer = self.hub.counters.relay_timer
                if timer is not None:
                    timer.written()
            except DeliveryRefused as refused:
                self._refused(destination, refused)
            return
        if self.room is not None and destination in self._room_members():
            if message_type not in _QUEUED:
                return
            signal = Signal(
                kind=kind,
                sender=source,
                room=self.room,
                payload=message.get("payload"),
            )
            try:
                self.hub.relay(self.peer, self.room, destination, signal)
            except DeliveryRefused as refused:
                self._refused(destination, refused)
            except HubError:
                self.send_expire(destination)
            return
        node = self.realm.remote_node(destination)
        if node is not None:
            self.hub.counters.relayed[kind, NAME] += 1
            if not self.realm.cluster.forward(node, destination, orjson.dumps(body)):
                self.send_expire(destination)
            return
        if message_type in _QUEUED:
            if not self.realm.enqueue(source, destination, orjson.dumps(body)):
                # Over a queue limit: as if the destination never came.
                self.count_error("queue-full")
                self.send_expire(destination)

    def _room_members(self):
        room = self.hub.room(self.room)
        return room.members if room is not None else {}

    def _refused(self, destination: str, refused: DeliveryRefused) -> None:
        # As the original: a recipient that cannot be written to has left;
        # one that is slow or was sent too much did not get this message.
        if refused.reason == "closed":
            self.send_json({"type": "LEAVE", "src": destination, "dst": self.peer.id})
        else:
            self.send_expire(destination)

    def send_expire(self, destination: str) -> None:
        """
        Tell this client that its messages to C{destination} were not
        delivered.
        """
        if self.peer is not None:
            self.send_frame(expire_frame(destination, self.peer.id))

    # events from the hub (peers of other dialects in the room)

    def render(self, event: Any) -> bytes | None:
        if type(event) is Signal:
            wire_type = _WIRE_TYPES.get(event.kind)
            if wire_type is None or self.peer is None:
                return None
            return orjson.dumps(
                {
                    "type": wire_type,
                    "src": event.sender,
                    "dst": self.peer.id,
                    "payload": event.payload,
                }
            )
        if type(event) is PeerLeft and self.peer is not None:
            # What the client does when a peer is gone: close its
            # connections to it.
            return orjson.dumps(
                {"type": "LEAVE", "src": event.member.peer_id, "dst": self.peer.id}
            )
        # PeerJS has no notion of a peer arriving.
        return None

    def send_error(self, code: str, text: str) -> None:
        self.count_error(code)
        self.send_json({"type": "ERROR", "payload": {"msg": text}})


def handshake_error(params: Mapping[str, str], settings: PeerJSSettings) -> str | None:
    """
    Why a connection with the query C{params} is refused, in the original's
    words and order (and ours after them), or L{None}.
    """
    peer_id, token, key = params.get("id"), params.get("token"), params.get("key")
    if not peer_id or not token or not key:
        return "No id, token, or key supplied to websocket server"
    if key != settings.key:
        return "Invalid key provided"
    if len(peer_id) > MAX_ID_LENGTH or not ID_PATTERN.match(peer_id):
        return "Invalid id"
    if len(token) > MAX_ID_LENGTH:
        return "Invalid token"
    return None


def expire_frame(unreached: str, sender: str) -> bytes:
    return orjson.dumps({"type": "EXPIRE", "src": unreached, "dst": sender})


def room_of(mount: str, path: str) -> str | None:
    """
    The room of a WebSocket at C{path}: C{name} for
    C{{mount}/room/{name}/peerjs}, else L{None}.
    """
    rest = path[len(mount) :].strip("/").split("/")
    if len(rest) == 3 and rest[0] == "room":
        return rest[1]
    return None


def session_factory(
    realm: PeerJSRealm, refuse_all: str | None = None
) -> Callable[[Hub, IFrameSink, HandshakeInfo], PeerJSSession]:
    """
    What C{SignalingFactory} makes each connection's session with.
    """

    def make(hub: Hub, sink: IFrameSink, handshake: HandshakeInfo) -> PeerJSSession:
        return PeerJSSession(hub, sink, handshake, realm, refuse_all)

    return make
