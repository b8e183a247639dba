"""
The directory dialect's userIds across the nodes of a cluster.

Redis is the arbiter: the bus's C{REGISTER} script binds a userId to a key
and a holder atomically for the whole cluster, by the same rules as the
local L{Directory} (key-mismatch, proof-required, user-id-in-use, holds of
proven keys). Each node keeps, in the L{Directory} it extends, only the
userIds its own connections hold, and its own watchers. What crosses nodes,
over the bus, beside the relays themselves:

* C{dir:presence}, to every other node, when a userId of this node goes
  online or offline: each node tells its own watchers;
* C{dir:replaced}, to the node of a holder whose userId a connection of
  this node took over: that node tells its connection;
* C{dir:probe} and C{dir:probed}: the liveness ping of a holder on another
  node, sent by its own node, and the answer.

Nothing here knows a dialect or a transport: a holder is pinged through
its connection's C{probe(seconds)}, which the dialects' connections have.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Mapping

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from ..directory import (
    Directory,
    KeyMismatch,
    ProofRequired,
    Presence,
    Registration,
    Replaced,
    UserIdInUse,
    UserNotOnline,
    validate_public_key,
    validate_user_id,
)
from ..errors import DeliveryRefused
from ..hub import Member, Peer
from ..logs import Logger
from .envelope import Envelope, encode_envelope
from .link import ClusterLink, is_remote
from .results import DirectoryRefused, NodeDeath, Registered, UserBinding

#: Envelope kinds of the directory; no dialect's signal kind has a colon.
PRESENCE = "dir:presence"
REPLACED = "dir:replaced"
PROBE = "dir:probe"
PROBED = "dir:probed"

_REFUSALS = {"key-mismatch": KeyMismatch, "proof-required": ProofRequired}


class HeldElsewhere(UserIdInUse):
    """
    A live connection, possibly of another node, holds the userId.

    :ivar node: The holder's node.
    :ivar peer_id: The holder's peer id.
    """

    def __init__(
        self, message: str, holder: Peer | None, node: str, peer_id: str
    ) -> None:
        super().__init__(message, holder)  # type: ignore[arg-type]
        self.node = node
        self.peer_id = peer_id


@attrs.define(eq=False)
class ClusterDirectory(Directory):
    """
    A L{Directory} whose userIds, discovery, relays and presence span the
    cluster of its L{ClusterLink}.
    """

    link: ClusterLink | None = None
    #: Liveness pings sent to other nodes and not answered yet, by number.
    _probes: dict[int, defer.Deferred] = attrs.Factory(dict)
    _probe_numbers: Iterator[int] = attrs.Factory(itertools.count)
    _log = Logger()

    clustered = True

    def __attrs_post_init__(self) -> None:
        self.link.bus.on_envelope(self._received)
        self.link.bus.on_node_dead(self._node_dead)

    @property
    def _node(self) -> str:
        return self.link.bus.node_id

    def _can_hold(self) -> bool:
        # Redis holds offline userIds for the whole cluster (the bus's
        # release and reap scripts); a local hold would hide them from it.
        return False

    # registration

    def register_in_cluster(
        self,
        peer: Peer,
        user_id: str,
        public_key: str,
        verified: bool = False,
        gone: str | None = None,
    ) -> defer.Deferred:
        """
        Bind C{user_id} to C{public_key} for the whole cluster with C{peer}
        as its holder, after C{peer}'s earlier cluster operations.

        :param gone: The peer id of a holder that did not answer a ping.
        :return: Fires with the L{Registration}, or fails with
            L{KeyMismatch}, L{ProofRequired}, L{HeldElsewhere}, or
            L{signaling.cluster.results.BusUnavailable}.
        """
        validate_user_id(user_id)
        validate_public_key(public_key)
        result: defer.Deferred = defer.Deferred()

        def register() -> defer.Deferred:
            registering = self.link.bus.register_user(
                peer.id, user_id, public_key, verified, gone
            )
            registering.addCallbacks(
                lambda registered: self._bind(
                    peer, user_id, public_key, verified, registered
                ),
                self._refused,
                errbackArgs=(user_id,),
            )
            return registering.addBoth(_settle(result))

        self.link._then(peer.id, register)
        return result

    def _refused(self, failure, user_id: str):
        failure.trap(DirectoryRefused)
        refused = failure.value
        refusal = _REFUSALS.get(refused.code)
        if refusal is KeyMismatch:
            raise KeyMismatch(f"userId {user_id} is registered with another public key")
        if refusal is ProofRequired:
            raise ProofRequired(
                f"userId {user_id} must be registered with proof of its key"
            )
        node, peer_id = refused.holder or ("", "")
        holder = self.hub.find(peer_id) if node == self._node else None
        raise HeldElsewhere(
            f"userId {user_id} is in use by another connection", holder, node, peer_id
        )

    def _bind(
        self,
        peer: Peer,
        user_id: str,
        public_key: str,
        verified: bool,
        registered: Registered,
    ) -> Registration:
        """
        Record locally what Redis accepted: C{peer} holds C{user_id}.
        """
        previous = self._held_by.get(peer.id)
        if previous is not None and previous != user_id:
            # Redis released it in the same script.
            Directory.unregister(self, peer)
        existing = self._users.get(user_id)
        old_peer = existing.peer if existing is not None else None
        if old_peer is not None and old_peer is not peer:
            del self._held_by[old_peer.id]
            self._tell(old_peer, Replaced(user_id))
        registration = Registration(
            user_id,
            public_key,
            peer,
            self.hub.clock.seconds(),
            verified or (old_peer is peer and existing.verified),
        )
        self._users[user_id] = registration
        self._held_by[peer.id] = user_id
        if registered.replaced is not None:
            node, old_id = registered.replaced
            if node != self._node:
                self._log.debug(
                    "{user} taken over from node {node}", user=user_id, node=node
                )
                self._send(node, REPLACED, {"userId": user_id, "peer": old_id})
        if registered.went_online:
            self._log.debug("{user} came online", user=user_id)
            self._announce(registration)
        return registration

    def unregister(self, peer: Peer) -> str | None:
        user_id = super().unregister(peer)
        if user_id is not None:
            self.link._then(peer.id, lambda: self.link.bus.unregister_user(peer.id))
        return user_id

    # lookups

    def lookup_in_cluster(self, user_id: str) -> defer.Deferred:
        """
        Fires with C{user_id}'s L{UserBinding} in the cluster, or L{None}.
        While Redis is away, this node's own registration answers.
        """
        looking = self.link.bus.lookup_user(user_id)

        def local(failure):
            registration = self.lookup(user_id)
            if registration is None:
                return None
            return UserBinding(
                user_id,
                self._node,
                registration.peer.id,
                registration.public_key,
                registration.verified,
            )

        return looking.addErrback(local)

    # relaying

    def relay(
        self,
        sender: Peer,
        user_id: str,
        kind: str,
        payload: Any,
        extra: Mapping[str, Any] | None = None,
    ) -> defer.Deferred | None:
        """
        Like L{Directory.relay}; to a userId held on another node, the
        signal goes over the bus to that node, in order with the sender's
        earlier ones.

        :return: L{None} if delivered here at once, else a Deferred that
            fails with L{UserNotOnline} or L{DeliveryRefused}.
        """
        sender_user = self._held_by.get(sender.id)
        local = self._users.get(user_id)
        if sender_user is None or (local is not None and local.peer is not None):
            return super().relay(sender, user_id, kind, payload, extra)
        result: defer.Deferred = defer.Deferred()
        # The sender as a room member would be seen: the envelope's sender.
        member = Member(
            peer_id=sender.id,
            dialect=sender.dialect,
            metadata={},
            joined_at=sender.connected_at,
            verified_user_id=sender.verified_user_id,
        )
        signal_extra = {**(extra or {}), "fromUserId": sender_user}

        def send() -> defer.Deferred:
            sending = self.link.bus.lookup_user(user_id)
            sending.addCallback(
                self._relay_to, user_id, kind, member, payload, signal_extra
            )
            return sending.addBoth(_settle(result))

        self.link._then(sender.id, send)
        return result

    def _relay_to(
        self,
        binding: UserBinding | None,
        user_id: str,
        kind: str,
        member: Member,
        payload: Any,
        extra: Mapping[str, Any],
    ) -> defer.Deferred:
        if binding is None or not binding.online or binding.node == self._node:
            # Held by nobody, or (a race) by a connection of this node that
            # is gone by now.
            raise UserNotOnline(f"User {user_id} is not online")
        envelope = Envelope(kind, None, member, (binding.peer,), payload, extra)

        def sent(delivered: bool) -> None:
            if not delivered:
                raise DeliveryRefused("closed", "the recipient's node is gone")

        return self.link.bus.send(binding.node, envelope).addCallback(sent)

    # liveness of a holder on another node

    def probe_remote(self, node: str, peer_id: str) -> defer.Deferred:
        """
        Ask C{node} to ping its connection C{peer_id}.

        :return: Fires with whether it answered; with L{False} if the node
            does not answer within twice L{probe_seconds} either.
        """
        number = next(self._probe_numbers)
        waiter: defer.Deferred = defer.Deferred()
        self._probes[number] = waiter
        timeout = self.hub.clock.callLater(
            2 * self.probe_seconds, self._answered, number, False
        )

        def cancel_timeout(alive):
            if timeout.active():
                timeout.cancel()
            return alive

        waiter.addBoth(cancel_timeout)
        payload = {"probe": number, "peer": peer_id, "node": self._node}
        self._send(node, PROBE, payload).addCallback(
            lambda delivered: None if delivered else self._answered(number, False)
        )
        return waiter

    def _answered(self, number: int, alive: bool) -> None:
        waiter = self._probes.pop(number, None)
        if waiter is not None:
            waiter.callback(alive)

    def _probe_here(self, payload: Mapping[str, Any]) -> None:
        peer = self.hub.find(str(payload["peer"]))
        probe = getattr(peer.connection, "probe", None) if peer is not None else None
        asked_by, number = str(payload["node"]), payload["probe"]

        def answer(alive: bool) -> None:
            self._send(asked_by, PROBED, {"probe": number, "alive": bool(alive)})

        if peer is None or is_remote(peer) or probe is None:
            answer(False)
            return
        probe(self.probe_seconds).addCallback(answer).addErrback(
            lambda failure: self._log.failure(
                "pinging {peer} failed", failure, peer=peer.id
            )
        )

    # presence and the bus

    def _announce(self, registration: Registration) -> None:
        super()._announce(registration)
        data = encode_envelope(
            Envelope(
                PRESENCE,
                None,
                None,
                (),
                {"userId": registration.user_id, "online": registration.online},
            )
        )
        for node in self.link._other_nodes():
            self.link.bus.send_bytes(node, data)

    def _tell_watchers(self, event: Presence) -> None:
        for watcher in self.watchers(event.user_id):
            self._tell(watcher, event)

    def _send(self, node: str, kind: str, payload: Any) -> defer.Deferred:
        return self.link.bus.send(node, Envelope(kind, None, None, (), payload))

    def _received(self, envelope: Envelope) -> None:
        payload = envelope.payload
        if not envelope.kind.startswith("dir:") or not isinstance(payload, dict):
            return
        try:
            if envelope.kind == PRESENCE:
                self._tell_watchers(
                    Presence(str(payload["userId"]), bool(payload["online"]))
                )
            elif envelope.kind == REPLACED:
                self._replaced_here(str(payload["userId"]), str(payload["peer"]))
            elif envelope.kind == PROBE:
                self._probe_here(payload)
            elif envelope.kind == PROBED:
                self._answered(int(payload["probe"]), bool(payload["alive"]))
        except (KeyError, TypeError, ValueError) as error:
            self._log.warn(
                "dropped a malformed directory message: {error}", error=repr(error)
            )

    def _replaced_here(self, user_id: str, peer_id: str) -> None:
        peer = self.hub.find(peer_id)
        if peer is None or self._held_by.get(peer_id) != user_id:
            return
        del self._held_by[peer_id]
        self._users.pop(user_id, None)
        self._tell(peer, Replaced(user_id))

    def _node_dead(self, death: NodeDeath) -> None:
        # Every live node hears of a death once: each tells its watchers.
        for user_id in death.user_ids:
            self._tell_watchers(Presence(user_id, False))


def _settle(result: defer.Deferred):
    """
    A callback that hands an outcome on to C{result} and ends the chain it
    is on, which only keeps one peer's operations in order.
    """

    def settle(outcome: Any) -> None:
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    return settle
