"""
Socket.IO v5 at /socket.io/ and its two event sets, rooms (seed 000) and
calls (seed 002), with and without a JWT key, and alongside other dialects.
"""

import os
import tempfile

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from signaling.auth import TokenVerifier
from signaling.dialects.base import IEngineIOHandler, IEngineIOSession
from signaling.dialects.socketio.socketio import (
    BINARY_EVENT,
    CONNECT,
    EVENT,
    Packet,
    PacketError,
    SocketIOConnection,
    decode,
    encode,
)
from signaling.hub import IPeerConnection
from signaling.transports.engineio import IPacketTransport

from .socketio_support import SECRET, SocketIOCase, token

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n"}
CANDIDATE = {
    "candidate": "candidate:1 1 udp 1 10.0.0.1 5000 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}
NOW = "2023-11-14T22:13:20.000Z"


class CodecTests(SynchronousTestCase):
    def test_decode(self):
        self.assertEqual(decode("0"), Packet(CONNECT))
        self.assertEqual(decode('0{"token":"t"}'), Packet(CONNECT, data={"token": "t"}))
        self.assertEqual(decode("0/admin,"), Packet(CONNECT, namespace="/admin"))
        self.assertEqual(decode('212["a",1]'), Packet(EVENT, data=["a", 1], id=12))
        self.assertEqual(
            decode('2/x,3["a"]'), Packet(EVENT, namespace="/x", data=["a"], id=3)
        )
        self.assertEqual(
            decode('51-["a",{"_placeholder":true,"num":0}]'),
            Packet(
                BINARY_EVENT,
                data=["a", {"_placeholder": True, "num": 0}],
                attachments=1,
            ),
        )

    def test_encode(self):
        self.assertEqual(encode(Packet(CONNECT, data={"sid": "s"})), '0{"sid":"s"}')
        self.assertEqual(
            encode(Packet(4, namespace="/a", data={"message": "m"})),
            '4/a,{"message":"m"}',
        )
        self.assertEqual(
            encode(Packet(3, data=[{"ok": True}], id=7)), '37[{"ok":true}]'
        )
        self.assertEqual(encode(Packet(1)), "1")

    @given(st.text(max_size=40))
    def test_any_text_decodes_or_is_a_packet_error(self, text):
        try:
            packet = decode(text)
        except PacketError:
            return
        self.assertIsInstance(packet, Packet)

    @given(st.text(alphabet='0123456/,-[]{}"a:1²', max_size=20))
    def test_packet_like_text_decodes_or_is_a_packet_error(self, text):
        try:
            decode(text)
        except PacketError:
            pass

    def test_bad_packets(self):
        for text in (
            "",
            "9",
            "2",
            '2{"a":1}',
            "2[1]",
            "2[]",
            "3[1]",
            "0[1]",
            "2[not json",
            "5x-[]",
            "0/a,{",
        ):
            with self.assertRaises(PacketError, msg=text):
                decode(text)


class SocketIOTests(SocketIOCase):
    def test_interfaces(self):
        """
        The Socket.IO connection, not an HTTP request or a WebSocket, is the
        hub's peer connection and the Engine.IO session's handler; it sees
        the session through the dialect-side interface.
        """
        client = self.polling()
        socket_id = client.connect()
        connection = self.hub.find(socket_id).connection
        self.assertIsInstance(connection, SocketIOConnection)
        self.assertTrue(verifyObject(IPeerConnection, connection))
        self.assertTrue(verifyObject(IEngineIOHandler, connection))
        self.assertTrue(verifyObject(IEngineIOSession, connection.engine))
        websocket = self.websocket(f"&sid={client.sid}")
        self.ws_send(websocket, "2probe")
        self.ws_send(websocket, "5")
        self.assertIs(self.hub.find(socket_id).connection, connection)
        self.assertTrue(verifyObject(IPacketTransport, connection.engine._websocket))

    def test_connect_gives_the_hub_peer_id(self):
        client = self.polling()
        socket_id = client.connect()
        self.assertEqual(self.hub.find(socket_id).dialect, "socketio")

    def test_other_namespaces_are_refused(self):
        client = self.ws_socket()
        self.ws_send(client, "40/admin,")
        self.assertEqual(client.take(), ['44/admin,{"message":"Invalid namespace"}'])
        self.ws_emit(client, "join-room", {"roomId": "r"})
        self.assertEqual(self.ws_events(client)[0][0], "room-users")

    def test_binary_events_are_refused(self):
        client = self.ws_socket()
        self.ws_send(client, '451-1["offer",{"_placeholder":true,"num":0}]')
        client.sendMessage(b"\x00\x01", isBinary=True)
        self.harness.flush()
        packets = client.take()
        self.assertEqual(
            packets,
            [
                '42["error",{"event":"offer","code":"unsupported","message":"binary events are not supported"}]',
                '431[{"ok":false,"code":"unsupported","error":"binary events are not supported"}]',
            ],
        )
        self.assertTrue(client.opened and client.close_code is None)

    def test_unknown_event(self):
        """
        An event no event set handles gets no answer, not even its
        acknowledgement, as from any Socket.IO server; it is counted.
        """
        client = self.ws_socket()
        for name in ("dance", "webrtc:signaling-error", "chat:message"):
            self.ws_emit(client, name, {}, ack=4)
        self.assertEqual(client.take(), [])
        self.assertEqual(self.site._socketio_stats.unhandled_events, 3)

    def test_events_before_connect_are_dropped(self):
        client = self.websocket()
        client.take()
        self.ws_send(client, '42["join-room",{"roomId":"r"}]')
        self.assertEqual(client.take(), [])
        self.assertIsNone(self.hub.room("r"))

    def test_undecodable_packet_closes_only_that_client(self):
        client = self.ws_socket()
        other = self.ws_socket()
        self.ws_send(client, "42[oops")
        self.assertEqual(client.close_code, 1000)
        self.ws_emit(other, "join-room", {"roomId": "r"})
        self.assertEqual(self.ws_events(other)[0][0], "room-users")

    def test_disconnect_leaves_the_rooms(self):
        alice = self.ws_socket({"userId": "alice"})
        bob = self.ws_socket()
        self.ws_emit(alice, "join-room", {"roomId": "r"})
        self.ws_emit(bob, "join-room", {"roomId": "r", "userId": "bob"})
        alice.take()
        self.ws_send(bob, "41")
        self.assertEqual(
            self.ws_events(alice),
            [("user-left", {"roomId": "r", "socketId": bob.id, "userId": "bob"})],
        )
        self.assertIsNone(self.hub.find(bob.id))


class RoomsTests(SocketIOCase):
    def joined(self, user_id, room="r"):
        client = self.ws_socket()
        self.ws_emit(client, "join-room", {"roomId": room, "userId": user_id})
        [(name, users)] = self.ws_events(client)
        self.assertEqual(name, "room-users")
        client.users = users["users"]
        return client

    def test_join_flow(self):
        """
        The joiner gets room-users with the others, by socket id and user id;
        the others get user-joined.
        """
        alice = self.joined("alice")
        self.assertEqual(alice.users, [])
        bob = self.joined("bob")
        self.assertEqual(bob.users, [{"socketId": alice.id, "userId": "alice"}])
        self.assertEqual(
            self.ws_events(alice),
            [("user-joined", {"roomId": "r", "socketId": bob.id, "userId": "bob"})],
        )

    def test_join_with_ack(self):
        alice = self.joined("alice")
        bob = self.ws_socket()
        self.ws_emit(bob, "join-room", {"roomId": "r", "userId": "bob"}, ack=0)
        packets = bob.take()
        self.assertEqual(
            orjson.loads(packets[1][3:]),
            [
                {
                    "ok": True,
                    "roomId": "r",
                    "users": [{"socketId": alice.id, "userId": "alice"}],
                }
            ],
        )

    def test_relays_name_the_sender_and_pass_the_field_through(self):
        alice = self.joined("alice")
        bob = self.joined("bob")
        alice.take()
        self.ws_emit(
            bob, "offer", {"roomId": "r", "targetId": alice.id, "offer": OFFER}
        )
        self.assertEqual(
            self.ws_events(alice),
            [
                (
                    "offer",
                    {
                        "roomId": "r",
                        "senderId": bob.id,
                        "userId": "bob",
                        "offer": OFFER,
                    },
                )
            ],
        )
        self.ws_emit(
            alice, "answer", {"roomId": "r", "targetId": bob.id, "answer": ANSWER}
        )
        self.assertEqual(
            self.ws_events(bob),
            [
                (
                    "answer",
                    {
                        "roomId": "r",
                        "senderId": alice.id,
                        "userId": "alice",
                        "answer": ANSWER,
                    },
                )
            ],
        )
        self.ws_emit(
            alice,
            "ice-candidate",
            {"roomId": "r", "targetId": bob.id, "candidate": CANDIDATE},
        )
        self.assertEqual(
            self.ws_events(bob),
            [
                (
                    "ice-candidate",
                    {
                        "roomId": "r",
                        "senderId": alice.id,
                        "userId": "alice",
                        "candidate": CANDIDATE,
                    },
                )
            ],
        )
        self.assertEqual(bob.take() + alice.take(), [])

    def test_leave(self):
        alice = self.joined("alice")
        bob = self.joined("bob")
        alice.take()
        self.ws_emit(bob, "leave-room", {"roomId": "r"}, ack=1)
        self.assertEqual(bob.take(), ['431[{"ok":true,"roomId":"r"}]'])
        self.assertEqual(
            self.ws_events(alice),
            [("user-left", {"roomId": "r", "socketId": bob.id, "userId": "bob"})],
        )

    def test_bad_input(self):
        """
        Bad payloads get an error event (and a failed ack), and nobody else
        hears of them.
        """
        alice = self.joined("alice")
        bob = self.joined("bob")
        alice.take()
        cases = [
            ("join-room", "r", "invalid-payload"),
            ("join-room", {"userId": "x"}, "invalid-field"),
            ("join-room", {"roomId": "r2", "userId": 5}, "invalid-field"),
            ("join-room", {"roomId": "r"}, "already-in-room"),
            ("leave-room", {"roomId": "nowhere"}, "not-in-room"),
            (
                "offer",
                {"roomId": "r", "targetId": "nobody", "offer": OFFER},
                "peer-not-found",
            ),
            ("offer", {"roomId": "r", "targetId": alice.id}, "invalid-field"),
            (
                "answer",
                {"roomId": "elsewhere", "targetId": alice.id, "answer": ANSWER},
                "not-in-room",
            ),
            ("ice-candidate", [1, 2], "invalid-payload"),
        ]
        for name, data, code in cases:
            self.ws_emit(bob, name, data)
            [(event, body)] = self.ws_events(bob)
            self.assertEqual(
                (event, body["code"], body["event"]), ("error", code, name)
            )
        self.assertEqual(alice.take(), [])

    def test_candidate_without_target_goes_to_the_room(self):
        alice = self.joined("alice")
        bob = self.joined("bob")
        carol = self.joined("carol")
        alice.take(), bob.take()
        self.ws_emit(carol, "ice-candidate", {"roomId": "r", "candidate": CANDIDATE})
        for client in (alice, bob):
            self.assertEqual(self.ws_events(client)[0][1]["senderId"], carol.id)


class CallsTests(SocketIOCase):
    def caller(self, user_id):
        return self.ws_socket({"token": token({"userId": user_id})})

    def joined(self, user_id, room="call_123", **extra):
        client = self.caller(user_id)
        self.ws_emit(client, "webrtc:join-room", {"callRoomId": room, **extra})
        [(name, body)] = self.ws_events(client)
        self.assertEqual(name, "webrtc:room-joined")
        client.joined = body
        return client

    def test_join_flow(self):
        alice = self.joined(
            "user-a", callType="video", metadata={"groupId": "group_456"}
        )
        self.assertEqual(
            alice.joined,
            {
                "callRoomId": "call_123",
                "participantCount": 1,
                "existingParticipants": [],
                "metadata": {
                    "groupId": "group_456",
                    "callType": "video",
                    "createdAt": NOW,
                    "createdBy": "user-a",
                },
                "timestamp": NOW,
            },
        )
        self.clock.advance(1)
        bob = self.joined("user-b")
        self.assertEqual(bob.joined["participantCount"], 2)
        self.assertEqual(bob.joined["metadata"]["createdBy"], "user-a")
        alice_participant = {
            "socketId": alice.id,
            "userId": "user-a",
            "username": None,
            "realName": None,
            "callType": "video",
            "metadata": {"groupId": "group_456"},
            "joinedAt": NOW,
        }
        self.assertEqual(bob.joined["existingParticipants"], [alice_participant])
        self.assertEqual(
            self.ws_events(alice),
            [
                (
                    "webrtc:participant-joined",
                    {
                        "callRoomId": "call_123",
                        "participant": {
                            "socketId": bob.id,
                            "userId": "user-b",
                            "username": None,
                            "realName": None,
                            "callType": "audio",
                            "metadata": {},
                            "joinedAt": "2023-11-14T22:13:21.000Z",
                        },
                        "timestamp": "2023-11-14T22:13:21.000Z",
                    },
                )
            ],
        )

    def test_relays(self):
        alice = self.joined("user-a")
        bob = self.joined("user-b")
        alice.take()
        self.ws_emit(
            alice,
            "webrtc:offer",
            {
                "callRoomId": "call_123",
                "targetSocketId": bob.id,
                "offer": OFFER,
                "sdpMid": "0",
                "sdpMLineIndex": 0,
            },
        )
        self.assertEqual(
            self.ws_events(bob),
            [
                (
                    "webrtc:offer",
                    {
                        "callRoomId": "call_123",
                        "fromSocketId": alice.id,
                        "fromUserId": "user-a",
                        "offer": OFFER,
                        "sdpMid": "0",
                        "sdpMLineIndex": 0,
                        "timestamp": NOW,
                    },
                )
            ],
        )
        self.ws_emit(
            bob,
            "webrtc:answer",
            {"callRoomId": "call_123", "targetSocketId": alice.id, "answer": ANSWER},
        )
        self.assertEqual(
            self.ws_events(alice),
            [
                (
                    "webrtc:answer",
                    {
                        "callRoomId": "call_123",
                        "fromSocketId": bob.id,
                        "fromUserId": "user-b",
                        "answer": ANSWER,
                        "timestamp": NOW,
                    },
                )
            ],
        )
        self.ws_emit(
            bob,
            "webrtc:ice-candidate",
            {
                "callRoomId": "call_123",
                "targetSocketId": alice.id,
                "candidate": CANDIDATE,
            },
        )
        self.assertEqual(self.ws_events(alice)[0][1]["candidate"], CANDIDATE)

    def test_candidate_without_target_is_broadcast(self):
        alice = self.joined("user-a")
        bob = self.joined("user-b")
        carol = self.joined("user-c")
        alice.take(), bob.take()
        self.ws_emit(
            carol,
            "webrtc:ice-candidate",
            {"callRoomId": "call_123", "candidate": CANDIDATE, "sdpMLineIndex": 0},
        )
        for client in (alice, bob):
            [(name, body)] = self.ws_events(client)
            self.assertEqual(
                (name, body["fromSocketId"], body["sdpMLineIndex"]),
                ("webrtc:ice-candidate", carol.id, 0),
            )
        self.assertEqual(carol.take(), [])

    def test_room_isolation(self):
        """
        Sender and target must both be in the call room; otherwise the sender
        gets webrtc:signaling-error and nothing is delivered.
        """
        alice = self.joined("user-a")
        bob = self.joined("user-b", room="call_other")
        carol = self.joined("user-c", room="call_other")
        bob.take()
        self.ws_emit(
            alice,
            "webrtc:offer",
            {"callRoomId": "call_123", "targetSocketId": bob.id, "offer": OFFER},
        )
        self.assertEqual(
            self.ws_events(alice),
            [
                (
                    "webrtc:signaling-error",
                    {
                        "error": "Target participant is not in this call room",
                        "code": "peer-not-found",
                        "event": "webrtc:offer",
                        "callRoomId": "call_123",
                        "targetSocketId": bob.id,
                        "timestamp": NOW,
                    },
                )
            ],
        )
        self.ws_emit(
            alice,
            "webrtc:offer",
            {"callRoomId": "call_other", "targetSocketId": bob.id, "offer": OFFER},
        )
        [(name, body)] = self.ws_events(alice)
        self.assertEqual(
            (name, body["code"]), ("webrtc:signaling-error", "not-in-room")
        )
        self.ws_emit(
            alice,
            "webrtc:ice-candidate",
            {"callRoomId": "call_other", "candidate": CANDIDATE},
        )
        [(name, body)] = self.ws_events(alice)
        self.assertEqual(
            (name, body["code"]), ("webrtc:signaling-error", "not-in-room")
        )
        self.assertEqual(bob.take() + carol.take(), [])

    def test_join_errors(self):
        alice = self.caller("user-a")
        for data in (
            {"callType": "video"},
            {"callRoomId": ""},
            "call_1",
            {"callRoomId": "c", "metadata": []},
        ):
            self.ws_emit(alice, "webrtc:join-room", data)
            [(name, body)] = self.ws_events(alice)
            self.assertEqual(name, "webrtc:join-room-error")
            self.assertEqual(body["timestamp"], NOW)
        self.ws_emit(alice, "webrtc:join-room", {"callType": "video"}, ack=2)
        packets = alice.take()
        self.assertEqual(
            orjson.loads(packets[1][3:]),
            [{"ok": False, "code": "invalid-field", "error": "callRoomId is required"}],
        )

    def test_leave(self):
        alice = self.joined("user-a")
        bob = self.joined("user-b")
        alice.take()
        self.ws_emit(bob, "webrtc:leave-room", {"callRoomId": "call_123"})
        self.assertEqual(
            self.ws_events(bob),
            [("webrtc:room-left", {"callRoomId": "call_123", "timestamp": NOW})],
        )
        [(name, body)] = self.ws_events(alice)
        self.assertEqual(
            (name, body["participant"]["socketId"]), ("webrtc:participant-left", bob.id)
        )
        self.clock.advance(1)
        self.ws_emit(bob, "webrtc:leave-room", {"callRoomId": "call_123"})
        self.assertEqual(
            self.ws_events(bob),
            [
                (
                    "webrtc:room-left",
                    {"callRoomId": "call_123", "timestamp": "2023-11-14T22:13:21.000Z"},
                )
            ],
        )
        self.assertEqual(self.ws_events(alice), [])

    def test_disconnect_tells_the_room(self):
        alice = self.joined("user-a")
        bob = self.joined("user-b")
        alice.take()
        bob.sendClose()
        self.harness.flush()
        [(name, body)] = self.ws_events(alice)
        self.assertEqual(
            (name, body["participant"]["userId"]), ("webrtc:participant-left", "user-b")
        )


class SecretAuthTests(SocketIOCase):
    verifier = TokenVerifier.from_secret(SECRET)

    def connect_error(self, auth=None, query=""):
        client = self.websocket(query)
        client.take()
        self.ws_send(
            client, "40" + (orjson.dumps(auth).decode() if auth is not None else "")
        )
        [reply] = client.take()
        self.assertEqual(reply[:2], "44")
        return orjson.loads(reply[2:])["message"]

    def test_token_names_the_user(self):
        for claims in (
            {"userId": "user-a"},
            {"sub": "user-a"},
            {"userId": "user-a", "sub": "other"},
        ):
            client = self.ws_socket({"token": token(claims)})
            self.ws_emit(client, "webrtc:join-room", {"callRoomId": "c"})
            [(name, body)] = self.ws_events(client)
            self.assertEqual(
                (name, body["metadata"]["createdBy"]), ("webrtc:room-joined", "user-a")
            )
            client.sendClose()
            self.harness.flush()

    def test_claimed_user_ids_are_shown_as_claims(self):
        """
        With a key, a native peer's metadata userId and a tokenless rooms
        client's userId are shown as claimedUserId, never as userId; names
        come from the native metadata.
        """
        native = self.harness.connect("/signal")
        [welcome] = native.take()
        metadata = {"userId": "alice", "display_name": "Nat", "name": "Nat King"}
        native.send_json({"type": "join", "room": "open", "metadata": metadata})
        self.harness.flush()
        guest = self.ws_socket({"userId": "alice"})
        self.ws_emit(guest, "join-room", {"roomId": "open", "userId": "alice"})
        self.assertEqual(
            self.ws_events(guest),
            [
                (
                    "room-users",
                    {
                        "roomId": "open",
                        "users": [
                            {
                                "socketId": welcome["peerId"],
                                "userId": None,
                                "claimedUserId": "alice",
                            }
                        ],
                    },
                )
            ],
        )
        bob = self.ws_socket({"token": token({"userId": "bob"})})
        self.ws_emit(bob, "webrtc:join-room", {"callRoomId": "open"})
        [(_, joined)] = self.ws_events(bob)
        self.assertEqual(
            [
                (
                    p["socketId"],
                    p["userId"],
                    p["claimedUserId"],
                    p["username"],
                    p["realName"],
                )
                for p in joined["existingParticipants"]
            ],
            [
                (welcome["peerId"], None, "alice", "Nat", "Nat King"),
                (guest.id, None, "alice", None, None),
            ],
        )
        self.assertEqual(
            self.ws_events(guest),
            [("user-joined", {"roomId": "open", "socketId": bob.id, "userId": "bob"})],
        )

    def test_token_in_the_query(self):
        client = self.ws_socket(query="&token=" + token({"userId": "q"}))
        self.ws_emit(client, "join-room", {"roomId": "r", "userId": "spoofed"})
        self.assertEqual(self.hub.room("r").members[client.id].metadata["userId"], "q")

    def test_bad_tokens_get_connect_error(self):
        now = int(self.clock.seconds())
        for bad in (
            token({"userId": "a"}, secret="another secret that is long enough too"),
            token({"userId": "a", "exp": now - 3600}),
            token({"userId": "a", "nbf": now + 3600}),
            token({"iat": now}),
            "not.a.token",
            7,
        ):
            self.assertIn("Authentication failed", self.connect_error({"token": bad}))
        self.assertEqual(self.hub.stats().peers_total, 0)

    def test_expiry_follows_the_hub_clock(self):
        expiring = token({"userId": "a", "exp": int(self.clock.seconds()) + 60})
        self.ws_socket({"token": expiring})
        self.clock.advance(91)
        self.assertIn("expired", self.connect_error({"token": expiring}))

    def test_session_ends_when_its_token_expires(self):
        """
        A session whose token expires (exp plus the 30 s leeway) is told
        with CONNECT_ERROR, then DISCONNECT, then closed, on the hub's clock.
        """
        expiring = token({"userId": "a", "exp": int(self.clock.seconds()) + 60})
        client = self.ws_socket({"token": expiring})
        self.ws_emit(client, "join-room", {"roomId": "r"})
        client.take()
        self.keep_alive(client, 89.8)
        self.assertIsNone(client.close_code)
        self.harness.advance(0.4)
        refused, disconnect = client.take()
        self.assertEqual(refused[:2], "44")
        self.assertEqual(
            orjson.loads(refused[2:]),
            {
                "message": "Authentication failed: the token has expired",
                "data": {"code": "token-expired"},
            },
        )
        self.assertEqual(disconnect, "41")
        self.assertEqual(client.close_code, 1000)
        self.assertEqual(self.hub.stats().peers_total, 0)

    def test_polling_session_ends_when_its_token_expires(self):
        """
        Over polling the next poll collects the same packets and the close
        packet.
        """
        expiring = token({"userId": "a", "exp": int(self.clock.seconds()) - 20})
        client = self.polling()
        client.connect({"token": expiring})
        self.clock.advance(10)
        packets = client.get()
        self.assertEqual([packet[:2] for packet in packets], ["44", "41", "1"])
        self.assertEngineError(self.http("GET", client.query), 1)
        self.assertEqual(self.hub.stats().peers_total, 0)

    def test_reconnecting_with_a_new_token_drops_the_old_expiry(self):
        """
        After DISCONNECT and a CONNECT with a fresh token, the first token's
        expiry no longer ends the session.
        """
        now = int(self.clock.seconds())
        client = self.ws_socket({"token": token({"userId": "a", "exp": now - 20})})
        self.ws_send(client, "41")
        self.ws_send(
            client,
            "40"
            + orjson.dumps(
                {"token": token({"userId": "a", "exp": now + 3600})}
            ).decode(),
        )
        self.assertEqual(client.take()[0][:2], "40")
        self.harness.advance(15, step=1)
        self.assertEqual(client.take(), [])
        self.assertIsNone(client.close_code)

    def test_a_token_without_exp_does_not_expire(self):
        client = self.ws_socket({"token": token({"userId": "a"})})
        self.keep_alive(client, 3600)
        self.assertIsNone(client.close_code)

    def keep_alive(self, client, seconds: float) -> None:
        """
        Let C{seconds} pass with C{client} answering Engine.IO's pings.
        """
        for _ in range(int(seconds)):
            self.harness.advance(1, step=1)
            if "2" in client.received:
                client.received.remove("2")
                self.ws_send(client, "3")
        self.harness.advance(seconds - int(seconds))

    def test_without_a_token_rooms_work_and_calls_are_refused(self):
        client = self.ws_socket({"userId": "guest"})
        self.ws_emit(client, "join-room", {"roomId": "r", "userId": "guest"})
        self.assertEqual(
            self.ws_events(client), [("room-users", {"roomId": "r", "users": []})]
        )
        self.ws_emit(client, "webrtc:join-room", {"callRoomId": "c"})
        [(name, body)] = self.ws_events(client)
        self.assertEqual(
            (name, body["code"]), ("webrtc:join-room-error", "unauthenticated")
        )
        self.assertIn("Authentication required", body["error"])
        for event in ("webrtc:offer", "webrtc:answer", "webrtc:ice-candidate"):
            self.ws_emit(
                client,
                event,
                {"callRoomId": "r", "targetSocketId": "x", "offer": OFFER},
            )
            [(name, body)] = self.ws_events(client)
            self.assertEqual(
                (name, body["code"]), ("webrtc:signaling-error", "unauthenticated")
            )
        self.ws_emit(client, "webrtc:leave-room", {"callRoomId": "r"})
        [(name, body)] = self.ws_events(client)
        self.assertEqual(
            (name, body["code"]), ("webrtc:leave-room-error", "unauthenticated")
        )

    def test_reconnecting_without_a_token_drops_the_identity(self):
        """
        After a DISCONNECT, a CONNECT on the same session is judged afresh.
        """
        client = self.ws_socket({"token": token({"userId": "a"})})
        self.ws_send(client, "41")
        self.ws_send(client, "40")
        [connected] = client.take()
        self.assertEqual(connected[:2], "40")
        self.ws_emit(client, "webrtc:join-room", {"callRoomId": "c"})
        [(name, body)] = self.ws_events(client)
        self.assertEqual(
            (name, body["code"]), ("webrtc:join-room-error", "unauthenticated")
        )

    def test_wrong_algorithm_is_refused(self):
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.assertIn(
            "Authentication failed",
            self.connect_error({"token": token({"userId": "a"}, pem, "ES256")}),
        )


class PublicKeyAuthTests(SocketIOCase):
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier.from_public_key(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    def test_es256_token(self):
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        client = self.ws_socket({"token": token({"userId": "ec-user"}, pem, "ES256")})
        self.ws_emit(client, "webrtc:join-room", {"callRoomId": "c"})
        self.assertEqual(
            self.ws_events(client)[0][1]["metadata"]["createdBy"], "ec-user"
        )

    def test_hs256_token_signed_with_the_public_key_is_refused(self):
        client = self.websocket()
        client.take()
        self.ws_send(
            client, "40" + orjson.dumps({"token": token({"userId": "a"})}).decode()
        )
        self.assertEqual(client.take()[0][:2], "44")


class NoKeyTests(SocketIOCase):
    def test_user_id_from_the_auth_payload(self):
        client = self.ws_socket({"userId": "plain"})
        self.ws_emit(client, "webrtc:join-room", {"callRoomId": "c"})
        self.assertEqual(self.ws_events(client)[0][1]["metadata"]["createdBy"], "plain")

    def test_unverified_token_still_names_the_user(self):
        client = self.ws_socket(
            {
                "token": token(
                    {"userId": "from-token"}, secret="anything at all, nobody checks it"
                )
            }
        )
        self.ws_emit(client, "webrtc:join-room", {"callRoomId": "c"})
        self.assertEqual(
            self.ws_events(client)[0][1]["metadata"]["createdBy"], "from-token"
        )

    def test_no_user_at_all(self):
        client = self.ws_socket()
        self.ws_emit(client, "webrtc:join-room", {"callRoomId": "c"})
        self.assertIsNone(self.ws_events(client)[0][1]["metadata"]["createdBy"])


class OneNamespaceTests(SocketIOCase):
    def test_rooms_calls_and_native_share_a_room(self):
        """
        A rooms client, a calls client and a native peer in room x see each
        other in their own shapes and reach each other.
        """
        native = self.harness.connect("/signal")
        [welcome] = native.take()
        native.send_json({"type": "join", "room": "x", "metadata": {"name": "nat"}})
        self.harness.flush()
        native.take()
        rooms = self.ws_socket()
        self.ws_emit(rooms, "join-room", {"roomId": "x", "userId": "roomie"})
        self.assertEqual(
            self.ws_events(rooms),
            [
                (
                    "room-users",
                    {
                        "roomId": "x",
                        "users": [{"socketId": welcome["peerId"], "userId": None}],
                    },
                )
            ],
        )
        calls = self.ws_socket({"userId": "caller"})
        self.ws_emit(calls, "webrtc:join-room", {"callRoomId": "x"})
        [(_, joined)] = self.ws_events(calls)
        self.assertEqual(
            [(p["socketId"], p["userId"]) for p in joined["existingParticipants"]],
            [(welcome["peerId"], None), (rooms.id, "roomie")],
        )
        self.assertEqual(joined["existingParticipants"][0]["metadata"], {"name": "nat"})
        self.assertEqual(
            self.ws_events(rooms),
            [
                (
                    "user-joined",
                    {"roomId": "x", "socketId": calls.id, "userId": "caller"},
                )
            ],
        )
        self.assertEqual(
            [
                (m["type"], m["peer"]["id"], m["peer"]["metadata"].get("userId"))
                for m in native.take()
            ],
            [("peer-joined", rooms.id, "roomie"), ("peer-joined", calls.id, "caller")],
        )

        self.ws_emit(
            calls,
            "webrtc:offer",
            {"callRoomId": "x", "targetSocketId": rooms.id, "offer": OFFER},
        )
        self.assertEqual(
            self.ws_events(rooms),
            [
                (
                    "offer",
                    {
                        "roomId": "x",
                        "senderId": calls.id,
                        "userId": "caller",
                        "offer": OFFER,
                    },
                )
            ],
        )
        self.ws_emit(
            rooms, "answer", {"roomId": "x", "targetId": calls.id, "answer": ANSWER}
        )
        self.assertEqual(
            self.ws_events(calls),
            [
                (
                    "webrtc:answer",
                    {
                        "callRoomId": "x",
                        "fromSocketId": rooms.id,
                        "fromUserId": "roomie",
                        "answer": ANSWER,
                        "timestamp": NOW,
                    },
                )
            ],
        )
        self.ws_emit(
            calls,
            "webrtc:ice-candidate",
            {
                "callRoomId": "x",
                "targetSocketId": welcome["peerId"],
                "candidate": CANDIDATE,
            },
        )
        self.assertEqual(
            native.take(),
            [
                {
                    "type": "candidate",
                    "room": "x",
                    "from": calls.id,
                    "payload": CANDIDATE,
                }
            ],
        )
        native.send_json(
            {"type": "offer", "room": "x", "to": calls.id, "payload": OFFER}
        )
        native.send_json(
            {"type": "message", "room": "x", "to": rooms.id, "payload": "hi"}
        )
        self.harness.flush()
        [(name, body)] = self.ws_events(calls)
        self.assertEqual(
            (name, body["fromSocketId"], body["fromUserId"], body["offer"]),
            ("webrtc:offer", welcome["peerId"], None, OFFER),
        )
        self.assertEqual(rooms.take(), [])

    def test_rest_api_lists_socketio_members(self):
        client = self.ws_socket()
        self.ws_emit(client, "join-room", {"roomId": "listed", "userId": "u"})
        self.stub.flush()
        response = self.successResultOf(
            self.stub.get("http://localhost:8080/api/rooms/listed")
        )
        detail = orjson.loads(self.successResultOf(response.content()))
        self.assertEqual(
            [(p["peer_id"], p["dialect"]) for p in detail["peers"]],
            [(client.id, "rooms")],
        )


class OptionsTests(SynchronousTestCase):
    def path(self, name):
        # Not self.mktemp(): under pytest it would write into the work tree.
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        return os.path.join(directory.name, name)

    def parse(self, *argv, environ=None):
        from signaling.tap import Options

        options = Options(environ or {})
        options.parseOptions(list(argv))
        return options

    def test_no_key_by_default(self):
        self.assertIsNone(self.parse()["token-verifier"])

    def test_secret_from_option_or_environment(self):
        self.assertEqual(
            self.parse("--jwt-secret", "s3cret")["token-verifier"].algorithms,
            ("HS256",),
        )
        self.assertEqual(
            self.parse(environ={"JWT_SECRET": "env"})["token-verifier"].key, b"env"
        )

    def test_public_keys(self):
        from cryptography.hazmat.primitives.asymmetric import rsa

        for key, algorithm in (
            (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
            (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        ):
            path = self.path("key.pem")
            with open(path, "wb") as pem:
                pem.write(
                    key.public_key().public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                )
            self.assertEqual(
                self.parse("--jwt-public-key", path)["token-verifier"].algorithms,
                (algorithm,),
            )

    def test_bad_keys_are_usage_errors(self):
        garbage = self.path("garbage.pem")
        with open(garbage, "wb") as pem:
            pem.write(b"not a key")
        for argv in (
            ["--jwt-public-key", self.path("missing.pem")],
            ["--jwt-public-key", garbage],
            ["--jwt-secret", "x", "--jwt-public-key", garbage],
        ):
            with self.assertRaises(SystemExit) as caught:
                self.parse(*argv)
            self.assertIn("jwt", str(caught.exception).lower())
