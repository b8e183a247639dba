"""
Engine.IO v4 at /socket.io/: framing, long-polling, WebSocket, the upgrade,
heartbeats and errors, over in-memory HTTP and WebSockets.
"""

import orjson
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from signaling.hub import CloseReason
from signaling.transports.engineio import (
    EngineIOError,
    decode_payload,
    encode_payload,
)
from signaling.transports.websocket import WebSocketSettings

from .socketio_support import SocketIOCase, events


class PayloadTests(SynchronousTestCase):
    def test_packets_are_joined_by_the_record_separator(self):
        self.assertEqual(encode_payload(["2", "40", '42["a"]']), b'2\x1e40\x1e42["a"]')

    def test_binary_packets_are_base64_with_a_b(self):
        self.assertEqual(encode_payload(["4x", b"\x00\x01"]), b"4x\x1ebAAE=")
        self.assertEqual(decode_payload(b"4x\x1ebAAE="), ["4x", b"\x00\x01"])

    def test_round_trip_keeps_unicode(self):
        packets = ['42["offer",{"sdp":"é€"}]', "3"]
        self.assertEqual(decode_payload(encode_payload(packets)), packets)

    @given(st.binary(max_size=64))
    def test_any_body_decodes_or_is_a_bad_request(self, body):
        try:
            decode_payload(body)
        except EngineIOError as error:
            self.assertEqual(error.code, 3)

    def test_bad_payloads_are_refused(self):
        for body in (b"", b"2\x1e\x1e3", b"b!!!", b"\xff\xfe"):
            with self.assertRaises(EngineIOError) as caught:
                decode_payload(body)
            self.assertEqual(caught.exception.code, 3)


class HandshakeTests(SocketIOCase):
    def test_open_packet(self):
        """
        The handshake answers with the session's sid, the WebSocket upgrade
        and the heartbeat and size settings in milliseconds and bytes.
        """
        client = self.polling()
        self.assertEqual(
            client.open,
            {
                "sid": client.sid,
                "upgrades": ["websocket"],
                "pingInterval": 25000,
                "pingTimeout": 20000,
                "maxPayload": 64 * 1024,
            },
        )
        self.assertEqual(
            client.handshake_response.header("content-type"),
            "text/plain; charset=UTF-8",
        )

    def test_sid_is_not_the_socket_id(self):
        client = self.polling()
        socket_id = client.connect()
        self.assertNotEqual(client.sid, socket_id)
        self.assertEqual(len(socket_id), 24)
        self.assertIsNotNone(self.hub.find(socket_id))

    def test_pings_off_still_give_engineio_a_heartbeat(self):
        self.settings = WebSocketSettings(ping_interval=0)
        self.setUp()
        client = self.polling()
        self.assertEqual(
            (client.open["pingInterval"], client.open["pingTimeout"]), (25000, 10000)
        )


class ErrorTests(SocketIOCase):
    def test_unsupported_protocol_version(self):
        self.assertEngineError(self.http("GET", "EIO=3&transport=polling"), 5)
        self.assertEngineError(self.http("GET", "transport=polling"), 5)

    def test_unknown_transport(self):
        self.assertEngineError(self.http("GET", "EIO=4&transport=carrier-pigeon"), 0)

    def test_unknown_sid(self):
        self.assertEngineError(self.http("GET", "EIO=4&transport=polling&sid=nope"), 1)
        self.assertEngineError(
            self.http("POST", "EIO=4&transport=polling&sid=nope", b"40"), 1
        )

    def test_post_without_sid_is_a_bad_handshake_method(self):
        self.assertEngineError(self.http("POST", "EIO=4&transport=polling", b"40"), 2)

    def test_websocket_transport_without_an_upgrade(self):
        self.assertEngineError(self.http("GET", "EIO=4&transport=websocket"), 3)

    def test_bad_payload_closes_only_that_session(self):
        client = self.polling()
        other = self.polling()
        self.assertEngineError(client.post("b!!"), 3)
        self.assertEngineError(self.http("GET", client.query), 1)
        self.assertEqual(other.post("40").body, "ok")

    def test_oversized_post(self):
        client = self.polling()
        response = client.post("4" + "x" * (64 * 1024))
        self.assertEngineError(response, 3, status=413)
        self.assertNotIn(client.sid, self.sessions)

    def test_bad_packet_type_ends_the_session(self):
        client = self.polling()
        client.post("9")
        self.assertEngineError(self.http("GET", client.query), 1)

    def test_other_methods_are_refused(self):
        client = self.polling()
        self.assertEqual(self.http("PUT", client.query, b"x").code, 405)


