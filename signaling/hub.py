"""
The hub: rooms, peers and routing, shared by every dialect.

The hub knows nothing of sockets, frames or JSON. A connected peer is reached
only through L{IPeerConnection}, so a WebSocket, a Socket.IO session or a peer
on another node (reached over a bus) all look the same to it. Time comes from
an injected L{IReactorTime} and ids from an injected L{IdSource}.
"""

from __future__ import annotations

import enum
from typing import Any, Iterator, Mapping

import attrs
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

from .errors import (
    AlreadyInRoom,
    DeliveryRefused,
    InvalidRoomName,
    NotGranted,
    NotInRoom,
    PeerIdInUse,
    PeerNotFound,
    RoomFull,
    TooManyRooms,
    VerifiedOnly,
)
from .counters import Counters
from .ids import IdShape, IdSource
from .logs import Logger, debugging
from .metadata import MetadataLimits

#: Room names are at most this many characters long, in every dialect.
MAX_ROOM_NAME_LENGTH = 256


class CloseReason(str, enum.Enum):
    """
    Why the hub removed a peer and closes its connection; each transport
    closes in its own way for each.
    """

    #: It did nothing for longer than the stale timeout: a normal close
    #: (WebSocket 4000, a Socket.IO DISCONNECT).
    STALE = "stale"
    #: A delivery to it raised a bug (already logged): the transport's error
    #: close (WebSocket 1011; on Socket.IO an Engine.IO close with no
    #: DISCONNECT, so that the client reconnects).
    FAILED = "internal error"
    #: The server is shutting down and the client should come back, to
    #: this node or another (WebSocket 1001, after a native C{reconnect};
    #: an Engine.IO close packet with no DISCONNECT).
    GOING_AWAY = "going away"


class IPeerConnection(Interface):
    """
    What the hub may do to a connected peer.
    """

    def deliver(event: Any) -> None:
        """
        Hand a hub event (L{PeerJoined}, L{PeerLeft}, L{Signal}) to the peer.

        A connection that learns only later whether the peer took the event
        (a peer on another node, reached over a bus) returns at once; a
        failure it learns of afterwards is not the sender's to hear of, and
        the connection reports it to the hub by disconnecting the peer
        there (L{Hub.disconnect}), as for a peer that went away.

        A bug of the connection's own (rendering the event failed) is the
        recipient's: the connection logs it, closes itself with
        L{CloseReason.FAILED} and raises L{DeliveryRefused} C{"closed"}.

        :raises DeliveryRefused: The peer cannot take it now (closing, buffer
            full, too large), which the sender of a L{Signal} is told.
            Anything else raised is a bug the connection failed to contain:
            the hub logs it, removes the peer and closes it with
            L{CloseReason.FAILED}; the other recipients and the sender are
            unaffected either way.
        """

    def close(reason: CloseReason) -> None:
        """
        End the peer's connection, in the way its transport has for
        C{reason}: because the hub removed it, or because of the
        connection's own bug. Its peer leaves the hub, if it has not yet,
        as for any connection that ends.
        """


@attrs.frozen
class Profile:
    """
    What a peer says about itself when it joins a room, in no dialect's
    words: each dialect maps its own fields to these on join, and shows a
    member of any dialect from them. All of it is the peer's claim.

    :ivar display_name: The name it is shown with (envelope
        C{display_name}; native C{metadata.display_name}, else C{name}).
    :ivar username: Its login name (calls C{username}; native
        C{metadata.username}).
    :ivar real_name: The person's full name (calls C{realName}; native
        C{metadata.realName}, else C{name}).
    :ivar claimed_user_id: A user id it claims without proof (Socket.IO
        C{auth.userId}, C{join-room}'s C{userId} or an unverified token;
        native C{metadata.userId}).
    :ivar registered_user_id: The directory userId it holds: bound to a key
        on this server, yet no proof of who the user is.
    :ivar endpoint: Where it can be reached directly (envelope and native
        C{endpoint}), kept verbatim.
    :ivar call_type: The media of its call (calls C{callType}).
    :ivar details: Application data it attached (calls C{metadata}); L{None}
        when its dialect has none apart from the member's metadata.
    """

    display_name: str | None = None
    username: str | None = None
    real_name: str | None = None
    claimed_user_id: str | None = None
    registered_user_id: str | None = None
    endpoint: Any = None
    call_type: str | None = None
    details: Mapping[str, Any] | None = None

    @property
    def unproved_user_id(self) -> str | None:
        """
        The user id it claims, else the directory userId it holds.
        """
        if self.claimed_user_id is not None:
            return self.claimed_user_id
        return self.registered_user_id


