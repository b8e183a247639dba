"""
The PeerJS dialect's ids across the nodes of a cluster.

A PeerJS id is a hub peer id, so Redis already keeps it unique (the link's
claim) and says which node holds it (C{RedisBus.node_of}). What this adds,
over the bus:

* C{peerjs:online} and C{peerjs:offline}, to every other node, when a PeerJS
  client of this node connects or goes: each node keeps where the ids of
  the others are, and passes on what it queued for an id that came online
  elsewhere;
* C{peerjs:relay}, to the node of a message's destination: the rendered
  frame, which that node writes to its client (or queues, if the client
  has just gone).

It knows no dialect: the realm it serves is handed in as C{receiver}, with
C{forwarded(destination, frame)} and C{came_online(peer_id, node)}.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer

from ..logs import Logger
from .envelope import Envelope, encode_envelope
from .link import ClusterLink
from .results import NodeDeath

ONLINE = "peerjs:online"
OFFLINE = "peerjs:offline"
RELAY = "peerjs:relay"


@attrs.define(eq=False)
class PeerJSCluster:
    """
    Where the PeerJS ids of the other nodes are, and the relay to them.
    """

    link: ClusterLink
    receiver: Any = None
    #: PeerJS id -> the node holding it, for ids of other nodes.
    _where: dict[str, str] = attrs.Factory(dict)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        self.link.bus.on_envelope(self._received)
        self.link.bus.on_node_dead(self._node_dead)

    @property
    def node_id(self) -> str:
        return self.link.bus.node_id

    def node_of(self, peer_id: str) -> str | None:
        """
        The other node known to hold C{peer_id}, without asking Redis.
        """
        return self._where.get(peer_id)

    def lookup(self, peer_id: str) -> defer.Deferred:
        """
        Ask Redis which node holds C{peer_id} (for ids that connected before
        this node heard of them).

        :return: Fires with another node's id, or L{None} for none (or this
            node, or Redis away).
        """

        def found(node: str | None) -> str | None:
            if node is None or node == self.node_id:
                return None
            self._where[peer_id] = node
            return node

        asking = defer.maybeDeferred(self.link.bus.node_of, peer_id)
        return asking.addCallbacks(found, lambda _: None)

    def announce(self, peer_id: str, online: bool) -> None:
        """
        Tell the other nodes that C{peer_id} is now this node's, or gone.
        """
        data = encode_envelope(
            Envelope(
                ONLINE if online else OFFLINE,
                None,
                None,
                (),
                {"id": peer_id, "node": self.node_id},
            )
        )
        for node in self.link._other_nodes():
            self.link.bus.send_bytes(node, data)

    def forward(self, node: str, destination: str, frame: bytes) -> bool:
        """
        Send a rendered frame for C{destination} to C{node}.

        :return: Whether Redis could be reached now.
        """
        if not self.link.bus.can_publish():
            return False
        self.link.bus.send(
            node, Envelope(RELAY, None, None, (destination,), frame.decode("utf-8"))
        )
        return True

    def _received(self, envelope: Envelope) -> None:
        kind, payload = envelope.kind, envelope.payload
        if not kind.startswith("peerjs:"):
            return
        if kind == RELAY:
            if isinstance(payload, str) and len(envelope.targets) == 1:
                self.receiver.forwarded(envelope.targets[0], payload.encode("utf-8"))
            return
        if not isinstance(payload, dict):
            self._log.warn("dropped a malformed PeerJS message from the bus")
            return
        peer_id, node = str(payload.get("id")), str(payload.get("node"))
        if kind == ONLINE:
            self._where[peer_id] = node
            self.receiver.came_online(peer_id, node)
        elif kind == OFFLINE and self._where.get(peer_id) == node:
            # Not if the id came online on another node meanwhile.
            del self._where[peer_id]

    def _node_dead(self, death: NodeDeath) -> None:
        for peer_id in death.peers:
            if self._where.get(peer_id) == death.node:
                del self._where[peer_id]