class PollingTests(SocketIOCase):
    def test_poll_waits_until_there_is_something_to_send(self):
        client = self.polling()
        pending = client.start_get()
        self.stub.flush()
        self.assertNoResult(pending)
        client.post("40")
        response = self.finish(pending)
        self.assertEqual(response.body[:2], "40")

    def test_several_packets_per_payload_both_ways(self):
        """
        A POST may carry several packets; what waits for one poll goes out
        together, separated by the record separator.
        """
        client = self.polling()
        client.post(
            "40",
            '42["join-room",{"roomId":"r","userId":"u"}]',
            '421["leave-room",{"roomId":"r"}]',
        )
        packets = client.get()
        self.assertEqual([packet[:2] for packet in packets], ["40", "42", "43"])
        self.assertEqual(events(packets)[0][0], "room-users")
        self.assertEqual(orjson.loads(packets[2][3:]), [{"ok": True, "roomId": "r"}])

    def test_overlapping_polls_end_the_session(self):
        client = self.polling()
        pending = client.start_get()
        response = self.http("GET", client.query)
        self.assertEngineError(response, 3)
        self.assertEqual(self.finish(pending).body, "1")
        self.assertNotIn(client.sid, self.sessions)

    def test_close_packet_releases_the_pending_poll(self):
        client = self.polling()
        client.connect()
        pending = client.start_get()
        self.assertEqual(client.post("1").body, "ok")
        self.assertEqual(self.finish(pending).body, "1")
        self.assertEngineError(self.http("GET", client.query), 1)
        self.assertEqual(self.hub.stats().peers_total, 0)

    def test_client_that_drops_its_poll_can_poll_again(self):
        client = self.polling()
        pending = client.start_get()
        self.stub.flush()
        pending.cancel()
        self.failureResultOf(pending)
        self.stub.flush()
        client.post("40")
        self.assertEqual(client.get()[0][:2], "40")

    def test_server_close_reaches_the_next_poll(self):
        """
        A session the hub removes tells its client with a Socket.IO
        DISCONNECT and an Engine.IO close on the next poll.
        """
        client = self.polling()
        socket_id = client.connect()
        peer = self.hub.find(socket_id)
        self.hub.disconnect(peer)
        peer.connection.close(CloseReason.STALE)
        self.assertEqual(client.get(), ["41", "1"])
        self.assertEngineError(self.http("GET", client.query), 1)


class HeartbeatTests(SocketIOCase):
    def test_ping_pong(self):
        client = self.polling()
        client.connect()
        self.clock.advance(25)
        self.assertEqual(client.get(), ["2"])
        client.post("3")
        self.clock.advance(19)
        self.assertIn(client.sid, self.sessions)
        self.clock.advance(6)
        self.assertEqual(client.get(), ["2"])

    def test_vanished_polling_client_expires(self):
        """
        A client that stops polling misses its pong; its session ends and
        its room hears it left.
        """
        alice = self.polling()
        alice.connect()
        alice.emit("join-room", {"roomId": "r", "userId": "alice"})
        bob = self.ws_socket()
        self.ws_emit(bob, "join-room", {"roomId": "r", "userId": "bob"})
        bob.take()
        self.clock.advance(25)
        self.harness.flush()
        self.ws_send(bob, "3")
        self.clock.advance(20)
        self.harness.flush()
        self.assertNotIn(alice.sid, self.sessions)
        self.assertEqual(
            self.ws_events(bob),
            [("user-left", {"roomId": "r", "socketId": alice.id, "userId": "alice"})],
        )
        self.assertEngineError(self.http("GET", alice.query), 1)

    def test_pending_poll_is_released_when_the_pong_is_missed(self):
        client = self.polling()
        self.clock.advance(25)
        self.assertEqual(client.get(), ["2"])
        pending = client.start_get()
        self.clock.advance(20)
        self.assertEqual(self.finish(pending).body, "1")

    def test_websocket_heartbeat(self):
        client = self.ws_socket()
        self.clock.advance(25)
        self.harness.flush()
        self.assertEqual(client.take(), ["2"])
        self.ws_send(client, "3")
        self.clock.advance(25)
        self.harness.flush()
        self.assertEqual(client.take(), ["2"])
        self.clock.advance(20)
        self.harness.flush()
        self.assertEqual(client.close_code, 1000)
        self.assertEqual(self.sessions, {})

    def test_connect_timeout(self):
        """
        A session that never sends a Socket.IO CONNECT ends after 45 s, even
        while it answers pings.
        """
        client = self.polling()
        self.clock.advance(25)
        self.assertEqual(client.get(), ["2"])
        client.post("3")
        self.clock.advance(19.9)
        self.assertIn(client.sid, self.sessions)
        self.clock.advance(0.1)
        self.assertNotIn(client.sid, self.sessions)