@attrs.frozen
class Member:
    """
    A peer as the other members of one room see it.

    :ivar metadata: What the peer said about itself when it joined, in its
        own dialect's words; native and topic peers are shown it verbatim,
        the other dialects show a member through C{profile}.
    :ivar joined_at: Seconds since the epoch.
    :ivar verified_user_id: The peer's L{Peer.verified_user_id}: proved,
        unlike any user id in C{profile}.
    :ivar profile: The typed fields every dialect shows of a member.
    """

    peer_id: str
    dialect: str
    metadata: Mapping[str, Any]
    joined_at: float
    verified_user_id: str | None = None
    profile: Profile = Profile()

    @property
    def details(self) -> Mapping[str, Any]:
        """
        The application data the member attached: C{profile.details}, else
        its metadata as a whole.
        """
        details = self.profile.details
        return self.metadata if details is None else details


@attrs.frozen
class PeerJoined:
    room: str
    member: Member


@attrs.frozen
class PeerLeft:
    room: str
    member: Member


@attrs.define(slots=True)
class Signal:
    """
    A message relayed from one peer to another: made by the sender's dialect
    for this one relay, then completed by the hub (C{sender_member}), which
    sets the field rather than copying the signal on the relay's hot path.

    :ivar kind: C{"offer"}, C{"answer"}, C{"candidate"} or C{"message"}.
    :ivar sender: The sender's peer id, always set by the hub.
    :ivar room: The room it was sent in, or L{None} for a direct message.
    :ivar payload: The SDP, the candidate or the application data, passed on
        unchanged.
    :ivar extra: Dialect fields that other dialects may carry along
        (C{msgId}, C{sdpMid}, ...), or L{None}.
    :ivar sender_member: The sender as the members of C{room} see it, set
        by the hub when it relays the signal in a room, so that a recipient
        renders it without asking the hub; L{None} for a direct message.
    """

    kind: str
    sender: str
    room: str | None
    payload: Any
    extra: Mapping[str, Any] | None = None
    sender_member: Member | None = attrs.field(default=None, eq=False)


@attrs.define(eq=False)
class Room:
    """
    A named set of peers that may signal each other.

    :ivar metadata: Set by the peer that created the room.
    :ivar emptied_at: When the last member left, for rooms kept while empty.
    :ivar verified_only: Whether only verified peers may join, because a
        verified peer created it.
    """

    name: str
    created_at: float
    max_peers: int
    metadata: Mapping[str, Any] = attrs.Factory(dict)
    verified_only: bool = False
    members: dict[str, Member] = attrs.Factory(dict)
    emptied_at: float | None = None


@attrs.define(eq=False)
class Peer:
    """
    One connected peer.

    :ivar rooms: The rooms it is in, by name.
    :ivar last_seen: When it last did anything, for the stale-peer sweep.
    :ivar verified_user_id: The user id its dialect proved at connect (a
        verified token), or L{None} for a peer that proved nothing.
    :ivar room_grants: The rooms its token lets it join: exact names, or
        prefixes ending in C{*}; L{None} for any room.
    :ivar max_rooms: The rooms it may be in at once, when its token says
        (0 for unlimited); L{None} for the hub's C{max_rooms_per_peer}.
    """

    id: str
    connection: IPeerConnection
    dialect: str
    connected_at: float
    last_seen: float
    rooms: dict[str, Room] = attrs.Factory(dict)
    verified_user_id: str | None = None
    room_grants: tuple[str, ...] | None = None
    max_rooms: int | None = None

    def may_enter(self, room_name: str) -> bool:
        """
        Whether its L{room_grants} include C{room_name}.
        """
        grants = self.room_grants
        if grants is None:
            return True
        return any(
            room_name.startswith(grant[:-1])
            if grant.endswith("*")
            else room_name == grant
            for grant in grants
        )


