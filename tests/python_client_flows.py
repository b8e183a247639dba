"""
The Python client (signaling.client) on asyncio, driven against a running
server by tests/test_python_client_real.py in a process of its own (Autobahn
picks its async framework per process; the tests run on Twisted).

    python python_client_flows.py WS_URL FLOW

FLOW is backoff (a refused port and a recording sleep: the delays, then
state closed) or resume (two clients; one's TCP connection is aborted; it
comes back with the same id and every message exactly once, and the other
never sees it leave). Prints "ok FLOW" and exits 0, or raises.
"""

from __future__ import annotations

import asyncio
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
    equal([round(delay, 6) for delay in delays], [0.075, 0.225, 0.675, 0.75, 0.75], "delays")
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
    equal(joined["peers"], [{"id": alice_welcome["peerId"], "metadata": {"name": "alice"}}], "bob sees alice")
    await asyncio.wait_for(bob_joins, 2)
    equal(alice.rooms["py-room"], {bob_welcome["peerId"]: {"name": "bob"}}, "alice's peers")

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
    equal((welcome["resumed"], welcome["peerId"]), (True, bob_welcome["peerId"]), "same session")
    await asyncio.sleep(0.2)
    equal(received, ["one", "two", "three"], "messages, exactly once and in order")
    equal(states, ["reconnecting", "open"], "states through the cut")
    equal(left, [], "alice saw no leave")
    pong = await bob.ping()
    equal(pong["type"], "pong", "ping after resume")

    gone = alice.wait_for("peer-left")
    await bob.close()
    equal((await asyncio.wait_for(gone, 2))["peer"]["id"], bob_welcome["peerId"], "who left")
    await alice.close()


if __name__ == "__main__":
    ws_url, flow = sys.argv[1:3]
    asyncio.run({"backoff": backoff, "resume": resume}[flow](ws_url))
    print(f"ok {flow}")
