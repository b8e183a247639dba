"""
Session resume of the native protocol against C{twistd -n signaling}: a
peer whose socket is lost comes back on C{/signal?resume=TOKEN} with its id,
its rooms and every event it missed, exactly once.

A lost socket is made by aborting the client's TCP connection: the server
sees the connection go without a close frame, as when Wi-Fi blinks.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import requests

from .realsockets import TwistdServer, open_websocket, sleep

GRACE = 1.0
MAX_MESSAGES = 4
MAX_BYTES = 3000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--resume-grace",
        str(GRACE),
        "--resume-max-messages",
        str(MAX_MESSAGES),
        "--resume-max-bytes",
        str(MAX_BYTES),
        "--access-log",
    )
    server.start(tmp_path_factory.mktemp("resume") / "twistd.log")
    yield server
    server.stop()


async def connect(url: str, token: str | None = None, last: int | None = None):
    if token is not None:
        url += f"?resume={token}"
        if last is not None:
            url += f"&last={last}"
    client = await open_websocket(url)
    client.welcome = await client.next()
    assert client.welcome["type"] == "welcome"
    client.peer_id = client.welcome["peerId"]
    return client


async def joined(url: str, room: str):
    client = await connect(url)
    client.send_json({"type": "join", "room": room})
    assert (await client.next())["type"] == "joined"
    return client


async def lose(client) -> None:
    """
    End C{client}'s TCP connection with no close frame.
    """
    client.transport.abortConnection()
    await client.closed


async def quiet(client, seconds: float = 0.3) -> None:
    """
    Nothing arrives at C{client} for C{seconds}.
    """
    await sleep(seconds)
    assert client.messages.pending == []


async def close(*clients) -> None:
    for client in clients:
        client.sendClose()
        await client.closed


def message(room: str, to: str, text: str) -> dict:
    return {"type": "message", "room": room, "to": to, "payload": text}


@pytest_twisted.ensureDeferred
async def test_resume_keeps_id_rooms_and_missed_messages(server):
    """
    A peer whose socket is lost resumes with its token: the same id, its
    rooms, and the messages sent to it meanwhile, in order and numbered on
    from what it had; the others see it neither leave nor join.
    """
    [url] = server.urls
    alice = await joined(url, "r1")
    bob = await joined(url, "r1")
    assert (await alice.next())["type"] == "peer-joined"
    token = bob.welcome["resumeToken"]
    assert bob.welcome["resumed"] is False and len(token) >= 40
    alice.send_json(message("r1", bob.peer_id, "before"))
    before = await bob.next()
    assert (before["payload"], before["seq"]) == ("before", 1)

    bob_id = bob.peer_id
    await lose(bob)
    alice.send_json(message("r1", bob_id, "during-1"))
    alice.send_json({"type": "message", "room": "r1", "payload": "during-2"})
    await quiet(alice)

    bob = await connect(url, token, last=1)
    assert bob.peer_id == bob_id
    assert bob.welcome["resumed"] is True
    assert bob.welcome["rooms"] == ["r1"]
    assert bob.welcome["resumeToken"] != token
    replayed = [await bob.next(), await bob.next()]
    assert [(m["payload"], m["seq"], m["from"]) for m in replayed] == [
        ("during-1", 2, alice.peer_id),
        ("during-2", 3, alice.peer_id),
    ]
    bob.send_json(message("r1", alice.peer_id, "back"))
    assert (await alice.next())["payload"] == "back"
    await quiet(bob)
    await close(alice, bob)
    # The access log never shows a token (a WebSocket is not logged; a
    # plain GET with one is, redacted).
    http_url = url.replace("ws://", "http://")
    assert (
        requests.get(f"{http_url}?resume={token}&last=1", timeout=5).status_code == 426
    )
    await sleep(0.1)
    assert "/signal?resume=REDACTED&last=1" in server.log()
    assert token not in server.log()


@pytest_twisted.ensureDeferred
async def test_in_flight_messages_come_exactly_once(server):
    """
    Messages that reached the socket but not the client's processing come
    again on resume, those it processed (by C{last}, or acknowledged with
    C{ack}) do not.
    """
    [url] = server.urls
    alice = await joined(url, "r2")
    bob = await joined(url, "r2")
    await alice.next()
    for text in ("m1", "m2", "m3"):
        alice.send_json(message("r2", bob.peer_id, text))
    assert [(await bob.next())["seq"] for _ in range(3)] == [1, 2, 3]
    # Bob processed only m1 when the socket went.
    await lose(bob)
    bob = await connect(url, bob.welcome["resumeToken"], last=1)
    assert [(await bob.next())["payload"] for _ in range(2)] == ["m2", "m3"]
    await quiet(bob)

    # Now by acknowledgement, and a resume that names no last seq.
    bob.send_json({"type": "ack", "seq": 3})
    alice.send_json(message("r2", bob.peer_id, "m4"))
    assert (await bob.next())["seq"] == 4
    await sleep(0.1)
    await lose(bob)
    bob = await connect(url, bob.welcome["resumeToken"])
    assert bob.welcome["resumed"] is True
    replayed = await bob.next()
    assert (replayed["payload"], replayed["seq"]) == ("m4", 4)
    await quiet(bob)

    bob.send_json({"type": "ack", "seq": "x", "id": 7})
    assert await bob.next() == {
        "type": "error",
        "code": "invalid-field",
        "message": "'seq' must be a whole number",
        "id": 7,
    }
    await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_queue_bound_tells_the_sender_dropped(server):
    """
    While a peer is away at most --resume-max-messages events wait for it;
    a sender past the bound is told C{dropped}, and the resumed peer gets
    the ones kept.
    """
    [url] = server.urls
    alice = await joined(url, "r3")
    bob = await joined(url, "r3")
    await alice.next()
    await lose(bob)
    for index in range(MAX_MESSAGES):
        alice.send_json(message("r3", bob.peer_id, f"q{index}"))
    alice.send_json({**message("r3", bob.peer_id, "one too many"), "id": "x"})
    assert await alice.next() == {
        "type": "error",
        "code": "dropped",
        "message": "the recipient is not reading; message dropped",
        "id": "x",
    }
    bob = await connect(url, bob.welcome["resumeToken"], last=0)
    assert [(await bob.next())["payload"] for _ in range(MAX_MESSAGES)] == [
        f"q{index}" for index in range(MAX_MESSAGES)
    ]
    await quiet(bob)
    await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_byte_bound_tells_the_sender_dropped(server):
    """
    While a peer is away at most --resume-max-bytes of events wait for it,
    however few they are.
    """
    [url] = server.urls
    alice = await joined(url, "r8")
    bob = await joined(url, "r8")
    await alice.next()
    await lose(bob)
    big = "x" * 1200
    alice.send_json(message("r8", bob.peer_id, big))
    alice.send_json(message("r8", bob.peer_id, big))
    alice.send_json({**message("r8", bob.peer_id, big), "id": 3})
    refused = await alice.next()
    assert (refused["code"], refused["id"]) == ("dropped", 3)
    bob = await connect(url, bob.welcome["resumeToken"], last=0)
    assert [len((await bob.next())["payload"]) for _ in range(2)] == [1200, 1200]
    await quiet(bob)
    await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_after_the_grace_the_peer_leaves_and_the_token_is_dead(server):
    """
    A peer that does not come back within --resume-grace leaves its rooms
    as today; its token then gets a fresh session, not an error.
    """
    [url] = server.urls
    alice = await joined(url, "r4")
    bob = await joined(url, "r4")
    await alice.next()
    await lose(bob)
    await quiet(alice, GRACE * 0.6)
    left = await alice.next(timeout=GRACE * 2)
    assert (left["type"], left["peer"]["id"]) == ("peer-left", bob.peer_id)

    late = await connect(url, bob.welcome["resumeToken"], last=0)
    assert late.welcome["resumed"] is False
    assert late.peer_id != bob.peer_id
    assert "rooms" not in late.welcome
    await quiet(alice)
    await close(alice, late)


@pytest_twisted.ensureDeferred
async def test_replayed_and_unknown_tokens_get_a_fresh_session(server):
    """
    A token is good for one resume: replaying it (a stolen copy used after
    its owner) gets a fresh session with another id, as does a made-up one.
    """
    [url] = server.urls
    alice = await joined(url, "r5")
    bob = await joined(url, "r5")
    await alice.next()
    token = bob.welcome["resumeToken"]
    await lose(bob)
    bob = await connect(url, token)
    assert bob.welcome["resumed"] is True

    thief = await connect(url, token)
    assert thief.welcome["resumed"] is False
    assert thief.peer_id != bob.peer_id
    stranger = await connect(url, "A" * 43, last=5)
    assert stranger.welcome["resumed"] is False
    # A last that is no number counts as none.
    await lose(bob)
    bob = await connect(url, bob.welcome["resumeToken"] + "&last=%C2%B2")
    assert bob.welcome["resumed"] is True
    await quiet(alice)
    bob.send_json({"type": "ping", "id": 1})
    assert await bob.next() == {"type": "pong", "id": 1}
    await close(alice, bob, thief, stranger)


@pytest_twisted.ensureDeferred
async def test_resume_of_a_connected_peer_takes_it_over(server):
    """
    A resume while the peer's old socket is still open closes that socket
    with 4000 and carries on on the new one; the room sees no change.
    """
    [url] = server.urls
    alice = await joined(url, "r6")
    bob = await joined(url, "r6")
    await alice.next()
    second = await connect(url, bob.welcome["resumeToken"], last=0)
    assert second.welcome["resumed"] is True and second.peer_id == bob.peer_id
    assert await bob.closed == 4000
    alice.send_json(message("r6", bob.peer_id, "to the new socket"))
    assert (await second.next())["payload"] == "to the new socket"
    await quiet(alice)
    await close(alice, second)


@pytest_twisted.ensureDeferred
async def test_a_closed_socket_leaves_at_once(server):
    """
    A client that closes its socket meant to go: the others see it leave at
    once, and its token gets a fresh session.
    """
    [url] = server.urls
    alice = await joined(url, "r7")
    bob = await joined(url, "r7")
    await alice.next()
    await close(bob)
    left = await alice.next(timeout=GRACE / 2)
    assert (left["type"], left["peer"]["id"]) == ("peer-left", bob.peer_id)
    again = await connect(url, bob.welcome["resumeToken"])
    assert again.welcome["resumed"] is False
    await close(alice, again)


@pytest_twisted.ensureDeferred
async def test_resume_off(tmp_path):
    """
    --resume-grace 0 turns resume off: no token, no seq, and a lost socket
    leaves at once.
    """
    server = TwistdServer("--port", "tcp:0:interface=127.0.0.1", "--resume-grace", "0")
    server.start(tmp_path / "twistd.log")
    try:
        [url] = server.urls
        alice = await joined(url, "r")
        bob = await joined(url, "r")
        assert bob.welcome == {"type": "welcome", "peerId": bob.peer_id}
        joined_event = await alice.next()
        assert "seq" not in joined_event
        await lose(bob)
        assert (await alice.next(timeout=GRACE / 2))["type"] == "peer-left"
        await close(alice)
    finally:
        server.stop()


AUTH_SECRET = "the resume test secret, long enough for HS256 keys"


def jwt_token(sub: str, lifetime: float = 600) -> str:
    import time

    import jwt

    # The server accepts a token up to 30 s (its leeway) past its exp.
    return jwt.encode(
        {"sub": sub, "exp": int(time.time() + lifetime)}, AUTH_SECRET, algorithm="HS256"
    )


@pytest_twisted.ensureDeferred
async def test_resume_keeps_the_verified_user_and_its_token_expiry(tmp_path):
    """
    Under --auth a resumed session keeps the user its token proved, needs
    no token again, is not taken over with another user's token, and is not
    resumed once that token has expired.
    """
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--auth",
        "optional",
        "--jwt-secret",
        AUTH_SECRET,
        "--resume-grace",
        "10",
    )
    server.start(tmp_path / "twistd.log")
    try:
        [url] = server.urls
        bob = await connect(url + f"?token={jwt_token('bob')}")
        assert bob.welcome["userId"] == "bob"
        await lose(bob)
        mallory = await connect(
            url + f"?token={jwt_token('mallory')}&resume={bob.welcome['resumeToken']}"
        )
        assert (mallory.welcome["resumed"], mallory.welcome["userId"]) == (
            False,
            "mallory",
        )

        bob = await connect(url + f"?token={jwt_token('bob')}")
        await lose(bob)
        again = await connect(url, bob.welcome["resumeToken"])
        assert (again.welcome["resumed"], again.welcome["peerId"]) == (
            True,
            bob.peer_id,
        )
        assert again.welcome["userId"] == "bob"

        # Accepted for about 1.5 s more (exp plus the leeway).
        brief = await connect(url + f"?token={jwt_token('carol', lifetime=-28.5)}")
        assert brief.welcome["userId"] == "carol"
        await lose(brief)
        await sleep(2.5)
        late = await connect(url, brief.welcome["resumeToken"])
        assert late.welcome["resumed"] is False and "userId" not in late.welcome
        await close(mallory, again, late)
    finally:
        server.stop()
