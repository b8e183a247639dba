"""
The Python client (signaling.client) on asyncio, driven against a running
server by tests/test_python_client_real.py in a process of its own (Autobahn
picks its async framework per process; the tests run on Twisted).

    python python_client_flows.py WS_URL FLOW

FLOW is backoff (a refused port and a recording sleep: the delays, then
state closed) or resume (two clients; one's TCP connection is aborted; it
comes back with the same id and every message exactly once, and the other
never sees it leave) or heartbeat (a proxy between one client and the server
goes silent; the client's pings go unanswered and it resumes on a new
socket). Prints "ok FLOW" and exits 0, or raises.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from signaling.client import Backoff, SignalingClient, State


def equal(actual, expected, what: str) -> None:
    assert actual == expected, f"{what}: expected {expected!r}, got {actual!r}"


async def backoff(url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused = f"ws://127.0.0.1:{probe.getsockname()[1]}/signal"
    delays: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        delays.append(seconds)

    client = SignalingClient(
        refused,
        backoff=Backoff(base=0.1, factor=3, cap=1, max_tries=5, jitter=0.5),
        random_fraction=lambda: 0.5,
        sleep=recording_sleep,
    )
    states: list[str] = []
    client.on("state", lambda event: states.append(event["state"]))
    try:
        await asyncio.wait_for(client.connect(), 5)
    except ConnectionError:
        pass
    else:
        raise AssertionError("connected to a closed port")
    equal(
        [round(delay, 6) for delay in delays],
        [0.075, 0.225, 0.675, 0.75, 0.75],
        "delays",
    )
    equal(states, ["connecting", "reconnecting", "closed"], "states")
    equal(client.state, State.CLOSED, "state")
    equal(Backoff().delay(0, 0), 0.5, "default base")
    equal(Backoff().delay(20, 0), 30, "default cap")


async def resume(url: str) -> None:
    fast = Backoff(base=0.05, cap=0.2, jitter=0)
    alice = SignalingClient(url, backoff=fast)
    bob = SignalingClient(url, backoff=fast, ack_delay=0.02)
    alice_welcome = await alice.connect()
    bob_welcome = await bob.connect()
    await alice.join("py-room", {"name": "alice"})
    bob_joins = alice.wait_for("peer-joined")
    joined = await bob.join("py-room", {"name": "bob"})
    equal(
        joined["peers"],
        [{"id": alice_welcome["peerId"], "metadata": {"name": "alice"}}],
        "bob sees alice",
    )
    await asyncio.wait_for(bob_joins, 2)
    equal(
        alice.rooms["py-room"],
        {bob_welcome["peerId"]: {"name": "bob"}},
        "alice's peers",
    )

    left: list[dict] = []
    alice.on("peer-left", left.append)
    received: list[str] = []
    bob.on("message", lambda event: received.append(event["payload"]))
    alice.send("py-room", "one", to=bob.peer_id)
    await asyncio.wait_for(bob.wait_for("message"), 2)
    await asyncio.sleep(0.1)

    states: list[str] = []
    bob.on("state", lambda event: states.append(event["state"]))
    back = bob.wait_for("welcome")
    # The network goes: no close frame.
    bob._protocol.transport.abort()
    await asyncio.sleep(0.02)
    alice.send("py-room", "two", to=bob_welcome["peerId"])
    alice.send("py-room", "three")
    welcome = await asyncio.wait_for(back, 3)
    equal(
        (welcome["resumed"], welcome["peerId"]),
        (True, bob_welcome["peerId"]),
        "same session",
    )
    await asyncio.sleep(0.2)
    equal(received, ["one", "two", "three"], "messages, exactly once and in order")
    equal(states, ["reconnecting", "open"], "states through the cut")
    equal(left, [], "alice saw no leave")
    pong = await bob.ping()
    equal(pong["type"], "pong", "ping after resume")

    gone = alice.wait_for("peer-left")
    await bob.close()
    equal(
        (await asyncio.wait_for(gone, 2))["peer"]["id"],
        bob_welcome["peerId"],
        "who left",
    )
    await alice.close()


class SilentProxy:
    """
    A TCP proxy to the server that can go silent: nothing more passes
    either way, and neither end hears of it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent: list[asyncio.Task] = []
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self.writers = getattr(self, "writers", []) + [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            self.tasks.append(asyncio.ensure_future(self._pipe(source, sink)))

    @staticmethod
    async def _pipe(reader, writer) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    def go_silent(self) -> None:
        # The sockets stay open, unread: the tasks stop moving bytes.
        for task in self.tasks:
            task.cancel()
        self.tasks = []

    def close(self) -> None:
        self.go_silent()
        self.server.close()
        for writer in getattr(self, "writers", []):
            writer.transport.abort()


async def heartbeat(url: str) -> None:
    fast = Backoff(base=0.05, cap=0.2, jitter=0)
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = SilentProxy(port)
    proxy_port = await proxy.start()
    alice = SignalingClient(url, backoff=fast, ping_interval=0)
    bob = SignalingClient(
        url.replace(f":{port}/", f":{proxy_port}/"),
        backoff=fast,
        ping_interval=0.5,
        ping_timeout=1,
    )
    await alice.connect()
    bob_welcome = await bob.connect()
    await alice.join("py-silent", {})
    bob_joins = alice.wait_for("peer-joined")
    await bob.join("py-silent", {})
    await asyncio.wait_for(bob_joins, 2)
    await asyncio.sleep(1.6)
    equal(bob.state, State.OPEN, "pings answered")
    left: list[dict] = []
    alice.on("peer-left", left.append)
    received: list[str] = []
    bob.on("message", lambda event: received.append(event["payload"]))

    back = bob.wait_for("welcome")
    proxy.go_silent()
    alice.send("py-silent", "while silent", to=bob_welcome["peerId"])
    welcome = await asyncio.wait_for(back, 5)
    equal(
        (welcome["resumed"], welcome["peerId"]),
        (True, bob_welcome["peerId"]),
        "same session",
    )
    await asyncio.sleep(0.1)
    equal(received, ["while silent"], "the message, once")
    equal(left, [], "alice saw no leave")
    await bob.close()
    await alice.close()
    proxy.close()


async def auth(url: str) -> None:
    """
    The server runs with --auth required; TOKEN is a JWT for "alice".
    """
    import os

    issued: list[str] = []

    def fresh_token() -> str:
        issued.append(os.environ["TOKEN"])
        return issued[-1]

    alice = SignalingClient(
        url, token=fresh_token, backoff=Backoff(base=0.05, jitter=0)
    )
    welcome = await alice.connect()
    equal(welcome.get("userId"), "alice", "verified user")
    await alice.join("py-auth", {})
    back = alice.wait_for("welcome")
    alice._protocol.transport.abort()
    resumed = await asyncio.wait_for(back, 3)
    equal(
        (resumed["resumed"], resumed["peerId"], resumed.get("userId")),
        (True, welcome["peerId"], "alice"),
        "same verified session",
    )
    equal(len(issued), 2, "a token for each connection")
    equal((await alice.ping())["type"], "pong", "requests work")
    await alice.close()


async def drain(urls: str) -> None:
    """
    URLS is two servers' URLs, comma-separated; DRAIN_PID the first's
    process. Told to reconnect by the first as it drains, the client waits
    the server's hint (with its jitter) and comes back to the second, which
    never had its session: it joins its room again there.
    """
    first, second = urls.split(",")
    delays: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        delays.append(seconds)

    carol = SignalingClient(second)
    await carol.connect()
    await carol.join("py-drain", {"name": "carol"})
    dave = SignalingClient(
        [first, second],
        backoff=Backoff(jitter=0.5),
        random_fraction=lambda: 0.5,
        sleep=recording_sleep,
    )
    welcome = await dave.connect()
    await dave.join("py-drain", {"name": "dave"})
    equal(dave.url, first, "connected to the first")
    told = dave.wait_for("reconnect")
    back = dave.wait_for("welcome")
    rejoined = dave.wait_for("rejoined")
    carol_sees = carol.wait_for("peer-joined")
    os.kill(int(os.environ["DRAIN_PID"]), signal.SIGTERM)
    equal((await asyncio.wait_for(told, 5))["delayMs"], 1000, "the hint")
    again = await asyncio.wait_for(back, 5)
    # The hint, 1 s, and half of the jitter's half.
    equal(delays, [1.25], "the wait before coming back")
    equal(dave.url, second, "came back to the second")
    equal(again["resumed"], False, "a server that never had the session")
    await asyncio.wait_for(rejoined, 5)
    joined = await asyncio.wait_for(carol_sees, 5)
    equal(
        (joined["peer"]["id"], joined["peer"]["metadata"]),
        (again["peerId"], {"name": "dave"}),
        "carol sees dave arrive",
    )
    check(again["peerId"] != welcome["peerId"], "a new peer id")
    equal(Backoff(jitter=0.5, cap=2).hinted(10, 0.5), 2, "the cap bounds a long hint")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused = f"ws://127.0.0.1:{probe.getsockname()[1]}/signal"
    eve = SignalingClient(
        [refused, second], backoff=Backoff(base=0.01, jitter=0), sleep=recording_sleep
    )
    await asyncio.wait_for(eve.connect(), 5)
    equal(eve.url, second, "a URL that refuses is passed over")
    await eve.close()
    await dave.close()
    await carol.close()


def check(condition: bool, what: str) -> None:
    assert condition, what


if __name__ == "__main__":
    ws_url, flow = sys.argv[1:3]
    asyncio.run(
        {
            "backoff": backoff,
            "resume": resume,
            "heartbeat": heartbeat,
            "auth": auth,
            "drain": drain,
        }[flow](ws_url)
    )
    print(f"ok {flow}")
