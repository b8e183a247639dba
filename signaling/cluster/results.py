"""
What the bus answers with: its errors and the records of peers, members,
releases and dead nodes.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import HubError
from ..hub import Member
from .envelope import member_from_list, member_to_list


class BusUnavailable(HubError):
    """
    Redis cannot be reached now; the bus reconnects by itself.
    """

    code = "unavailable"


class DirectoryRefused(HubError):
    """
    Redis refused a userId registration under the directory dialect's rules.

    :ivar code: The directory's error code (C{key-mismatch},
        C{proof-required}, C{user-id-in-use}).
    :ivar holder: For C{user-id-in-use}: (node, peer id) of the holder, to
        be probed.
    """

    def __init__(self, code: str, holder: tuple[str, str] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.holder = holder


@attrs.frozen
class RemoteMember:
    """
    A room member somewhere in the cluster.

    :ivar node: The node that holds the peer ('' if Redis no longer knows).
    """

    node: str
    member: Member


@attrs.frozen
class Released:
    """
    What a peer gave up when it was released.

    :ivar left: (room, member) for every room it left.
    :ivar user_id: The userId that went offline, or L{None}.
    """

    left: tuple[tuple[str, Member], ...]
    user_id: str | None


@attrs.frozen
class NodeDeath:
    """
    A node stopped heartbeating and was reaped; its peers are gone.

    :ivar left: (room, member) for every room membership it held.
    :ivar user_ids: The directory userIds its peers held.
    """

    node: str
    peers: tuple[str, ...]
    left: tuple[tuple[str, Member], ...]
    user_ids: tuple[str, ...]


@attrs.frozen
class Registered:
    """
    A userId registration the directory accepted.

    :ivar went_online: Whether the userId was offline (or new) before.
    :ivar replaced: (node, peer id) of the connection it was taken over
        from, to be told, or L{None}.
    :ivar released: Another userId the peer held and gave up for this one.
    """

    went_online: bool
    replaced: tuple[str, str] | None
    released: str | None


@attrs.frozen
class ClusterStats:
    """
    The whole cluster's counts, as Redis has them now.
    """

    nodes: int
    peers: int
    rooms: int


@attrs.frozen
class UserBinding:
    """
    A userId's entry in the directory.

    :ivar node: The node holding it, '' while held for a reconnect.
    :ivar peer: The holding peer's id, '' while held.
    """

    user_id: str
    node: str
    peer: str
    public_key: str
    proven: bool

    @property
    def online(self) -> bool:
        return bool(self.peer)


def death_to_payload(death: NodeDeath) -> dict:
    """
    C{death} as the payload of the envelope that tells the other nodes.
    """
    return {
        "node": death.node,
        "peers": list(death.peers),
        "left": [[room, member_to_list(member)] for room, member in death.left],
        "users": list(death.user_ids),
    }


def death_from_payload(payload: Any) -> NodeDeath:
    """
    :raises InvalidEnvelope, KeyError, TypeError, ValueError: C{payload}
        is not what L{death_to_payload} makes.
    """
    return NodeDeath(
        node=str(payload["node"]),
        peers=tuple(str(peer) for peer in payload["peers"]),
        left=tuple(
            (str(room), member_from_list(member)) for room, member in payload["left"]
        ),
        user_ids=tuple(str(user) for user in payload["users"]),
    )
