"""
Many WebSocket connections closing in one turn of the reactor (a mass drop):
their close work runs in batches over the next turns, and everyone left
hears of everyone gone.
"""

import gc
import types

from twisted.internet.error import ConnectionLost
from twisted.trial.unittest import SynchronousTestCase

from signaling.dialects.peerjs import PeerJSSettings
from signaling.hub import HubLimits
from signaling.transports.websocket import WebSocketSettings

from .support import Harness


class CloseTestCase(SynchronousTestCase):
    settings = WebSocketSettings(ping_interval=0, closes_per_turn=3)

    def setUp(self):
        self.harness = Harness(HubLimits(), self.settings)
        self.addCleanup(self.harness.restore)

    def connect(self, path="/ws/room"):
        client = self.harness.connect(path)
        client.peer_id = client.take()[0]["selfId"]
        return client

    def drop_together(self, clients):
        """
        Their sockets all go in one turn, as epoll reports a mass drop: each
        server protocol's connectionLost, with no turn of the clock between.
        """
        for client in clients:
            for transport in (client.transport, client.server_transport):
                transport.disconnectReason = ConnectionLost("gone")
                transport.disconnecting = transport.disconnected = True
        for client in clients:
            client.server_transport.reportDisconnect()
            client.transport.reportDisconnect()

    def move_bytes(self):
        """
        Move bytes between the clients still connected, without a turn of
        the clock.
        """
        for pump in self.harness.pumps:
            if not pump.serverIO.disconnected:
                pump.pump()

    def next_turn(self):
        self.harness.turn()
        self.move_bytes()

    def left(self, client):
        return [m["peerId"] for m in client.take() if m["type"] == "peer-left"]


class MassCloseTests(CloseTestCase):
    def test_a_burst_of_closes_is_handled_in_batches(self):
        """
        Beyond C{closes_per_turn} closes in one turn, the rest wait for the
        next turns, C{closes_per_turn} a turn; in the end the one member
        left has a C{peer-left} for each of the others, once, in the order
        they dropped, and the hub holds only it.
        """
        stays = self.connect()
        going = [self.connect() for _ in range(7)]
        stays.take()
        hub = self.harness.hub
        self.drop_together(going)
        self.move_bytes()
        self.assertEqual(self.left(stays), [c.peer_id for c in going[:3]])
        self.assertEqual(hub.stats().peers_total, 5)
        self.next_turn()
        self.assertEqual(self.left(stays), [c.peer_id for c in going[3:6]])
        self.assertEqual(hub.stats().peers_total, 2)
        self.next_turn()
        self.assertEqual(self.left(stays), [going[6].peer_id])
        self.assertEqual(list(hub.room("room").members), [stays.peer_id])
        self.assertEqual(hub.stats().peers_total, 1)
        self.next_turn()
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])
        self.assertEqual(stays.take(), [])

    def test_rooms_dropped_whole_are_deleted(self):
        """
        Rooms whose every member dropped in the burst are gone once the
        batches are through, and nobody was left in the hub.
        """
        clients = [self.connect(f"/ws/room{i // 2}") for i in range(8)]
        self.drop_together(clients)
        for _ in range(3):
            self.next_turn()
        stats = self.harness.hub.stats()
        self.assertEqual((stats.peers_total, stats.rooms_total), (0, 0))
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def test_a_close_is_handled_at_once(self):
        """
        A connection closing on its own is out of its room before the turn
        ends, and leaves nothing scheduled.
        """
        alice = self.connect()
        bob = self.connect()
        alice.take()
        self.drop_together([bob])
        self.move_bytes()
        self.assertEqual(self.left(alice), [bob.peer_id])
        self.assertEqual(self.harness.hub.stats().peers_total, 1)
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def test_a_handshake_between_batches(self):
        """
        A client connecting while closes wait is taken in at once; it is
        told of the peers whose close waits, then that each has left.
        """
        going = [self.connect() for _ in range(7)]
        self.drop_together(going)
        newcomer = self.harness.connect("/ws/room", turn_clock=False)
        welcome, peer_list = newcomer.take()
        self.assertEqual(welcome["type"], "welcome")
        waiting = [c.peer_id for c in going[3:]]
        self.assertEqual([p["id"] for p in peer_list["peers"]], waiting)
        self.next_turn()
        self.next_turn()
        self.assertEqual(self.left(newcomer), waiting)
        self.assertEqual(
            list(self.harness.hub.room("room").members), [welcome["selfId"]]
        )