class WebSocketTests(SocketIOCase):
    def test_websocket_only_session(self):
        client = self.websocket()
        [opened] = client.take()
        self.assertEqual(opened[0], "0")
        self.assertEqual(orjson.loads(opened[1:])["upgrades"], [])
        self.ws_send(client, "40")
        [connected] = client.take()
        self.assertEqual(connected[:2], "40")

    def test_unknown_sid_is_refused(self):
        client = self.websocket("&sid=nope")
        self.assertFalse(client.opened)

    def test_other_origin_is_refused(self):
        self.settings = WebSocketSettings(allowed_origins=("https://app.example",))
        self.setUp()
        refused = self.websocket(origin="https://evil.example")
        self.assertFalse(refused.opened)
        allowed = self.websocket(origin="https://app.example")
        self.assertTrue(allowed.opened)

    def test_client_close_ends_the_session(self):
        client = self.ws_socket()
        client.sendClose()
        self.harness.flush()
        self.assertEqual(self.sessions, {})
        self.assertEqual(self.hub.stats().peers_total, 0)

    def test_oversized_message_closes_with_1009(self):
        client = self.ws_socket()
        self.ws_send(client, "4" + "x" * (64 * 1024))
        self.assertEqual(client.close_code, 1009)
        self.assertEqual(self.sessions, {})


class UpgradeTests(SocketIOCase):
    def test_upgrade(self):
        """
        The probe is answered on the WebSocket, the pending poll is released
        with a noop, and after the upgrade everything goes over the
        WebSocket, including what was queued meanwhile; the socket id stays.
        """
        client = self.polling()
        socket_id = client.connect()
        pending = client.start_get()
        self.stub.flush()
        websocket = self.websocket(f"&sid={client.sid}")
        self.assertEqual(websocket.take(), [])
        self.ws_send(websocket, "2probe")
        self.assertEqual(websocket.take(), ["3probe"])
        self.assertEqual(self.finish(pending).body, "6")
        other = self.ws_socket()
        self.ws_emit(other, "join-room", {"roomId": "r", "userId": "o"})
        client.emit("join-room", {"roomId": "r", "userId": "c"})
        self.ws_send(websocket, "5")
        self.assertEqual(
            self.ws_events(websocket),
            [
                (
                    "room-users",
                    {"roomId": "r", "users": [{"socketId": other.id, "userId": "o"}]},
                )
            ],
        )
        self.ws_emit(websocket, "leave-room", {"roomId": "r"})
        self.assertEqual(
            self.ws_events(other),
            [
                ("room-users", {"roomId": "r", "users": []}),
                ("user-joined", {"roomId": "r", "socketId": socket_id, "userId": "c"}),
                ("user-left", {"roomId": "r", "socketId": socket_id, "userId": "c"}),
            ],
        )
        self.assertEngineError(self.http("GET", client.query), 3)
        self.assertEngineError(self.http("POST", client.query, b"3"), 3)

    def test_poll_during_the_upgrade_gets_a_noop(self):
        client = self.polling()
        websocket = self.websocket(f"&sid={client.sid}")
        self.ws_send(websocket, "2probe")
        websocket.take()
        self.assertEqual(client.get(), ["6"])

    def test_failed_probe_stays_on_polling(self):
        client = self.polling()
        client.connect()
        websocket = self.websocket(f"&sid={client.sid}")
        self.ws_send(websocket, "2probe")
        websocket.sendClose()
        self.harness.flush()
        client.emit("join-room", {"roomId": "r", "userId": "c"})
        self.assertEqual(client.events()[0][0], "room-users")

    def test_second_websocket_for_an_upgraded_session_is_refused(self):
        client = self.polling()
        websocket = self.websocket(f"&sid={client.sid}")
        self.ws_send(websocket, "2probe")
        self.ws_send(websocket, "5")
        second = self.websocket(f"&sid={client.sid}")
        self.assertFalse(second.opened)


