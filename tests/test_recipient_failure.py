"""
A recipient whose render raises is closed with its transport's error close,
in every transport; the rest of the room still gets the event, the sender
stays, and the hub forgets the failed peer.
"""

from __future__ import annotations

from signaling.transports.websocket import WebSocketSettings

from .socketio_support import SocketIOCase
from .support import BrokenEventSet, broken_render


class RecipientFailureTests(SocketIOCase):
    settings = WebSocketSettings(ping_interval=25, ping_timeout=20)

    def setUp(self) -> None:
        super().setUp()
        self.sender = self.native("sender")
        self.other = self.native("other")

    def native(self, name: str):
        client = self.harness.connect("/signal")
        [welcome] = client.take()
        client.id = welcome["peerId"]
        client.send_json({"type": "join", "room": "room", "metadata": {"name": name}})
        self.harness.flush()
        client.take()
        return client

    def broadcast(self) -> None:
        """
        The sender relays an ICE candidate to the room; the others' earlier
        frames are dropped first.
        """
        self.harness.flush()
        self.other.take()
        self.sender.take()
        self.sender.send_json(
            {"type": "candidate", "room": "room", "payload": {"candidate": "c"}}
        )
        self.harness.flush()

    def assertRestOfRoomServed(self, failed_id: str) -> None:
        """
        The other member got the candidate and then heard the failed peer
        leave; the sender heard only that, and is still open; the hub has
        forgotten the failed peer.
        """
        received = self.other.take()
        self.assertEqual(
            received[0],
            {
                "type": "candidate",
                "room": "room",
                "from": self.sender.id,
                "payload": {"candidate": "c"},
            },
        )
        self.assertEqual([m["type"] for m in received[1:]], ["peer-left"])
        self.assertEqual(received[1]["peer"]["id"], failed_id)
        self.assertEqual([m["type"] for m in self.sender.take()], ["peer-left"])
        self.assertIsNone(self.sender.close_code)
        self.assertIsNone(self.hub.find(failed_id))
        self.assertEqual(
            set(self.hub.room("room").members), {self.sender.id, self.other.id}
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_native_websocket(self) -> None:
        """
        A native WebSocket recipient is closed with 1011.
        """
        broken = self.native("broken")
        self.harness.server_side(broken).session.render = broken_render
        self.broadcast()
        self.assertRestOfRoomServed(broken.id)
        self.assertEqual(broken.close_code, 1011)

    def socketio_join(self, emit, events) -> None:
        emit("join-room", {"roomId": "room"})
        self.assertEqual(events()[0][0], "room-users")

    def break_socketio(self, socket_id: str) -> None:
        connection = self.hub.find(socket_id).connection
        connection._room_sets["room"] = BrokenEventSet

    def test_socketio_over_websocket(self) -> None:
        """
        A Socket.IO recipient on a WebSocket is closed with 1011, without a
        Socket.IO DISCONNECT (the client may reconnect).
        """
        broken = self.ws_socket()
        self.socketio_join(
            lambda *a: self.ws_emit(broken, *a), lambda: self.ws_events(broken)
        )
        self.break_socketio(broken.id)
        self.broadcast()
        self.assertRestOfRoomServed(broken.id)
        self.assertEqual(broken.close_code, 1011)
        self.assertNotIn("41", broken.take())
        self.assertNotIn(broken.sid, self.sessions)

    def test_socketio_over_polling(self) -> None:
        """
        A Socket.IO recipient on long-polling gets an Engine.IO close packet
        and no Socket.IO DISCONNECT (the client may reconnect); its session
        is then gone.
        """
        broken = self.polling()
        broken.connect()
        self.socketio_join(broken.emit, broken.events)
        self.break_socketio(broken.id)
        self.broadcast()
        self.assertRestOfRoomServed(broken.id)
        self.assertEqual(broken.get(), ["1"])
        self.assertNotIn(broken.sid, self.sessions)
        self.assertEqual(self.http("GET", broken.query).code, 400)
