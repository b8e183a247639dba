"""
Session resume: a peer whose socket died comes back within a grace period
under the same id, in the same rooms, and gets every event it missed exactly
once.

The hub never sees the socket come and go: the peer's hub connection is a
L{ResumableConnection}, which outlives the sockets it sends through. It
numbers every event it delivers (C{seq}), keeps each one until the client
acknowledges it, and while no socket is attached it keeps the new ones in
the same bounded queue. Where the connections live is the L{ISessionStore}'s
business; L{MemorySessionStore} keeps them in this process, and
L{signaling.cluster.sessions.ClusterSessionStore} finds them on any node of
a cluster, which hands the session over (L{ResumableConnection.hand_over},
L{ResumableConnection.adopted}).
"""

from __future__ import annotations

import base64
import collections
import hashlib
from typing import Any, Callable, ClassVar

import attrs
import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import Attribute, Interface, implementer

from .errors import DeliveryRefused
from .hub import CloseReason, Hub, IPeerConnection, Peer, Signal
from .ids import IdSource
from .logs import Logger

#: Random bytes in a resume token (256 bits).
TOKEN_BYTES = 32
#: WebSocket close code of a socket whose session was resumed on another
#: socket (a takeover): the server removed it, as for a stale peer.
CLOSE_TAKEN_OVER = 4000
#: Seconds a session of a draining node waits for its client to resume on
#: another node (after the C{reconnect} message's hint of 1 s and the
#: client's jitter), at most the resume grace; the drain waits for it.
HANDOVER_GRACE = 5.0


@attrs.frozen
class ResumeSettings:
    """
    :ivar grace: Seconds a peer whose socket died stays in its rooms,
        waiting for a resume; 0 turns resume off.
    :ivar max_messages: Events kept for one peer that it has not
        acknowledged (sent, or queued while it is away).
    :ivar max_bytes: Bytes of those events, as JSON.
    """

    grace: float = 30
    max_messages: int = 256
    max_bytes: int = 256 * 1024


class ISessionStore(Interface):
    """
    Where resumable sessions wait for their peer, under single-use tokens.
    """

    shared = Attribute(
        "Whether other processes find these sessions (a cluster): a session"
        " whose server is going away then waits for its client to resume"
        " elsewhere."
    )

    def issue(session: "ResumableConnection") -> str:
        """
        Bind a fresh token to C{session}, revoking the one it had.

        :return: The token, for the peer only.
        """

    def claim(token: str) -> "ResumableConnection | None":
        """
        Take the live session bound to C{token}, which is revoked.

        :return: L{None} for a token that is unknown, used or expired.
        """

    def forget(session: "ResumableConnection") -> None:
        """
        Revoke C{session}'s token: the session has ended.
        """

    def locate(
        token: str, settings: ResumeSettings, render: Callable[[Any], dict | None]
    ) -> defer.Deferred:
        """
        Like L{claim}, for a session that may be held by another process:
        that one hands it over, and it is rebuilt here with C{settings} and
        C{render} (see L{ResumableConnection}).

        :return: Fires with the session, or L{None} as L{claim} returns it.
        """


def _digest(token: str) -> bytes:
    # Tokens are looked up by digest, so that the lookup's timing tells
    # nothing of how much of a guessed token is right.
    return hashlib.sha256(token.encode("utf-8")).digest()


@implementer(ISessionStore)
@attrs.define(eq=False)
class MemorySessionStore:
    """
    The sessions of this process, in memory.
    """

    shared: ClassVar[bool] = False
    ids: IdSource = attrs.Factory(IdSource)
    _sessions: dict[bytes, "ResumableConnection"] = attrs.Factory(dict)
    _digests: dict[int, bytes] = attrs.Factory(dict)

    def issue(self, session: "ResumableConnection") -> str:
        self.forget(session)
        token = (
            base64.urlsafe_b64encode(self.ids.random_bytes(TOKEN_BYTES))
            .decode("ascii")
            .rstrip("=")
        )
        digest = _digest(token)
        self._sessions[digest] = session
        self._digests[id(session)] = digest
        return token

    def claim(self, token: str) -> "ResumableConnection | None":
        return self.claim_digest(_digest(token))

    def locate(
        self, token: str, settings: ResumeSettings, render: Callable[[Any], dict | None]
    ) -> defer.Deferred:
        return defer.succeed(self.claim(token))

    def digest_of(self, session: "ResumableConnection") -> bytes | None:
        """
        The digest of C{session}'s token, or L{None} if it has none.
        """
        return self._digests.get(id(session))

    def claim_digest(self, digest: bytes) -> "ResumableConnection | None":
        """
        L{claim} the session whose token has C{digest}.
        """
        session = self._sessions.pop(digest, None)
        if session is None:
            return None
        del self._digests[id(session)]
        return None if session.ended else session

    def forget(self, session: "ResumableConnection") -> None:
        digest = self._digests.pop(id(session), None)
        if digest is not None:
            del self._sessions[digest]

    def __len__(self) -> int:
        return len(self._sessions)


