"""
A mass close spread over reactor turns (L{fastpath.SlicedPoll}): new
connections are taken in and answered before the backlog of closes, on a
real epoll reactor driven by hand, one turn at a time.
"""

from __future__ import annotations

import io
import socket
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import FileLogObserver, globalLogPublisher
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from signaling import fastpath

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux
    EPollReactor = None

#: Connections dropped at once in each test: more than a few slices' worth.
DROPPED = 600
PER_TURN = 100


class Answering(Protocol):
    """
    Answers the first bytes it gets with C{b"hi"}, is watched early while
    a backlog lasts (as the HTTP channel is on the fast paths), and notes
    what happens to it in the factory's C{events}.
    """

    def connectionMade(self) -> None:
        self.factory.accepted.append(self)
        fastpath.watch_while_slicing(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.factory.events.append("answered")
        if self.factory.log is not None:
            self.factory.log({"text": "answered"})
        self.transport.write(b"hi")

    def connectionLost(self, reason: Any) -> None:
        self.factory.events.append("lost")
        if self.factory.on_lost is not None:
            self.factory.on_lost(self.factory.events.count("lost"))


class SlicedPollTests(SynchronousTestCase):
    def setUp(self) -> None:
        if EPollReactor is None:
            self.skipTest("epoll is Linux only")
        self.reactor = reactor = EPollReactor()
        self.addCleanup(self._close_reactor)
        self.factory = Factory.forProtocol(Answering)
        self.factory.accepted = []
        self.factory.events = []
        self.factory.on_lost = None
        self.factory.log = None
        self.port = reactor.listenTCP(
            0, self.factory, backlog=2 * DROPPED, interface="127.0.0.1"
        )
        self.address = ("127.0.0.1", self.port.getHost().port)
        self.clients: list[socket.socket] = []

    def _close_reactor(self) -> None:
        for client in self.clients:
            client.close()
        for selectable in self.reactor.removeAll():
            sock = getattr(selectable, "socket", None)
            if sock is not None:
                sock.close()
        self.port.socket.close()
        self.reactor._poller.close()

    def connect(self, request: bytes = b"") -> socket.socket:
        client = socket.create_connection(self.address, timeout=5)
        self.clients.append(client)
        if request:
            client.sendall(request)
        return client

    def turn_until(self, done) -> None:
        for _ in range(1000):
            if done():
                return
            self.reactor.doIteration(0)
        self.fail("the reactor did not get there")

    def drop_connected(self) -> None:
        """
        Connect L{DROPPED} clients, have the server accept them all, then
        close them all at once: the server has that many ends of stream
        ready, before anything else.
        """
        dropped = [self.connect() for _ in range(DROPPED)]
        self.turn_until(lambda: len(self.factory.accepted) == DROPPED)
        # One quiet turn: epoll drops the listening socket from its ready
        # list, so that it comes after the closes, as in a real storm.
        self.reactor.doIteration(0)
        for client in dropped:
            client.close()
            self.clients.remove(client)

    def answered(self, client: socket.socket) -> bytes:
        """
        What C{client} got, once the reactor has written it.
        """
        client.setblocking(False)
        received = b""
        for _ in range(100):
            self.reactor.doIteration(0)
            try:
                received += client.recv(2)
            except BlockingIOError:
                continue
            if len(received) >= 2:
                break
        return received

    def closes_before_answers(self) -> list[int]:
        events = self.factory.events
        return [
            events[:at].count("lost")
            for at, event in enumerate(events)
            if event == "answered"
        ]

    def test_a_new_connection_is_answered_before_the_backlog(self):
        """
        A client that connects and sends its request while thousands of
        closes wait is accepted in the next turn and answered in the one
        after, before the rest of them; every close is handled a turn's
        worth at a time.
        """
        fastpath.SlicedPoll(self.reactor, per_turn=PER_TURN).install()
        self.drop_connected()
        self.reactor.doIteration(0)
        self.assertEqual(self.factory.events, ["lost"] * PER_TURN)
        newcomer = self.connect(b"hello")
        self.reactor.doIteration(0)
        self.assertEqual(len(self.factory.accepted), DROPPED + 1)
        self.reactor.doIteration(0)
        self.assertEqual(self.closes_before_answers(), [2 * PER_TURN])
        self.assertEqual(self.answered(newcomer), b"hi")
        self.turn_until(lambda: self.factory.events.count("lost") == DROPPED)

    def test_a_request_arriving_later_is_answered_before_the_backlog(self):
        """
        A connection accepted while closes wait, whose request comes in
        later, is answered in the turn after its request arrives.
        """
        fastpath.SlicedPoll(self.reactor, per_turn=PER_TURN).install()
        self.drop_connected()
        self.reactor.doIteration(0)
        newcomer = self.connect()
        self.reactor.doIteration(0)
        self.assertEqual(len(self.factory.accepted), DROPPED + 1)
        newcomer.sendall(b"hello")
        self.reactor.doIteration(0)
        self.assertEqual(len(self.closes_before_answers()), 1)
        self.assertLess(self.closes_before_answers()[0], 3 * PER_TURN)
        self.assertEqual(self.answered(newcomer), b"hi")
        self.turn_until(lambda: self.factory.events.count("lost") == DROPPED)

    def test_new_connections_wait_while_descriptors_are_short(self):
        """
        While the backlog's sockets leave fewer than the reserve of
        descriptors free, new connections wait (accepted, they would be
        closed again for want of one); as closes free some, they are taken
        in and answered, none lost.
        """
        self.drop_connected()
        # What the turns count: every descriptor the reactor watches.
        in_use = len(self.reactor._selectables)
        # Descriptors to spare only once 250 connections have closed.
        limit = in_use + fastpath.DESCRIPTOR_RESERVE - 250
        fastpath.SlicedPoll(
            self.reactor, per_turn=PER_TURN, descriptor_limit=lambda: limit
        ).install()
        self.reactor.doIteration(0)
        newcomers = [self.connect(b"hello") for _ in range(3)]
        self.turn_until(lambda: self.factory.events.count("answered") == 3)
        self.assertGreaterEqual(min(self.closes_before_answers()), 250)
        for newcomer in newcomers:
            self.assertEqual(self.answered(newcomer), b"hi")
        self.turn_until(lambda: self.factory.events.count("lost") == DROPPED)

    def test_twisted_alone_answers_after_every_close(self):
        """
        Without the slices (Twisted's own turn), the same newcomer waits
        behind every close: what the slices are for.
        """
        self.drop_connected()
        self.reactor.doIteration(0)
        newcomer = self.connect(b"hello")
        self.turn_until(lambda: "answered" in self.factory.events)
        self.assertEqual(self.closes_before_answers(), [DROPPED])
        self.assertEqual(self.answered(newcomer), b"hi")

    def test_an_error_closing_one_socket_spares_the_others(self):
        """
        A protocol that raises as its connection is lost has the error
        logged; the other sockets ready in the same turn are handled.
        """
        fastpath.SlicedPoll(self.reactor, per_turn=DROPPED + 10).install()

        def fail_first(lost: int) -> None:
            if lost == 1:
                raise ZeroDivisionError("in connectionLost")

        self.factory.on_lost = fail_first
        self.drop_connected()
        self.reactor.doIteration(0)
        self.assertEqual(self.factory.events, ["lost"] * DROPPED)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_a_small_batch_is_one_turn(self):
        """
        Up to the limit per turn, and with no backlog, a turn handles
        everything ready as Twisted does, in the order epoll reports it.
        """
        fastpath.SlicedPoll(self.reactor, per_turn=DROPPED + 10).install()
        self.drop_connected()
        newcomer = self.connect(b"hello")
        self.reactor.doIteration(0)
        self.assertEqual(self.factory.events, ["lost"] * DROPPED)
        # Accepted in that turn, read in the next.
        self.reactor.doIteration(0)
        self.assertEqual(self.closes_before_answers(), [DROPPED])
        self.assertEqual(self.answered(newcomer), b"hi")

    def test_a_batchs_log_lines_are_written_at_once(self):
        """
        With the fast paths on, the lines a batch of sockets logs through
        twistd's file observer are written in order, in one write, at the
        end of the batch; a line logged outside one is written at once.
        """
        self.addCleanup(fastpath.install)
        if not fastpath.install():
            raise SkipTest("the fast paths are off for the installed versions")
        fastpath.SlicedPoll(self.reactor, per_turn=PER_TURN).install()
        output = _CountingFile()
        self.factory.log = FileLogObserver(output, lambda event: event["text"] + "\n")
        clients = [self.connect() for _ in range(5)]
        self.turn_until(lambda: len(self.factory.accepted) == 5)
        for client in clients:
            client.sendall(b"hello")
        self.turn_until(lambda: output.getvalue().count("answered") == 5)
        self.assertEqual((output.writes, output.flushes), (1, 1))
        self.factory.log({"text": "alone"})
        self.assertEqual((output.writes, output.flushes), (2, 2))
        self.assertEqual(output.getvalue(), "answered\n" * 5 + "alone\n")
        fastpath.install(enabled=False)
        self.factory.log({"text": "plain"})
        self.assertEqual((output.writes, output.flushes), (3, 3))

    def test_a_log_that_cannot_be_written_is_reported(self):
        """
        A batch's lines that cannot be written are reported through the
        log, as Twisted reports its own failed write, and the reactor goes
        on.
        """
        self.addCleanup(fastpath.install)
        if not fastpath.install():
            raise SkipTest("the fast paths are off for the installed versions")
        fastpath.SlicedPoll(self.reactor, per_turn=PER_TURN).install()
        output = _CountingFile()
        output.close()
        self.factory.log = FileLogObserver(output, lambda event: event["text"] + "\n")
        failures = []

        def observe(event):
            if event.get("log_format") == "writing the log failed":
                failures.append(event["log_failure"].value)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        client = self.connect(b"hello")
        self.assertEqual(self.answered(client), b"hi")
        self.assertEqual([type(failure) for failure in failures], [ValueError])
        self.flushLoggedErrors(ValueError)


class _CountingFile(io.StringIO):
    writes = 0
    flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class InstallTests(SynchronousTestCase):
    def test_only_on_twisteds_epoll_reactor(self):
        """
        Another reactor (here a test double) keeps its own loop.
        """
        reactor = MemoryReactor()
        self.assertFalse(fastpath.slice_large_batches(reactor))
        self.assertNotIsInstance(
            getattr(reactor, "doIteration", None), fastpath.SlicedPoll
        )

    def test_on_an_epoll_reactor(self):
        if EPollReactor is None:
            self.skipTest("epoll is Linux only")
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        self.assertTrue(fastpath.slice_large_batches(reactor))
        self.assertIsInstance(reactor.doIteration, fastpath.SlicedPoll)
