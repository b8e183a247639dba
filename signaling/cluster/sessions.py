"""
Session resume across the nodes of a cluster (docs/clients.rst, "Resume
across workers and hosts").

A node keeps its own peers' sessions in memory, as without a cluster, and
names itself in Redis as the holder of each token (C{resume:<digest>}). A
resume that lands on another node takes the token there, once in the
whole cluster (a Lua script), and asks the holder over the bus to hand the
session over (L{signaling.cluster.link.ClusterLink.request_handover}).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import attrs
from twisted.internet import defer
from zope.interface import implementer

from ..logs import Logger
from ..resume import (
    ISessionStore,
    MemorySessionStore,
    ResumableConnection,
    ResumeSettings,
    _digest,
)
from .link import ClusterLink

#: Seconds Redis keeps a token's holder: a session lives as long as its
#: socket, and the holder forgets the token when the session ends; this
#: only bounds what a node that died without forgetting leaves behind.
TOKEN_TTL = 24 * 3600.0


@implementer(ISessionStore)
@attrs.define(eq=False)
class ClusterSessionStore:
    """
    The sessions of this node, found from any node of the cluster.
    """

    #: Any node of the cluster finds these sessions.
    shared: ClassVar[bool] = True
    link: ClusterLink
    local: MemorySessionStore
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        self.link.sessions = self

    def issue(self, session: ResumableConnection) -> str:
        self._forget_in_redis(self.local.digest_of(session))
        token = self.local.issue(session)
        self._quietly(self.link.bus.issue_resume(_digest(token).hex(), TOKEN_TTL))
        return token

    def claim(self, token: str) -> ResumableConnection | None:
        session = self.local.claim(token)
        if session is not None:
            self._forget_in_redis(_digest(token))
        return session

    def forget(self, session: ResumableConnection) -> None:
        digest = self.local.digest_of(session)
        self.local.forget(session)
        self._forget_in_redis(digest)

    @defer.inlineCallbacks
    def locate(
        self, token: str, settings: ResumeSettings, render: Callable[[Any], dict | None]
    ):
        session = self.claim(token)
        if session is not None:
            return session
        digest = _digest(token).hex()
        try:
            holder = yield self.link.bus.claim_resume(digest)
        except Exception as error:
            # Redis is away: a fresh session, as for an unknown token.
            self._log.info(
                "could not look a resume token up: {error}", error=str(error)
            )
            return None
        if holder is None or holder == self.link.bus.node_id:
            return None
        state = yield self.link.request_handover(holder, digest)
        if state is None:
            return None
        try:
            session = ResumableConnection.adopted(
                self.link.hub, self, settings, render, state.get("session")
            )
        except (ValueError, AttributeError) as error:
            self._log.warn(
                "a handed-over session was not valid: {error}", error=str(error)
            )
            return None
        try:
            session.peer = self.link.adopt(state, session)
        except Exception:
            # A bug: the client gets a fresh session, not a failed handshake.
            self._log.failure("adopting a handed-over session failed")
            session.peer = None
        if session.peer is None:
            session.end()
            return None
        return session

    def hand_over(self, digest: str) -> ResumableConnection | None:
        """
        Take this node's session whose token has C{digest} (hex), for
        another node whose client presented the token.
        """
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            return None
        return self.local.claim_digest(raw)

    def __len__(self) -> int:
        return len(self.local)

    def _forget_in_redis(self, digest: bytes | None) -> None:
        if digest is not None:
            self._quietly(self.link.bus.forget_resume(digest.hex()))

    def _quietly(self, operation: defer.Deferred) -> None:
        # Redis away: the token is found nowhere else, which leaves resume
        # on this node as without a cluster.
        operation.addErrback(
            lambda failure: self._log.debug(
                "resume token bookkeeping failed: {error}",
                error=failure.getErrorMessage(),
            )
        )
