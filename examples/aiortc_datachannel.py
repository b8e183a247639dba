"""
Two aiortc peers find each other through the signaling server and exchange
a message over a real WebRTC data channel.

    pip install -e '.[examples]'
    twistd -n signaling &
    python examples/aiortc_datachannel.py ws://localhost:8080/signal

Both peers run in this one program, each with its own L{SignalingClient}
(so its own WebSocket and peer id), as two machines would. The second to
join the room is the caller: it sees the first in its C{joined} reply. aiortc
gathers its ICE candidates before its description is sent, so the offer and
answer carry them and no C{candidate} messages are needed.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from signaling.client import SignalingClient


def description(payload: dict) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=payload["sdp"], type=payload["type"])


def as_payload(pc: RTCPeerConnection) -> dict:
    return {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}


async def callee(url: str, room: str, joined: asyncio.Event) -> str:
    """
    Join first, answer the offer, and echo the first message back.

    :return: The message received over the data channel.
    """
    client = SignalingClient(url)
    await client.connect()
    await client.join(room, {"name": "callee"})
    joined.set()
    # No STUN server: the peers meet on this host or LAN (aiortc's default
    # would ask Google's).
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received: asyncio.Future = asyncio.get_running_loop().create_future()

    @pc.on("datachannel")
    def on_datachannel(channel) -> None:
        @channel.on("message")
        def on_message(message: str) -> None:
            channel.send(f"echo: {message}")
            if not received.done():
                received.set_result(message)

    offer = await client.wait_for("offer")
    await pc.setRemoteDescription(description(offer["payload"]))
    await pc.setLocalDescription(await pc.createAnswer())
    client.answer(room, offer["from"], as_payload(pc))
    message = await received
    # Give the echo time to leave before the connection closes.
    await asyncio.sleep(0.5)
    await pc.close()
    await client.close()
    return message


async def caller(url: str, room: str, joined: asyncio.Event, text: str) -> str:
    """
    Join second, call the peer already there and send it C{text}.

    :return: The echo received over the data channel.
    """
    await joined.wait()
    client = SignalingClient(url)
    await client.connect()
    reply = await client.join(room, {"name": "caller"})
    [callee_id] = [peer["id"] for peer in reply["peers"]]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("chat")
    echoed: asyncio.Future = asyncio.get_running_loop().create_future()

    @channel.on("open")
    def on_open() -> None:
        channel.send(text)

    @channel.on("message")
    def on_message(message: str) -> None:
        if not echoed.done():
            echoed.set_result(message)

    answer = client.wait_for("answer")
    await pc.setLocalDescription(await pc.createOffer())
    client.offer(room, callee_id, as_payload(pc))
    await pc.setRemoteDescription(description((await answer)["payload"]))
    echo = await echoed
    await pc.close()
    await client.close()
    return echo


def use_loopback_only() -> None:
    """
    Make aioice gather 127.0.0.1 as the only host candidate: for a machine
    (a test run, a sandbox) whose traffic must stay on loopback. aioice
    leaves loopback out of its own list, so without this the peers meet
    on the host's network addresses.
    """
    from aioice import ice

    ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


async def main(url: str, room: str, text: str, timeout: float) -> None:
    joined = asyncio.Event()
    received, echo = await asyncio.wait_for(
        asyncio.gather(callee(url, room, joined), caller(url, room, joined, text)),
        timeout,
    )
    print(f"callee received over the data channel: {received}")
    print(f"caller received over the data channel: {echo}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="ws://localhost:8080/signal")
    parser.add_argument("--room", default=f"aiortc-{secrets.token_hex(4)}")
    parser.add_argument("--message", default="hello over WebRTC")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument(
        "--loopback",
        action="store_true",
        help="meet over 127.0.0.1 only (aioice offers no loopback candidate of its own)",
    )
    arguments = parser.parse_args()
    if arguments.loopback:
        use_loopback_only()
    asyncio.run(
        main(arguments.url, arguments.room, arguments.message, arguments.timeout)
    )