@attrs.frozen
class HubLimits:
    """
    :ivar max_peers_per_room: 0 for unlimited.
    :ivar max_rooms_per_peer: 0 for unlimited.
    :ivar empty_room_ttl: Seconds an empty room is kept; 0 deletes it at once.
    :ivar stale_timeout: Seconds without activity after which a peer is
        removed by L{Hub.sweep}; 0 never.
    :ivar metadata: The bounds on peer and room metadata, checked by
        L{Hub.join} for every dialect.
    """

    max_peers_per_room: int = 100
    max_rooms_per_peer: int = 16
    empty_room_ttl: float = 0
    stale_timeout: float = 0
    metadata: MetadataLimits = MetadataLimits()


@attrs.frozen
class HubStats:
    peers_total: int
    peers_without_room: int
    rooms_total: int
    peers_in_rooms: int


@attrs.define(eq=False)
class Hub:
    """
    Every room and peer of this process.
    """

    clock: IReactorTime
    ids: IdSource = attrs.Factory(IdSource)
    limits: HubLimits = attrs.Factory(HubLimits)
    counters: Counters = attrs.Factory(Counters)
    _peers: dict[str, Peer] = attrs.Factory(dict)
    _rooms: dict[str, Room] = attrs.Factory(dict)
    _log = Logger()

    # peers

    def connect(
        self,
        connection: IPeerConnection,
        dialect: str = "native",
        shape: IdShape = IdShape.TOKEN,
        verified_user_id: str | None = None,
        peer_id: str | None = None,
        room_grants: tuple[str, ...] | None = None,
        max_rooms: int | None = None,
    ) -> Peer:
        """
        Register a newly connected peer under a fresh id of C{shape}.

        :param verified_user_id: The user id the dialect proved (a verified
            token); L{None} when it proved nothing.
        :param peer_id: The id of a peer whose id was allocated elsewhere
            (a peer on another node, reached over a bus), instead of a
            fresh one.
        :param room_grants: The rooms its token lets it join (see
            L{Peer.room_grants}).
        :param max_rooms: See L{Peer.max_rooms}.
        :raises PeerIdInUse: The hub already has a peer with C{peer_id}.
        """
        now = self.clock.seconds()
        if peer_id is not None:
            if peer_id in self._peers:
                raise PeerIdInUse(f"a peer {peer_id!r} is already connected")
        else:
            peer_id = self.ids.new_id(shape, now)
            while peer_id in self._peers:
                peer_id = self.ids.new_id(shape, now)
        peer = Peer(
            id=peer_id,
            connection=connection,
            dialect=dialect,
            connected_at=now,
            last_seen=now,
            verified_user_id=verified_user_id,
            room_grants=room_grants,
            max_rooms=max_rooms,
        )
        self._peers[peer_id] = peer
        return peer

    def disconnect(self, peer: Peer) -> None:
        """
        Remove C{peer} from every room it is in, telling the rooms, and
        forget it. Calling it twice is harmless.
        """
        if self._peers.get(peer.id) is not peer:
            return
        # Forgotten first, so that nothing is delivered to it while it
        # leaves, and a failing delivery on the way cannot remove it twice.
        del self._peers[peer.id]
        for room_name in list(peer.rooms):
            self.leave(peer, room_name)

    def find(self, peer_id: str) -> Peer | None:
        return self._peers.get(peer_id)

    def peer_count(self) -> int:
        return len(self._peers)

    def local_peer_count(self) -> int:
        """
        Peers connected to this process (a drain waits for them to go).
        """
        return len(self._peers)

    def is_local(self, peer_id: str) -> bool:
        """
        Whether C{peer_id} is a peer connected to this process, rather than
        one of another node's (or none at all).
        """
        return peer_id in self._peers

    def touch(self, peer: Peer) -> None:
        """
        Note that C{peer} is alive, for the stale-peer sweep.
        """
        peer.last_seen = self.clock.seconds()

    # rooms

    def validate_room_name(self, room_name: object) -> str:
        """
        :raises InvalidRoomName: Unless C{room_name} is a non-empty string of
            at most L{MAX_ROOM_NAME_LENGTH} characters.
        """
        if not isinstance(room_name, str) or not room_name:
            raise InvalidRoomName("room must be a non-empty string")
        if len(room_name) > MAX_ROOM_NAME_LENGTH:
            raise InvalidRoomName(
                f"room names are at most {MAX_ROOM_NAME_LENGTH} characters"
            )
        return room_name

    def join(
        self,
        peer: Peer,
        room_name: str,
        metadata: Mapping[str, Any] | None = None,
        room_metadata: Mapping[str, Any] | None = None,
        instead_of: str | None = None,
        profile: Profile = Profile(),
    ) -> Room:
        """
        Put C{peer} into C{room_name}, creating the room if needed, and tell
        the others.

        :param metadata: What C{peer} said about itself, in its dialect's
            words; the hub bounds its size.
        :param profile: The same, in the fields every dialect shows.
        :param room_metadata: The room's metadata, if this join creates it.
        :param instead_of: A room C{peer} leaves for this one, once the join
            is sure to succeed: a refused join keeps C{peer} where it was.
        :return: The room; its C{members} include C{peer}.
        :raises InvalidMetadata: C{metadata} or C{room_metadata} is over the
            limits' L{MetadataLimits}.
        :raises VerifiedOnly: A verified peer created the room and C{peer}
            is not verified.
        :raises NotGranted: C{peer}'s token does not grant it the room.
        """
        self.validate_room_name(room_name)
        if not peer.may_enter(room_name):
            raise NotGranted(f"the token does not grant room {room_name!r}")
        if room_name in peer.rooms:
            raise AlreadyInRoom(f"already in room {room_name!r}")
        limits = self.limits
        limits.metadata.check(metadata)
        staying = len(peer.rooms) - (instead_of in peer.rooms)
        most = limits.max_rooms_per_peer if peer.max_rooms is None else peer.max_rooms
        if 0 < most <= staying:
            raise TooManyRooms(f"a peer may be in at most {most} rooms")
        now = self.clock.seconds()
        room = self._rooms.get(room_name)
        if room is None:
            limits.metadata.check(room_metadata)
        elif room.verified_only and peer.verified_user_id is None:
            raise VerifiedOnly(f"room {room_name!r} admits only verified users")
        elif 0 < room.max_peers <= len(room.members):
            raise RoomFull(f"room {room_name!r} is full ({room.max_peers} peers)")
        if instead_of in peer.rooms:
            self.leave(peer, instead_of)
        if room is None:
            room = Room(
                name=room_name,
                created_at=now,
                max_peers=limits.max_peers_per_room,
                metadata=dict(room_metadata or {}),
                # A verified creator meant its room for verified users: a
                # peer that proved nothing could otherwise join it and
                # pass itself off as one of them.
                verified_only=peer.verified_user_id is not None,
            )
            self._rooms[room_name] = room
        member = Member(
            peer_id=peer.id,
            dialect=peer.dialect,
            metadata=dict(metadata or {}),
            joined_at=now,
            verified_user_id=peer.verified_user_id,
            profile=profile,
        )
        # In the room before the others are told: a recipient that fails
        # and is removed meanwhile cannot empty (and delete) it.
        room.members[peer.id] = member
        room.emptied_at = None
        peer.rooms[room_name] = room
        peer.last_seen = now
        self._tell_room(
            room, PeerJoined(room=room_name, member=member), exclude=peer.id
        )
        if debugging():
            # (Reading self._log makes a logger: not on every join for nothing.)
            self._log.debug("{peer} joined {room}", peer=peer.id, room=room_name)
        return room

    def leave(self, peer: Peer, room_name: str) -> None:
        """
        Take C{peer} out of C{room_name} and tell the others.
        """
        room = peer.rooms.pop(room_name, None)
        if room is None:
            raise NotInRoom(f"not in room {room_name!r}")
        member = room.members.pop(peer.id)
        if not room.members:
            if self.limits.empty_room_ttl > 0:
                room.emptied_at = self.clock.seconds()
            else:
                del self._rooms[room_name]
        else:
            self._tell_room(room, PeerLeft(room=room_name, member=member))
        if debugging():
            self._log.debug("{peer} left {room}", peer=peer.id, room=room_name)

    def room(self, room_name: str) -> Room | None:
        return self._rooms.get(room_name)

    def peers(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def rooms(self) -> Iterator[Room]:
        return iter(list(self._rooms.values()))

    # relaying

    def relay(
        self, sender: Peer, room_name: str | None, target_id: str, signal: Signal
    ) -> None:
        """
        Deliver C{signal} to one peer that shares C{room_name} with C{sender}.

        :raises NotInRoom: C{sender} is not in C{room_name}.
        :raises PeerNotFound: The target is not in that room.
        :raises DeliveryRefused: The target cannot take it.
        """
        room = sender.rooms.get(room_name) if room_name is not None else None
        if room is None:
            raise NotInRoom(f"not in room {room_name!r}")
        target = self._peers.get(target_id) if target_id in room.members else None
        if target is None:
            raise PeerNotFound(f"no peer {target_id!r} in room {room_name!r}")
        signal.sender_member = room.members[sender.id]
        self.counters.relayed[signal.kind, sender.dialect] += 1
        if not self._deliver(target, signal):
            self._remove_failed([target])
            raise DeliveryRefused("closed", "the recipient failed")

    def broadcast(self, sender: Peer, room_name: str, signal: Signal) -> int:
        """
        Deliver C{signal} to every other member of C{room_name}.

        :return: How many took it.
        :raises NotInRoom: C{sender} is not in C{room_name}.
        """
        room = sender.rooms.get(room_name)
        if room is None:
            raise NotInRoom(f"not in room {room_name!r}")
        signal.sender_member = room.members[sender.id]
        self.counters.relayed[signal.kind, sender.dialect] += 1
        return self._tell_room(room, signal, exclude=sender.id)

    def _tell_room(self, room: Room, event: Any, exclude: str | None = None) -> int:
        """
        Deliver C{event} to the members of C{room} but C{exclude}. A member
        whose connection raises anything but L{DeliveryRefused} is removed
        once all the others have it.

        :return: How many took it.
        """
        delivered = 0
        failed: list[Peer] | None = None
        peers = self._peers
        for peer_id in list(room.members):
            if peer_id == exclude:
                continue
            peer = peers.get(peer_id)
            if peer is None:
                continue
            try:
                if self._deliver(peer, event):
                    delivered += 1
                    continue
            except DeliveryRefused:
                continue
            failed = failed or []
            failed.append(peer)
        if failed:
            self._remove_failed(failed)
        return delivered

    def _deliver(self, peer: Peer, event: Any) -> bool:
        """
        Hand C{event} to C{peer}'s connection.

        :return: Whether it took it; L{False} when the connection raised
            what L{IPeerConnection.deliver} may not (a bug, logged here).
        :raises DeliveryRefused: The connection refused it.
        """
        try:
            peer.connection.deliver(event)
        except DeliveryRefused as refused:
            self.counters.count(self.counters.refused, refused.reason)
            raise
        except Exception:
            # One recipient's bug must not cost the sender its connection,
            # the others the event, or a join or leave its end.
            self._log.failure("delivering to {peer} failed", peer=peer.id)
            return False
        return True

    def _remove_failed(self, failed: list[Peer]) -> None:
        """
        Disconnect peers whose connection failed on a delivery, and close
        their connections with L{CloseReason.FAILED}.
        """
        for peer in failed:
            self.disconnect(peer)
            try:
                peer.connection.close(CloseReason.FAILED)
            except Exception:
                self._log.failure("closing {peer} failed", peer=peer.id)

    def close_all(self, reason: CloseReason) -> int:
        """
        Close every peer's connection with C{reason}; each peer leaves the
        hub as its connection ends. Returns how many were asked to go.
        """
        peers = list(self._peers.values())
        for peer in peers:
            try:
                peer.connection.close(reason)
            except Exception:
                self._log.failure("closing {peer} failed", peer=peer.id)
        return len(peers)

    # housekeeping

    def sweep(self) -> None:
        """
        Remove peers idle for longer than the stale timeout and empty rooms
        kept for longer than the empty-room TTL.
        """
        now = self.clock.seconds()
        stale_timeout = self.limits.stale_timeout
        if stale_timeout > 0:
            for peer in list(self._peers.values()):
                if now - peer.last_seen >= stale_timeout:
                    self._log.info("removing stale peer {peer}", peer=peer.id)
                    self.disconnect(peer)
                    peer.connection.close(CloseReason.STALE)
        ttl = self.limits.empty_room_ttl
        for room in list(self._rooms.values()):
            if room.emptied_at is not None and now - room.emptied_at >= ttl:
                del self._rooms[room.name]

    def stats(self) -> HubStats:
        peers = self._peers.values()
        in_rooms = sum(1 for peer in peers if peer.rooms)
        return HubStats(
            peers_total=len(self._peers),
            peers_without_room=len(self._peers) - in_rooms,
            rooms_total=len(self._rooms),
            peers_in_rooms=in_rooms,
        )