class CorsTests(SocketIOCase):
    settings = WebSocketSettings(allowed_origins=("http://localhost:3000",))

    def test_polling_gets_cors_with_credentials(self):
        headers = {"Origin": "http://localhost:3000"}
        client = self.polling(headers=headers)
        response = client.handshake_response
        self.assertEqual(
            response.header("access-control-allow-origin"), "http://localhost:3000"
        )
        self.assertEqual(response.header("access-control-allow-credentials"), "true")
        self.assertEqual(
            client.post("40").header("access-control-allow-origin"),
            "http://localhost:3000",
        )

    def test_preflight(self):
        response = self.http(
            "OPTIONS",
            "EIO=4&transport=polling",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        self.assertEqual(response.code, 204)
        self.assertEqual(
            response.header("access-control-allow-methods"), "GET, POST, OPTIONS"
        )
        self.assertEqual(
            response.header("access-control-allow-headers"), "content-type"
        )
        self.assertEqual(response.header("access-control-allow-credentials"), "true")

    def test_other_origins_are_forbidden(self):
        response = self.http(
            "GET", "EIO=4&transport=polling", headers={"Origin": "https://evil.example"}
        )
        self.assertEngineError(response, 4, status=403)
        self.assertIsNone(response.header("access-control-allow-origin"))
        self.assertEqual(self.sessions, {})


class WebSocketLimitTests(SocketIOCase):
    settings = WebSocketSettings(
        ping_interval=25, ping_timeout=20, max_message_rate=1, max_send_buffer=1000
    )

    def test_persistent_excess_over_the_rate_closes_1008(self):
        """
        Packets over --max-message-rate are dropped; a client that keeps
        sending is closed with 1008 and leaves the hub.
        """
        client = self.ws_socket()
        for _ in range(6):
            if client.close_code is not None:
                break
            self.ws_emit(client, "leave-room", {"roomId": "r"})
        self.assertEqual(client.close_code, 1008)
        self.assertEqual(self.hub.stats().peers_total, 0)

    def test_stalled_reader_is_bounded_by_the_send_buffer(self):
        """
        What the server queues for a Socket.IO client that is not reading
        stays within --max-send-buffer.
        """
        slow = self.ws_socket()
        self.clock.advance(10)
        self.ws_emit(slow, "join-room", {"roomId": "r", "userId": "slow"})
        self.clock.advance(10)
        sender = self.ws_socket()
        self.clock.advance(10)
        self.ws_emit(sender, "join-room", {"roomId": "r", "userId": "sender"})
        slow.take()
        self.harness.server_side(slow).send_buffer.pauseProducing()
        already = len(slow.received)
        for _ in range(10):
            self.clock.advance(2)
            self.ws_emit(
                sender,
                "offer",
                {"roomId": "r", "targetId": slow.id, "offer": {"sdp": "x" * 200}},
            )
        received = sum(len(frame) for frame in slow.received[already:])
        self.assertGreater(received, 0)
        self.assertLessEqual(received, 1000)
        self.assertIsNone(sender.close_code)


class PollingRateTests(SocketIOCase):
    settings = WebSocketSettings(ping_interval=25, ping_timeout=20, max_message_rate=2)

    def test_packets_over_the_rate_are_dropped(self):
        """
        Each packet of a polling body counts against --max-message-rate:
        beyond a burst (twice the rate) they are dropped.
        """
        client = self.polling()
        client.connect()
        response = client.post(*['42["join-room",{"roomId":"r"}]'] * 5)
        self.assertEqual(response.body, "ok")
        self.assertEqual(
            [name for name, _ in client.events()], ["room-users", "error", "error"]
        )

    def test_persistent_excess_ends_the_session(self):
        """
        More packets refused in a row than a burst end the session: the POST
        is answered 429, the next poll gets the close packet, and the client
        leaves the hub.
        """
        client = self.polling()
        client.connect()
        response = client.post(*['42["leave-room",{"roomId":"r"}]'] * 20)
        self.assertEngineError(response, 3, status=429)
        self.assertEqual(response.json()["message"], "Too many packets")
        self.assertEqual(client.get()[-1], "1")
        self.assertEngineError(self.http("GET", client.query), 1)
        self.assertEqual(self.hub.stats().peers_total, 0)

    def test_the_bucket_refills_with_time(self):
        client = self.polling()
        client.connect()
        for _ in range(3):
            self.clock.advance(2)
            self.assertEqual(
                client.post(*['42["leave-room",{"roomId":"r"}]'] * 3).body, "ok"
            )
        self.assertEqual(len(self.sessions), 1)

    def test_upgraded_session_keeps_its_count(self):
        """
        The bucket belongs to the session: what polling used is not given
        back by upgrading to a WebSocket.
        """
        client = self.polling()
        client.connect()
        client.post(*['42["leave-room",{"roomId":"r"}]'] * 2)
        websocket = self.websocket(f"&sid={client.sid}")
        self.ws_send(websocket, "2probe")
        self.ws_send(websocket, "5")
        for _ in range(6):
            if websocket.close_code is not None:
                break
            self.ws_emit(websocket, "leave-room", {"roomId": "r"})
        self.assertEqual(websocket.close_code, 1008)


class UpgradeDeadlineTests(SocketIOCase):
    settings = WebSocketSettings(ping_interval=25, ping_timeout=20, upgrade_timeout=3)

    def test_websocket_that_does_not_upgrade_is_closed(self):
        """
        A WebSocket opened with a sid that does not complete the upgrade
        within --upgrade-timeout is closed normally; the session stays on
        polling and may try again.
        """
        client = self.polling()
        client.connect()
        silent = self.websocket(f"&sid={client.sid}")
        self.harness.advance(2.9)
        self.assertIsNone(silent.close_code)
        self.harness.advance(0.2)
        self.assertEqual(silent.close_code, 1000)
        client.emit("join-room", {"roomId": "r"})
        self.assertEqual(client.events()[0][0], "room-users")
        retry = self.websocket(f"&sid={client.sid}")
        self.ws_send(retry, "2probe")
        self.assertEqual(retry.take(), ["3probe"])

    def test_completed_upgrade_is_not_closed(self):
        client = self.polling()
        client.connect()
        websocket = self.websocket(f"&sid={client.sid}")
        self.ws_send(websocket, "2probe")
        self.ws_send(websocket, "5")
        self.harness.advance(5)
        self.assertIsNone(websocket.close_code)

    def test_one_upgrade_at_a_time(self):
        """
        While one WebSocket is upgrading a session, another is refused with
        400 before its handshake completes.
        """
        client = self.polling()
        first = self.websocket(f"&sid={client.sid}")
        second = self.websocket(f"&sid={client.sid}")
        self.assertTrue(first.opened)
        self.assertFalse(second.opened)

    def test_session_end_closes_its_upgrading_websocket(self):
        client = self.polling()
        client.connect()
        websocket = self.websocket(f"&sid={client.sid}")
        client.post("1")
        self.harness.flush()
        self.assertEqual(websocket.close_code, 1000)


class UpgradeHeartbeatTests(SocketIOCase):
    settings = WebSocketSettings(ping_interval=1, ping_timeout=1, upgrade_timeout=100)

    def test_expired_session_closes_its_upgrading_websocket(self):
        """
        A session whose client vanished expires on the ping timeout, and a
        WebSocket waiting to upgrade it goes with it.
        """
        client = self.polling()
        websocket = self.websocket(f"&sid={client.sid}")
        self.harness.advance(2.5)
        self.assertEqual(self.sessions, {})
        self.assertEqual(websocket.close_code, 1000)

    def test_upgrading_websocket_gets_pings(self):
        """
        The Engine.IO WebSocket factory pings too: a WebSocket waiting to
        upgrade whose client does not answer is dropped, while its session,
        which answers Engine.IO's pings over polling, lives on.
        """
        client = self.polling()
        websocket = self.websocket(f"&sid={client.sid}")
        websocket.answer_pings = False
        self.harness.advance(1.05)
        self.assertEqual(client.get(), ["2"])
        client.post("3")
        self.harness.advance(1.2)
        self.assertIsNotNone(websocket.close_code)
        self.assertEqual(len(self.sessions), 1)
