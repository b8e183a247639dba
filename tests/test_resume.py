"""
The resumable connection and the in-memory session store, on a L{Clock}
and a hub, with a recording socket in place of the WebSocket.
"""

from __future__ import annotations

import gc
import tracemalloc

import orjson
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from signaling.errors import DeliveryRefused
from signaling.hub import CloseReason, Hub, IPeerConnection, Signal
from signaling.ids import IdSource
from signaling.resume import (
    HANDOVER_GRACE,
    ISessionStore,
    MemorySessionStore,
    ResumableConnection,
    ResumeSettings,
)

from .support import RecordingConnection, counting_random_bytes


class RecordingSocket:
    """
    What a L{ResumableConnection} sends through, recorded.
    """

    def __init__(self, refuse: str | None = None) -> None:
        self.frames: list[dict] = []
        self.failed: tuple[int, str] | None = None
        self.closed: CloseReason | None = None
        self.refuse = refuse

    def send(self, frame: bytes) -> None:
        if self.refuse:
            raise DeliveryRefused(self.refuse, "refused")
        self.frames.append(orjson.loads(frame))

    def fail(self, code: int, reason: str) -> None:
        self.failed = (code, reason)

    def close(self, reason: CloseReason) -> None:
        self.closed = reason


class TellingSocket(RecordingSocket):
    """
    A socket that, open, tells the client to reconnect when the server is
    going away, as the native dialect's does.
    """

    def __init__(self, connection: ResumableConnection) -> None:
        super().__init__()
        self.connection = connection

    def close(self, reason: CloseReason) -> None:
        super().close(reason)
        if reason is CloseReason.GOING_AWAY:
            self.connection.told_to_reconnect(self)


class SharedStore(MemorySessionStore):
    """
    A memory store that says other processes find its sessions, as a
    cluster's does.
    """

    shared = True


def body(event) -> dict | None:
    return (
        {"type": event.kind, "payload": event.payload}
        if isinstance(event, Signal)
        else None
    )


class ResumableConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = Hub(clock=self.clock, ids=IdSource(counting_random_bytes()))
        self.store = MemorySessionStore(ids=IdSource(counting_random_bytes()))
        self.connection = self.make(
            ResumeSettings(grace=10, max_messages=3, max_bytes=1000)
        )
        self.other = self.hub.connect(RecordingConnection())
        self.hub.join(self.connection.peer, "r")
        self.hub.join(self.other, "r")

    def make(self, settings: ResumeSettings) -> ResumableConnection:
        connection = ResumableConnection(self.hub, self.store, settings, body)
        connection.peer = self.hub.connect(connection)
        connection.attach(RecordingSocket())
        return connection

    def relay(self, text: str) -> None:
        self.hub.relay(
            self.other,
            "r",
            self.connection.peer.id,
            Signal("message", self.other.id, "r", text),
        )

    def test_a_session_with_nothing_kept_holds_no_queue(self) -> None:
        """
        A session with no frame kept, before the first or once the client
        acknowledged every one, holds no queue for them (an empty deque
        alone is about 600 bytes): measured with tracemalloc, 100 fresh
        sessions take under 400 bytes each, and a session that kept two
        frames is back to what it held before once they are acknowledged.
        """

        def held() -> int:
            gc.collect()
            return tracemalloc.get_traced_memory()[0]

        settings = ResumeSettings(grace=10)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = held()
        sessions = [
            ResumableConnection(self.hub, self.store, settings, body)
            for _ in range(100)
        ]
        self.assertLess((held() - before) / len(sessions), 400)
        self.relay("warm")
        self.connection.acknowledge(1)
        before = held()
        self.relay("x" * 2000)
        self.relay("y")
        self.connection.acknowledge(3)
        self.connection.socket.frames.clear()
        self.assertLess(held() - before, 200)

    def test_interfaces(self) -> None:
        verifyObject(IPeerConnection, self.connection)
        verifyObject(ISessionStore, self.store)

    def test_events_are_numbered_and_replayed_after_the_last_seen(self) -> None:
        """
        Events carry seq from 1; a new socket attached with C{last_seen}
        gets the later ones again, in order.
        """
        self.relay("a")
        self.relay("b")
        self.assertEqual([f["seq"] for f in self.connection.socket.frames], [1, 2])
        self.connection.detach(self.connection.socket)
        self.relay("c")
        socket = RecordingSocket()
        self.connection.attach(socket, last_seen=1)
        self.connection.replay()
        self.assertEqual(
            [(f["payload"], f["seq"]) for f in socket.frames], [("b", 2), ("c", 3)]
        )

    def test_a_refused_frame_is_not_kept_or_numbered(self) -> None:
        self.connection.socket.refuse = "buffer-full"
        self.assertRaises(DeliveryRefused, self.relay, "lost")
        self.connection.socket.refuse = None
        self.relay("next")
        self.assertEqual(
            self.connection.socket.frames,
            [{"type": "message", "payload": "next", "seq": 1}],
        )

    def going_away(self, store: MemorySessionStore) -> TellingSocket:
        """
        Attach a socket that tells its client to reconnect, then close the
        session as a drain does.
        """
        self.connection.store = store
        store.issue(self.connection)
        socket = TellingSocket(self.connection)
        self.connection.attach(socket)
        self.connection.close(CloseReason.GOING_AWAY)
        self.assertEqual(socket.closed, CloseReason.GOING_AWAY)
        return socket

    def test_going_away_ends_a_session_no_other_process_can_take(self) -> None:
        """
        A drain (L{CloseReason.GOING_AWAY}) without a cluster ends the
        session: no other process could resume it.
        """
        self.going_away(self.store)
        self.assertTrue(self.connection.ended)
        self.assertEqual(len(self.store), 0)

    def test_going_away_keeps_a_shared_session_for_a_handover(self) -> None:
        """
        Where other nodes find the sessions, a drain closes the socket but
        the session waits for its client to resume elsewhere, keeping what
        arrives for it meanwhile.
        """
        store = SharedStore(ids=IdSource(counting_random_bytes()))
        socket = self.going_away(store)
        self.assertIsNone(self.connection.socket)
        self.assertEqual(self.connection.transport_name, "away")
        self.relay("kept")
        # The socket's own close comes later: it changes nothing.
        self.connection.detach(socket, hold=False)
        self.assertFalse(self.connection.ended)
        self.assertEqual(len(store), 1)
        self.assertEqual(
            self.connection.hand_over()["kept"],
            [[1, '{"type":"message","payload":"kept","seq":1}']],
        )

    def test_a_shared_session_not_resumed_after_going_away_leaves(self) -> None:
        """
        It waits L{HANDOVER_GRACE} (at most the resume grace); then the
        peer leaves.
        """
        self.going_away(SharedStore(ids=IdSource(counting_random_bytes())))
        self.clock.advance(HANDOVER_GRACE - 0.1)
        self.assertIs(self.hub.find(self.connection.peer.id), self.connection.peer)
        self.clock.advance(0.1)
        self.assertTrue(self.connection.ended)
        self.assertIsNone(self.hub.find(self.connection.peer.id))
        [left] = self.other.connection.events
        self.assertEqual(left.member.peer_id, self.connection.peer.id)

    def test_a_socket_not_told_to_reconnect_ends_its_session(self) -> None:
        """
        A socket already closing (its client is leaving) tells nobody to
        reconnect: its session ends with the drain, shared store or not.
        """
        self.connection.store = SharedStore(ids=IdSource(counting_random_bytes()))
        self.connection.close(CloseReason.GOING_AWAY)
        self.assertTrue(self.connection.ended)

    def test_acknowledged_events_are_not_replayed(self) -> None:
        self.relay("a")
        self.relay("b")
        self.connection.acknowledge(2)
        self.connection.detach(self.connection.socket)
        socket = RecordingSocket()
        self.connection.attach(socket)
        self.connection.replay()
        self.assertEqual(socket.frames, [])

    def test_away_past_the_bound_is_refused(self) -> None:
        """
        While away at most C{max_messages} events wait; the next is refused
        as C{buffer-full} (the sender's C{dropped}).
        """
        self.connection.detach(self.connection.socket)
        for text in "abc":
            self.relay(text)
        error = self.assertRaises(DeliveryRefused, self.relay, "d")
        self.assertEqual(error.reason, "buffer-full")

    def test_connected_keeps_only_the_newest(self) -> None:
        for text in "abcde":
            self.relay(text)
        self.connection.detach(self.connection.socket)
        socket = RecordingSocket()
        self.connection.attach(socket, last_seen=0)
        self.connection.replay()
        self.assertEqual([f["payload"] for f in socket.frames], ["c", "d", "e"])

    def test_grace_expiry_leaves_the_hub_and_revokes_the_token(self) -> None:
        token = self.store.issue(self.connection)
        self.connection.detach(self.connection.socket)
        self.clock.advance(9.9)
        self.assertIs(self.hub.find(self.connection.peer.id), self.connection.peer)
        self.assertEqual(self.other.connection.events, [])
        self.clock.advance(0.1)
        self.assertIsNone(self.hub.find(self.connection.peer.id))
        self.assertEqual(type(self.other.connection.events[-1]).__name__, "PeerLeft")
        self.assertIsNone(self.store.claim(token))

    def test_a_closed_socket_leaves_at_once(self) -> None:
        self.connection.detach(self.connection.socket, hold=False)
        self.assertIsNone(self.hub.find(self.connection.peer.id))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_takeover_fails_the_old_socket_with_4000(self) -> None:
        old = self.connection.socket
        self.connection.attach(RecordingSocket())
        self.assertEqual(old.failed, (4000, "taken over by a resumed session"))
        self.connection.detach(old)
        self.assertIs(self.hub.find(self.connection.peer.id), self.connection.peer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_hub_removing_the_peer_ends_the_session(self) -> None:
        token = self.store.issue(self.connection)
        socket = self.connection.socket
        self.hub.disconnect(self.connection.peer)
        self.connection.close(CloseReason.STALE)
        self.assertIs(socket.closed, CloseReason.STALE)
        self.assertIsNone(self.store.claim(token))
        self.assertRaises(
            DeliveryRefused, self.connection.deliver, Signal("message", "x", "r", 1)
        )

    def test_a_handed_over_session_goes_on_where_it_is_adopted(self) -> None:
        """
        A session handed to another process ends here without leaving the
        hub, fails a socket still attached with 4000, and goes on there
        with its numbering and the events not acknowledged; unclaimed, it
        leaves the hub there after the grace.
        """
        token = self.store.issue(self.connection)
        self.relay("a")
        self.relay("b")
        self.connection.acknowledge(1)
        socket = self.connection.socket
        state = self.connection.hand_over()
        self.assertEqual(socket.failed, (4000, "taken over by a resumed session"))
        self.assertTrue(self.connection.ended)
        self.assertIsNone(self.store.claim(token))
        self.assertIs(self.hub.find(self.connection.peer.id), self.connection.peer)

        hub = Hub(clock=self.clock)
        adopted = ResumableConnection.adopted(
            hub, self.store, self.connection.settings, body, state
        )
        adopted.peer = hub.connect(adopted)
        adopted.attach(RecordingSocket(), last_seen=1)
        adopted.replay()
        adopted.deliver(Signal("message", "x", "r", "c"))
        self.assertEqual(
            [(f["payload"], f["seq"]) for f in adopted.socket.frames],
            [("b", 2), ("c", 3)],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

        waiting = ResumableConnection.adopted(
            hub, self.store, self.connection.settings, body, state
        )
        waiting.peer = hub.connect(waiting)
        self.clock.advance(10)
        self.assertIsNone(hub.find(waiting.peer.id))

    def test_a_state_that_is_not_a_handover_is_refused(self) -> None:
        for state in (
            {},
            {"next_seq": "x", "kept": []},
            {"next_seq": 1, "kept": [[1]]},
            None,
        ):
            self.assertRaises(
                ValueError,
                ResumableConnection.adopted,
                self.hub,
                self.store,
                self.connection.settings,
                body,
                state,
            )


class MemorySessionStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hub = Hub(clock=Clock())
        self.store = MemorySessionStore()
        self.session = ResumableConnection(self.hub, self.store, ResumeSettings(), body)

    def test_tokens_are_single_use_and_unguessable(self) -> None:
        token = self.store.issue(self.session)
        self.assertGreaterEqual(len(token), 43)
        self.assertIs(self.store.claim(token), self.session)
        self.assertIsNone(self.store.claim(token))
        self.assertIsNone(self.store.claim("A" * 43))

    def test_a_new_token_revokes_the_old(self) -> None:
        first = self.store.issue(self.session)
        second = self.store.issue(self.session)
        self.assertNotEqual(first, second)
        self.assertIsNone(self.store.claim(first))
        self.assertIs(self.store.claim(second), self.session)
        self.assertEqual(len(self.store), 0)