class NoBatchingTests(CloseTestCase):
    settings = WebSocketSettings(ping_interval=0, closes_per_turn=0)

    def test_a_burst_of_closes_is_handled_in_batches(self):
        """
        With C{closes_per_turn} 0 every close in a burst is handled in its
        turn.
        """
        stays = self.connect()
        going = [self.connect() for _ in range(7)]
        stays.take()
        self.drop_together(going)
        self.move_bytes()
        self.assertEqual(self.left(stays), [c.peer_id for c in going])
        self.assertEqual(self.harness.hub.stats().peers_total, 1)
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    test_rooms_dropped_whole_are_deleted = (
        MassCloseTests.test_rooms_dropped_whole_are_deleted
    )
    test_a_close_is_handled_at_once = MassCloseTests.test_a_close_is_handled_at_once


def in_a_cycle(start, *shared) -> bool:
    """
    Whether C{start} can be reached again from what it refers to, other
    than through classes, modules, functions and the long-lived C{shared}
    objects (its factory: the reactor, the modules, the log buffer).
    """
    seen = {id(start)} | {id(obj) for obj in shared}
    todo = list(gc.get_referents(start))
    while todo:
        obj = todo.pop()
        if obj is start:
            return True
        if id(obj) in seen or isinstance(
            obj, (type, types.ModuleType, types.FunctionType)
        ):
            continue
        seen.add(id(obj))
        todo.extend(gc.get_referents(obj))
    return False


class GarbageTests(SynchronousTestCase):
    def test_a_closed_connection_is_not_left_in_a_cycle(self):
        """
        Nothing a closed WebSocket connection's protocol holds leads back to
        it, so reference counting frees it and closes need no full
        collection.
        """
        harness = Harness(HubLimits(), WebSocketSettings(ping_interval=0))
        self.addCleanup(harness.restore)
        alice = harness.connect("/ws/room")
        bob = harness.connect("/ws/room")
        server = harness.server_side(bob)
        self.assertTrue(in_a_cycle(server, server.factory))
        bob.transport.loseConnection()
        harness.flush()
        self.assertEqual(harness.hub.stats().peers_total, 1)
        # As a TCP transport does once it has told its protocol.
        bob.server_transport.protocol = None
        self.assertFalse(in_a_cycle(server, server.factory))
        self.assertTrue(alice.connected)


class PeerJSMassCloseTests(CloseTestCase):
    """
    PeerJS clients (peer.reconnect() presents the same id and token) come
    back while their old socket's close still waits.
    """

    def setUp(self):
        self.harness = Harness(
            HubLimits(), self.settings, peerjs=PeerJSSettings(path="/peerjs")
        )
        self.addCleanup(self.harness.restore)

    def open(self, peer_id, turn_clock=True):
        client = self.harness.connect(
            f"/peerjs/peerjs?key=peerjs&id={peer_id}&token=t&version=1.5.5",
            turn_clock=turn_clock,
        )
        client.peer_id = peer_id
        return client

    def test_back_before_the_close_is_handled(self):
        """
        The id is the new socket's, at once and after the old close has run;
        messages to it reach the new socket.
        """
        old = [self.open(f"p{i}") for i in range(5)]
        for client in old:
            self.assertEqual(client.take(), [{"type": "OPEN"}])
        self.drop_together(old)
        back = self.open("p4", turn_clock=False)
        self.assertEqual(back.take(), [{"type": "OPEN"}])
        for _ in range(3):
            self.next_turn()
        self.assertEqual(self.harness.peerjs.ids(), ["p4"])
        sender = self.open("p9")
        sender.take()
        sender.send_json({"type": "OFFER", "dst": "p4", "payload": {"sdp": "x"}})
        self.harness.flush()
        self.assertEqual(back.take()[0]["src"], "p9")
        self.assertIsNone(back.close_code)
