"""
The user directory behind the directory dialect: which connection holds which
userId under which public key, and who watches whose presence.

Directory users are ordinary hub peers that are in no room; they reach each
other by userId through this directory instead. It knows nothing of sockets
or JSON: peers are reached through their L{IPeerConnection}, time comes from
the hub's clock.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
from twisted.internet.interfaces import IDelayedCall

from .errors import DeliveryRefused, HubError
from .hub import MAX_ROOM_NAME_LENGTH, Hub, Peer, Signal
from .logs import Logger

#: UserIds are at most this many characters long (the room name limit).
MAX_USER_ID_LENGTH = MAX_ROOM_NAME_LENGTH
#: Public keys are opaque strings of at most this many characters.
MAX_PUBLIC_KEY_LENGTH = 4096
#: A connection watches the presence of at most this many userIds; a
#: further discover forgets the oldest watch.
MAX_WATCHES_PER_PEER = 256
#: Seconds a userId registered with proof of key stays bound to its key
#: after its connection closed, so that a reconnecting client gets it back
#: and nobody else can take it. Without proof an offline userId is free at
#: once, as in the original server.
HOLD_SECONDS = 60.0
#: At most this many offline userIds are held at once, so connection churn
#: cannot grow the directory unbounded. Past it a further offline userId is
#: freed at once: a hold is never cut short, so a flood of throwaway
#: registrations cannot free someone else's userId.
MAX_HELD = 10_000
#: Seconds the holder of a userId registered without proof has to answer a
#: ping when another connection registers it; only a holder that stays
#: silent loses it. Well inside the original client's 5 s register timeout.
PROBE_SECONDS = 2.0


class InvalidField(HubError):
    reason = "invalid-field"


class NotRegistered(HubError):
    reason = "not-registered"


class UserNotOnline(HubError):
    reason = "user-not-online"


class KeyMismatch(HubError):
    reason = "key-mismatch"


class ProofRequired(HubError):
    reason = "proof-required"


class UserIdInUse(HubError):
    """
    A connection holds the userId and the registration has no proof of its
    key: it may take the userId only if that holder turns out to be gone.

    :ivar holder: The connection holding it.
    """

    reason = "user-id-in-use"

    def __init__(self, message: str, holder: Peer) -> None:
        super().__init__(message)
        self.holder = holder


@attrs.frozen
class Presence:
    """
    A watched user came online or went offline.
    """

    user_id: str
    online: bool


@attrs.frozen
class Replaced:
    """
    Told to a connection whose userId was taken over by a newer connection.
    """

    user_id: str


@attrs.define(eq=False)
class Registration:
    """
    A userId bound to a public key.

    :ivar peer: The connection that holds it now, or L{None} while it is held
        for a reconnect.
    :ivar verified: Whether the holder proved possession of the key.
    """

    user_id: str
    public_key: str
    peer: Peer | None
    registered_at: float
    verified: bool = False
    expiry: IDelayedCall | None = None

    @property
    def online(self) -> bool:
        return self.peer is not None


def _string(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidField(f"'{field}' must be a non-empty string")
    if len(value) > limit:
        raise InvalidField(f"'{field}' is at most {limit} characters")
    return value


def validate_user_id(user_id: object, field: str = "userId") -> str:
    """
    :param field: The name of the field it came from, for the error.
    :raises InvalidField: Unless C{user_id} is a non-empty string of at most
        L{MAX_USER_ID_LENGTH} characters.
    """
    return _string(user_id, field, MAX_USER_ID_LENGTH)


def validate_public_key(public_key: object) -> str:
    """
    :raises InvalidField: Unless C{public_key} is a non-empty string of at
        most L{MAX_PUBLIC_KEY_LENGTH} characters.
    """
    return _string(public_key, "publicKey", MAX_PUBLIC_KEY_LENGTH)


@attrs.define(eq=False)
class Directory:
    """
    The registered users of one hub.

    :ivar hold_seconds: How long a userId registered with proof stays bound
        to its key after its connection closed; 0 forgets it at once.
    :ivar max_held: How many offline userIds may be held at once.
    :ivar probe_seconds: How long the holder of a userId has to show it is
        alive when another connection registers that userId without proof.
    """

    hub: Hub
    hold_seconds: float = HOLD_SECONDS
    max_held: int = MAX_HELD
    probe_seconds: float = PROBE_SECONDS
    _users: dict[str, Registration] = attrs.Factory(dict)
    #: userId -> registrations held offline, oldest first
    _held: dict[str, Registration] = attrs.Factory(dict)
    #: peer id -> the userId it holds
    _held_by: dict[str, str] = attrs.Factory(dict)
    #: userId -> {watcher peer id: watcher}
    _watchers: dict[str, dict[str, Peer]] = attrs.Factory(dict)
    #: watcher peer id -> the userIds it watches, oldest first
    _watching: dict[str, dict[str, None]] = attrs.Factory(dict)
    #: Whether the holds are full, so that a flood is logged once.
    _full: bool = False
    _log = Logger()
    #: Whether registrations and lookups go through a cluster (asynchronous
    #: ones, in L{signaling.cluster.users.ClusterDirectory}).
    clustered = False

    # registration

    def register(
        self,
        peer: Peer,
        user_id: str,
        public_key: str,
        verified: bool = False,
        gone: Peer | None = None,
    ) -> Registration:
        """
        Bind C{user_id} to C{public_key} and make C{peer} its holder.

        Another connection may take a userId over with proof of the key it
        is bound to; without proof, only from a holder found to be gone.
        The holder itself may change the key. A connection holds one userId:
        registering another releases the first.

        :param verified: C{peer} proved possession of C{public_key}.
        :param gone: A holder that did not answer a liveness probe: if it
            still holds C{user_id}, C{peer} takes it over.
        :raises KeyMismatch: C{user_id} is bound to another key proven by
            its holder, who holds it or recently held it.
        :raises ProofRequired: C{user_id} was registered with proof and this
            registration has none.
        :raises UserIdInUse: Another connection holds C{user_id}, this
            registration has no proof of its key, and C{gone} is not that
            connection.
        """
        existing = self.check(peer, user_id, public_key, verified, gone)
        previous = self._held_by.get(peer.id)
        if previous is not None and previous != user_id:
            self.unregister(peer)
        now = self.hub.clock.seconds()
        if existing is None:
            existing = Registration(user_id, public_key, peer, now, verified)
            self._users[user_id] = existing
            went_online = True
        else:
            self._end_hold(existing)
            old_peer, existing.peer = existing.peer, peer
            went_online = old_peer is None
            existing.public_key = public_key
            existing.verified = verified or (existing.verified and old_peer is peer)
            existing.registered_at = now
            if old_peer is not None and old_peer is not peer:
                del self._held_by[old_peer.id]
                self._tell(old_peer, Replaced(user_id))
                self._log.debug(
                    "{user} taken over by {peer}", user=user_id, peer=peer.id
                )
        self._held_by[peer.id] = user_id
        if went_online:
            self._log.debug("{user} came online", user=user_id)
            self._announce(existing)
        return existing

    def check(
        self,
        peer: Peer,
        user_id: str,
        public_key: str,
        verified: bool = False,
        gone: Peer | None = None,
    ) -> Registration | None:
        """
        Raise what L{register} would raise, without registering.

        :return: The current registration of C{user_id}, if any.
        """
        validate_user_id(user_id)
        validate_public_key(public_key)
        existing = self._users.get(user_id)
        if existing is None:
            return None
        if existing.peer is peer:
            # The holder itself may change its key, but not drop a proof.
            if existing.verified and not verified and existing.public_key != public_key:
                raise ProofRequired(
                    f"userId {user_id} must be registered with proof of its key"
                )
            return existing
        if existing.verified:
            # Held or online, a proven key protects the userId: only proof
            # of that key takes it over.
            if not verified:
                raise ProofRequired(
                    f"userId {user_id} must be registered with proof of its key"
                )
            if existing.public_key != public_key:
                raise KeyMismatch(
                    f"userId {user_id} is registered with another public key"
                )
            return existing
        if existing.peer is None or (verified and existing.public_key == public_key):
            return existing
        if gone is None or existing.peer is not gone:
            raise UserIdInUse(
                f"userId {user_id} is in use by another connection", existing.peer
            )
        return existing

    def unregister(self, peer: Peer) -> str | None:
        """
        Give up the userId C{peer} holds, at once and without a hold.

        :return: The userId it held, if any.
        """
        return self._release(peer, hold=False)

    def disconnected(self, peer: Peer) -> None:
        """
        C{peer}'s connection closed: its userId (if it still holds one) goes
        offline and is held for L{hold_seconds}; its watches end.
        """
        self._release(peer, hold=True)
        for user_id in self._watching.pop(peer.id, {}):
            self._unwatch(peer.id, user_id)

    def _release(self, peer: Peer, hold: bool) -> str | None:
        user_id = self._held_by.pop(peer.id, None)
        if user_id is None:
            return None
        registration = self._users[user_id]
        registration.peer = None
        if hold and registration.verified and self._can_hold():
            registration.expiry = self.hub.clock.callLater(
                self.hold_seconds, self._expire, registration
            )
            self._held[user_id] = registration
        else:
            del self._users[user_id]
        self._log.debug("{user} went offline", user=user_id)
        self._announce(registration)
        return user_id

    def _can_hold(self) -> bool:
        if self.hold_seconds <= 0 or self.max_held <= 0:
            return False
        if len(self._held) < self.max_held:
            self._full = False
            return True
        if not self._full:
            self._full = True
            self._log.warn(
                "{count} offline userIds are held (--directory-max-held); "
                "further ones are freed at once",
                count=len(self._held),
            )
        return False

    def _end_hold(self, registration: Registration) -> None:
        if registration.expiry is not None:
            if registration.expiry.active():
                registration.expiry.cancel()
            registration.expiry = None
        self._held.pop(registration.user_id, None)

    def _expire(self, registration: Registration) -> None:
        self._end_hold(registration)
        if (
            self._users.get(registration.user_id) is registration
            and registration.peer is None
        ):
            del self._users[registration.user_id]

    # lookups

    def lookup(self, user_id: str) -> Registration | None:
        """
        The registration of C{user_id}, online or held, or L{None}.
        """
        return self._users.get(user_id)

    def user_of(self, peer: Peer) -> str | None:
        """
        The userId C{peer} holds, if any.
        """
        return self._held_by.get(peer.id)

    def online_count(self) -> int:
        return len(self._held_by)

    # presence

    def watch(self, watcher: Peer, user_id: str) -> None:
        """
        Tell C{watcher} from now on when C{user_id} comes online or goes
        offline. A watcher's oldest watch ends when it has too many.
        """
        watching = self._watching.setdefault(watcher.id, {})
        if user_id in watching:
            return
        if len(watching) >= MAX_WATCHES_PER_PEER:
            oldest = next(iter(watching))
            del watching[oldest]
            self._unwatch(watcher.id, oldest)
        watching[user_id] = None
        self._watchers.setdefault(user_id, {})[watcher.id] = watcher

    def unwatch(self, watcher: Peer, user_id: str) -> None:
        """
        Stop telling C{watcher} about C{user_id}.
        """
        watching = self._watching.get(watcher.id)
        if watching is not None and user_id in watching:
            del watching[user_id]
            self._unwatch(watcher.id, user_id)

    def watchers(self, user_id: str) -> list[Peer]:
        return list(self._watchers.get(user_id, {}).values())

    def _unwatch(self, watcher_id: str, user_id: str) -> None:
        watchers = self._watchers.get(user_id)
        if watchers is not None:
            watchers.pop(watcher_id, None)
            if not watchers:
                del self._watchers[user_id]

    def _announce(self, registration: Registration) -> None:
        event = Presence(registration.user_id, registration.online)
        for watcher in self.watchers(registration.user_id):
            if watcher is not registration.peer:
                self._tell(watcher, event)

    def _tell(self, peer: Peer, event: Any) -> None:
        try:
            peer.connection.deliver(event)
        except DeliveryRefused:
            # A watcher that cannot take a notice now learns the state on
            # its next discover.
            pass

    # relaying

    def relay(
        self,
        sender: Peer,
        user_id: str,
        kind: str,
        payload: Any,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """
        Deliver a signal from C{sender} to the connection holding C{user_id}.

        The signal's C{extra} carries C{fromUserId}, the sender's userId.

        :raises NotRegistered: C{sender} holds no userId.
        :raises UserNotOnline: Nobody holds C{user_id} now.
        :raises DeliveryRefused: The target cannot take it.
        """
        sender_user = self._held_by.get(sender.id)
        if sender_user is None:
            raise NotRegistered("register before sending")
        registration = self._users.get(user_id)
        if registration is None or registration.peer is None:
            raise UserNotOnline(f"User {user_id} is not online")
        signal = Signal(
            kind=kind,
            sender=sender.id,
            room=None,
            payload=payload,
            extra={**(extra or {}), "fromUserId": sender_user},
        )
        registration.peer.connection.deliver(signal)