@implementer(IPeerConnection)
class ResumableConnection:
    """
    A peer's hub connection across the sockets of its resumes.

    :ivar socket: The socket attached now (an C{IFrameSink} that is also an
        L{IPeerConnection}), or L{None} during the grace.
    :ivar ended: Whether the session is over (the peer left the hub).
    :ivar expires: When the token the session was proved with expires
        (seconds since the epoch), or L{None}.
    """

    _log = Logger()
    expires: float | None = None

    def __init__(
        self,
        hub: Hub,
        store: ISessionStore,
        settings: ResumeSettings,
        render: Callable[[Any], dict | None],
    ) -> None:
        """
        :param render: The body of a hub event's frame, without its
            C{seq}, or L{None} for an event the peer is not shown.
        """
        self.hub = hub
        self.store = store
        self.settings = settings
        self.render = render
        self.peer: Peer | None = None
        self.socket: Any = None
        self.ended = False
        self.next_seq = 1
        # The frames not acknowledged yet, oldest first. Their numbers run
        # without a gap up to next_seq - 1, so only the frames are kept: no
        # tuple or number per message for the garbage collector to scan.
        # Nothing kept is an empty tuple: an empty deque holds a block of 64
        # slots (about 600 bytes), more than an idle peer's frames.
        self._kept: collections.deque[bytes] | tuple[()] = ()
        self._kept_bytes = 0
        self._grace: IDelayedCall | None = None

    @property
    def clock(self) -> IReactorTime:
        return self.hub.clock

    @property
    def transport_name(self) -> str:
        """
        What carries the peer now, for C{/metrics}: its socket's, or
        C{"away"} during the grace.
        """
        if self.socket is None:
            return "away"
        return getattr(self.socket, "transport_name", "other")

    # IPeerConnection

    def deliver(self, event: Any) -> None:
        if self.ended:
            raise DeliveryRefused("closed", "the peer has gone")
        try:
            body = self.render(event)
        except Exception:
            self._log.failure("rendering a hub event failed")
            self.close(CloseReason.FAILED)
            raise DeliveryRefused("closed", "the recipient failed")
        if body is None:
            return
        seq = self.next_seq
        body["seq"] = seq
        frame = orjson.dumps(body)
        if self.socket is None:
            if not self._room_for(len(frame)):
                raise DeliveryRefused(
                    "buffer-full", "the recipient is reconnecting and its queue is full"
                )
        else:
            # A frame the socket refuses was not sent: it is not kept, and
            # its number is given to the next one.
            self.socket.send(frame)
            timer = self.hub.counters.relay_timer
            if (
                timer is not None
                and timer.arrived_at is not None
                and type(event) is Signal
            ):
                timer.written()
        self.next_seq = seq + 1
        self._keep(frame)

    def close(self, reason: CloseReason) -> None:
        """
        The hub removed the peer (stale, or failed): the session ends. Or
        the server is going away: a session whose client its socket told
        to reconnect may wait for it (L{told_to_reconnect}).
        """
        if reason is CloseReason.GOING_AWAY and self.socket is not None:
            self.socket.close(reason)
            if self.socket is None:
                return
        self._end()
        if self.socket is not None:
            self.socket.close(reason)

    def told_to_reconnect(self, socket: Any) -> None:
        """
        The server told the client on C{socket} to come back, maybe to
        another node, and closes the socket. Where another node can take
        the session over (a shared store), it comes off the socket at once,
        so that what arrives from now on is kept for the node the client
        resumes on, and waits L{HANDOVER_GRACE} for it; elsewhere it ends
        with the socket, as no other process could resume it.
        """
        if socket is not self.socket or self.ended or not self.store.shared:
            return
        self.socket = None
        self._grace = self.clock.callLater(
            min(self.settings.grace, HANDOVER_GRACE), self._expire
        )

    # sockets

    def attach(self, socket: Any, last_seen: int | None = None) -> None:
        """
        Send through C{socket} from now on; a socket still attached is
        closed with L{CLOSE_TAKEN_OVER}.

        :param last_seen: The last C{seq} the client processed, if it said.
        """
        self._cancel_grace()
        previous, self.socket = self.socket, socket
        if previous is not None:
            self._log.info(
                "{peer} resumed on a new socket; closing the old one", peer=self.peer.id
            )
            previous.fail(CLOSE_TAKEN_OVER, "taken over by a resumed session")
        if last_seen is not None:
            self.acknowledge(last_seen)

    def replay(self) -> None:
        """
        Send what the client has not acknowledged, in order.
        """
        socket = self.socket
        for seq, frame in self._numbered():
            try:
                socket.send(frame)
            except DeliveryRefused:
                # Sending later ones would break the order: the client
                # resumes again and gets the rest then.
                self._log.info(
                    "replay to {peer} refused at {seq}", peer=self.peer.id, seq=seq
                )
                socket.fail(CLOSE_TAKEN_OVER, "replay refused; resume again")
                return

    def detach(self, socket: Any, hold: bool = True) -> None:
        """
        C{socket} closed: unless it was replaced, wait for a resume for the
        grace period.

        :param hold: Whether the session may wait; L{False} ends it (the
            client closed the socket on purpose, or the server failed it).
        """
        if socket is not self.socket:
            return
        self.socket = None
        if self.ended or not hold:
            self.end()
            return
        self._grace = self.clock.callLater(self.settings.grace, self._expire)

    def hand_over(self) -> dict[str, Any]:
        """
        Give the session to another process (its peer resumed there): a
        socket still attached is closed with L{CLOSE_TAKEN_OVER}, and the
        session ends here without its peer leaving the hub (the caller
        moves the peer).

        :return: What L{adopted} needs to go on: the numbering, the events
            not acknowledged (frames as text), the expiry.
        """
        self._cancel_grace()
        socket, self.socket = self.socket, None
        if socket is not None:
            self._log.info(
                "{peer} resumed on another node; closing the old socket",
                peer=self.peer.id,
            )
            socket.fail(CLOSE_TAKEN_OVER, "taken over by a resumed session")
        state = {
            "next_seq": self.next_seq,
            "kept": [[seq, frame.decode("utf-8")] for seq, frame in self._numbered()],
            "expires": self.expires,
        }
        self._end()
        return state

    @classmethod
    def adopted(
        cls,
        hub: Hub,
        store: ISessionStore,
        settings: ResumeSettings,
        render: Callable[[Any], dict | None],
        state: dict[str, Any],
    ) -> "ResumableConnection":
        """
        The session another process handed over (L{hand_over}), waiting for
        its socket for the grace period like one whose socket died.

        :raises ValueError: C{state} is not what L{hand_over} makes.
        """
        session = cls(hub, store, settings, render)
        try:
            session.next_seq = int(state["next_seq"])
            kept = state["kept"]
            first = session.next_seq - len(kept)
            for offset, (seq, frame) in enumerate(kept):
                if int(seq) != first + offset:
                    raise ValueError("the kept events are not numbered without a gap")
                session._keep(frame.encode("utf-8"))
            expires = state.get("expires")
            session.expires = None if expires is None else float(expires)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"not a handed-over session: {error}") from error
        session._grace = session.clock.callLater(settings.grace, session._expire)
        return session

    def acknowledge(self, seq: int) -> None:
        """
        The client processed every event up to C{seq}: forget them.
        """
        kept = self._kept
        if not kept:
            return
        for _ in range(min(len(kept), seq - (self.next_seq - len(kept)) + 1)):
            self._kept_bytes -= len(kept.popleft())
        if not kept:
            self._kept = ()

    def end(self) -> None:
        """
        The session is over: leave the hub now.
        """
        self._end()
        self._leave_hub()

    # internals

    def _room_for(self, size: int) -> bool:
        settings = self.settings
        return (
            len(self._kept) < settings.max_messages
            and self._kept_bytes + size <= settings.max_bytes
        )

    def _numbered(self) -> list[tuple[int, bytes]]:
        """
        The kept frames with their numbers, oldest first.
        """
        first = self.next_seq - len(self._kept)
        return [(first + offset, frame) for offset, frame in enumerate(self._kept)]

    def _keep(self, frame: bytes) -> None:
        """
        Keep C{frame}, numbered C{next_seq - 1}, until it is acknowledged.
        """
        kept = self._kept
        if not kept:
            kept = self._kept = collections.deque()
        kept.append(frame)
        self._kept_bytes += len(frame)
        # While connected, the oldest unacknowledged events give way: they
        # reached the socket, and a client that acknowledges keeps few.
        settings = self.settings
        while len(kept) > 1 and (
            len(kept) > settings.max_messages or self._kept_bytes > settings.max_bytes
        ):
            self._kept_bytes -= len(kept.popleft())

    def _expire(self) -> None:
        self._grace = None
        self._log.info("{peer} did not resume in time", peer=self.peer.id)
        self._end()
        self._leave_hub()

    def _end(self) -> None:
        self.ended = True
        self._cancel_grace()
        self.store.forget(self)
        self._kept = ()
        self._kept_bytes = 0

    def _leave_hub(self) -> None:
        if self.peer is not None:
            self.hub.disconnect(self.peer)

    def _cancel_grace(self) -> None:
        grace, self._grace = self._grace, None
        if grace is not None and grace.active():
            grace.cancel()
