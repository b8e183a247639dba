"""
A Python client of the native protocol for asyncio code (aiortc lives
there), on Autobahn's asyncio flavour: rooms, peers, signaling, reconnection
with exponential backoff and jitter, and session resume.

Autobahn picks its async framework per process (txaio): use this client in
an asyncio program, not inside a Twisted reactor. docs/clients.rst
documents the API and the resume rules::

    client = SignalingClient("ws://localhost:8080/signal")
    client.on("message", lambda event: print(event["from"], event["payload"]))
    await client.connect()
    await client.join("lobby", {"name": "alice"})
    client.send("lobby", "hello")
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import quote, urlparse

import attrs
from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

__all__ = ["Backoff", "SignalingClient", "State"]

Listener = Callable[[dict], Any]

_log = logging.getLogger(__name__)


class State(str, enum.Enum):
    """
    The states a client goes through; C{state} events carry them.
    """

    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@attrs.frozen
class Backoff:
    """
    The delays between reconnection attempts: C{min(cap, base * factor **
    attempt)}, less up to C{jitter} of it at random, so that many clients
    cut off at once do not come back at once.

    :ivar base: Seconds before the first retry, before jitter.
    :ivar factor: Growth per attempt.
    :ivar cap: The longest delay, in seconds.
    :ivar max_tries: Attempts before the client gives up (state
        C{closed}); L{None} never gives up.
    :ivar jitter: The fraction of a delay that may be taken off at random.
    """

    base: float = 0.5
    factor: float = 2
    cap: float = 30
    max_tries: int | None = None
    jitter: float = 0.5

    def delay(self, attempt: int, random_fraction: float) -> float:
        """
        :param attempt: 0 for the first retry.
        :param random_fraction: A number in [0, 1).
        """
        full = min(self.cap, self.base * self.factor**attempt)
        return full * (1 - self.jitter * random_fraction)

    def hinted(self, seconds: float, random_fraction: float) -> float:
        """
        The delay after a server's C{reconnect} message: its hint, plus up
        to C{jitter} of it at random (never sooner than the server asked,
        and not all its clients at once), at most C{cap}.

        :param seconds: The hint (C{delayMs} / 1000).
        :param random_fraction: A number in [0, 1).
        """
        return min(self.cap, seconds * (1 + self.jitter * random_fraction))


class _Protocol(WebSocketClientProtocol):
    signaling_open = False

    def onOpen(self) -> None:
        self.factory.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.factory.client._received(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.client._closed(self, code, reason or "")


class SignalingClient:
    """
    One peer of the native protocol, across reconnections.

    Events (L{on}): C{state} {state}, C{welcome}, C{peer-joined},
    C{peer-left}, C{offer}, C{answer}, C{candidate}, C{message} (the server's
    messages as dicts, C{reconnect} among them: the server is going away),
    C{reconnecting} {delay, attempt}, C{session-lost}
    {peerId, previousPeerId} (the rooms are then joined again, each with a
    C{rejoined} event carrying the C{joined} reply), C{error}.

    :ivar urls: The server's URLs; the client moves on to the next one when
        a server says it is going away or a connection cannot be opened.
    :ivar peer_id: The peer's id, once welcomed.
    :ivar rooms: The rooms it is in: room name to {peer id: metadata}.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | Callable[[], str] | None = None,
        backoff: Backoff = Backoff(),
        ping_interval: float = 15,
        ping_timeout: float = 5,
        ack_delay: float = 0.1,
        request_timeout: float = 10,
        random_fraction: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """
        :param url: C{ws://host:port/signal} or C{wss://…}, or several
            (nodes of one cluster, where a session resumes on any node).
        :param token: A JWT for a server with C{--auth}, or a function
            returning a fresh one, sent as C{?token=} on every connection.
        :param ping_interval: Seconds between the client's WebSocket pings;
            a socket whose network went away unnoticed is given up when
            one goes unanswered for C{ping_timeout}, and the client resumes
            on a new one. 0 turns them off.
        :param ack_delay: Seconds to gather acknowledgements into one.
        :param random_fraction: The jitter's source of randomness.
        :param sleep: Waits between attempts (a fake clock in tests).
        """
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("no URL to connect to")
        self._url_index = 0
        self.token = token
        self.backoff = backoff
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.ack_delay = ack_delay
        self.request_timeout = request_timeout
        self._random = random_fraction
        self._sleep = sleep
        self.state = State.IDLE
        self.peer_id: str | None = None
        self.rooms: dict[str, dict[str, Any]] = {}
        self._metadata: dict[str, Any] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._token: str | None = None
        self._last_seq = 0
        self._acked_seq = 0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._next_id = 1
        self._pending: dict[int, asyncio.Future] = {}
        self._outbox: list[dict] = []
        self._protocol: _Protocol | None = None
        self._socket_closed: asyncio.Future | None = None
        self._welcomed: asyncio.Future | None = None
        self._runner: asyncio.Task | None = None
        self._reconnect_hint: float | None = None
        self._opened_socket = False
        self.attempt = 0

    @property
    def url(self) -> str:
        """
        The URL the client connects to next (or is connected to).
        """
        return self.urls[self._url_index]

    def _next_url(self) -> None:
        self._url_index = (self._url_index + 1) % len(self.urls)

    # events

    def on(self, event_type: str, listener: Listener) -> Callable[[], None]:
        """
        Call C{listener} with every event of C{event_type}.

        :return: A function that unsubscribes it.
        """
        self._listeners.setdefault(event_type, []).append(listener)
        return lambda: self._listeners[event_type].remove(listener)

    def wait_for(
        self, event_type: str, predicate: Callable[[dict], bool] = lambda event: True
    ) -> asyncio.Future:
        """
        A future of the next event of C{event_type} that C{predicate} accepts.
        """
        future = asyncio.get_running_loop().create_future()

        def listener(event: dict) -> None:
            if not future.done() and predicate(event):
                unsubscribe()
                future.set_result(event)

        unsubscribe = self.on(event_type, listener)
        return future

    def _emit(self, event_type: str, event: dict) -> None:
        for listener in list(self._listeners.get(event_type, ())):
            try:
                result = listener(event)
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result)
            except Exception:
                # One listener's bug must not stop the others or the client.
                _log.exception("a %s listener failed", event_type)

    def _set_state(self, state: State, **detail: Any) -> None:
        if self.state is state:
            return
        self.state = state
        self._emit("state", {"state": state.value, **detail})

    # the session

    async def connect(self) -> dict:
        """
        Connect; returns the first C{welcome}. Reconnects on its own until
        L{close} or C{backoff.max_tries}.
        """
        loop = asyncio.get_running_loop()
        self._welcomed = loop.create_future()
        self._set_state(State.CONNECTING)
        self._runner = asyncio.ensure_future(self._run())
        return await self._welcomed

    async def close(self) -> None:
        """
        End the session: the others see this peer leave at once.
        """
        self._send_ack()
        self._set_state(State.CLOSED, code=1000, reason="closed by the client")
        protocol = self._protocol
        if protocol is not None:
            protocol.sendClose(1000)
        if self._runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._runner), 5)
            except asyncio.TimeoutError:
                self._runner.cancel()
        self._fail_pending(ConnectionError("the client was closed"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.state is not State.CLOSED:
            self._socket_closed = loop.create_future()
            self._reconnect_hint = None
            self._opened_socket = False
            try:
                await self._open(self._resume_url())
                code, reason = await self._socket_closed
            except OSError as error:
                code, reason = 1006, str(error)
            if self.state is State.CLOSED:
                return
            hint = self._reconnect_hint
            if hint is not None or not self._opened_socket:
                # Going away, or not there: another node may be.
                self._next_url()
            if code == 4000 and reason.startswith("taken over"):
                # Another socket resumed this session: it is that one's now.
                self._set_state(State.CLOSED, code=code, reason=reason)
                self._fail_pending(ConnectionError("the session was taken over"))
                return
            max_tries = self.backoff.max_tries
            if max_tries is not None and self.attempt >= max_tries:
                self._set_state(State.CLOSED, code=code, reason="gave up reconnecting")
                self._fail_pending(ConnectionError("gave up reconnecting"))
                if not self._welcomed.done():
                    self._welcomed.set_exception(
                        ConnectionError(f"could not connect: {reason}")
                    )
                return
            if hint is not None:
                delay = self.backoff.hinted(hint, self._random())
            else:
                delay = self.backoff.delay(self.attempt, self._random())
            self.attempt += 1
            self._set_state(
                State.RECONNECTING,
                code=code,
                reason=reason,
                delay=delay,
                attempt=self.attempt,
            )
            self._emit(
                "reconnecting", {"delay": delay, "attempt": self.attempt, "code": code}
            )
            await self._sleep(delay)

    async def _open(self, url: str) -> None:
        parsed = urlparse(url)
        secure = parsed.scheme == "wss"
        factory = WebSocketClientFactory(url)
        factory.protocol = _Protocol
        factory.client = self
        # A ping timeout drops the TCP connection without a close frame, so
        # that a server still holding it keeps the session for the resume.
        factory.setProtocolOptions(
            autoPingInterval=self.ping_interval,
            autoPingTimeout=self.ping_timeout if self.ping_interval else 0,
            failByDrop=False,
        )
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            factory,
            parsed.hostname,
            parsed.port or (443 if secure else 80),
            ssl=secure or None,
        )

    def _resume_url(self) -> str:
        """
        The URL of the next connection: with the token, and the resume
        token once there is one.
        """
        params = {}
        token = self.token() if callable(self.token) else self.token
        if token:
            params["token"] = token
        if self._token is not None:
            params.update(resume=self._token, last=str(self._last_seq))
        if not params:
            return self.url
        query = "&".join(
            f"{name}={quote(value, safe='')}" for name, value in params.items()
        )
        return f"{self.url}{'&' if '?' in self.url else '?'}{query}"

    # rooms and signals

    async def join(self, room: str, metadata: dict | None = None) -> dict:
        reply = await self._request(
            {"type": "join", "room": room, "metadata": metadata or {}}
        )
        self.rooms[room] = {peer["id"]: peer["metadata"] for peer in reply["peers"]}
        self._metadata[room] = metadata or {}
        return reply

    async def leave(self, room: str) -> dict:
        self._metadata.pop(room, None)
        reply = await self._request({"type": "leave", "room": room})
        self.rooms.pop(room, None)
        return reply

    async def ping(self) -> dict:
        return await self._request({"type": "ping"})

    def offer(self, room: str, to: str, description: Any) -> None:
        self._send({"type": "offer", "room": room, "to": to, "payload": description})

    def answer(self, room: str, to: str, description: Any) -> None:
        self._send({"type": "answer", "room": room, "to": to, "payload": description})

    def candidate(self, room: str, candidate: Any, to: str | None = None) -> None:
        """
        An ICE candidate to C{to}, or to everyone in C{room} without it.
        """
        self._send(
            self._addressed(
                {"type": "candidate", "room": room, "payload": candidate}, to
            )
        )

    def send(self, room: str, payload: Any, to: str | None = None) -> None:
        """
        Application data to C{to}, or to everyone in C{room} without it.
        """
        self._send(
            self._addressed({"type": "message", "room": room, "payload": payload}, to)
        )

    @staticmethod
    def _addressed(message: dict, to: str | None) -> dict:
        if to is not None:
            message["to"] = to
        return message

    # the wire

    def _send(self, message: dict) -> None:
        protocol = self._protocol
        if (
            self.state is State.OPEN
            and protocol is not None
            and protocol.signaling_open
        ):
            protocol.sendMessage(json.dumps(message).encode("utf-8"))
        else:
            self._outbox.append(message)

    async def _request(self, message: dict) -> dict:
        request_id = self._next_id
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._send({**message, "id": request_id})
        try:
            reply = await asyncio.wait_for(future, self.request_timeout)
        finally:
            self._pending.pop(request_id, None)
        if reply["type"] == "error":
            error = RuntimeError(reply["message"])
            error.code = reply["code"]  # type: ignore[attr-defined]
            raise error
        return reply

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def _opened(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        self._opened_socket = True
        protocol.signaling_open = True

    def _closed(self, protocol: _Protocol, code: int | None, reason: str) -> None:
        protocol.signaling_open = False
        if protocol is self._protocol:
            self._protocol = None
        if self._socket_closed is not None and not self._socket_closed.done():
            self._socket_closed.set_result((code or 1006, reason))

    def _received(self, protocol: _Protocol, payload: bytes) -> None:
        if protocol is not self._protocol:
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        message_type = message.get("type")
        if message_type == "welcome":
            self._welcome(message)
            return
        if message_type == "reconnect":
            delay_ms = message.get("delayMs")
            self._reconnect_hint = (
                max(0.0, delay_ms / 1000)
                if isinstance(delay_ms, (int, float)) and not isinstance(delay_ms, bool)
                else 0.0
            )
        request_id = message.get("id")
        if request_id in self._pending:
            future = self._pending.pop(request_id)
            if not future.done():
                future.set_result(message)
            return
        seq = message.get("seq")
        if isinstance(seq, int) and seq <= self._last_seq:
            # Never twice, whatever the server replays.
            return
        room = self.rooms.get(message.get("room"))
        if room is not None and message_type == "peer-joined":
            room[message["peer"]["id"]] = message["peer"]["metadata"]
        elif room is not None and message_type == "peer-left":
            room.pop(message["peer"]["id"], None)
        self._emit(message_type, message)
        if isinstance(seq, int):
            self._last_seq = seq
            self._schedule_ack()

    def _welcome(self, message: dict) -> None:
        previous = self.peer_id
        self.peer_id = message["peerId"]
        self._token = message.get("resumeToken")
        self.attempt = 0
        lost = previous is not None and not message.get("resumed")
        if not message.get("resumed"):
            self._last_seq = self._acked_seq = 0
        self._set_state(State.OPEN, resumed=bool(message.get("resumed")))
        self._emit("welcome", message)
        if lost:
            # The server no longer had the session: join the rooms again.
            rooms = list(self._metadata.items())
            self.rooms.clear()
            self._emit(
                "session-lost", {"peerId": self.peer_id, "previousPeerId": previous}
            )
            for room, metadata in rooms:
                asyncio.ensure_future(self._rejoin(room, metadata))
        outbox, self._outbox = self._outbox, []
        for queued in outbox:
            self._send(queued)
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_result(message)

    async def _rejoin(self, room: str, metadata: dict) -> None:
        try:
            self._emit("rejoined", await self.join(room, metadata))
        except Exception as error:
            self._emit(
                "error",
                {
                    "code": getattr(error, "code", "internal-error"),
                    "message": str(error),
                    "room": room,
                },
            )

    def _schedule_ack(self) -> None:
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                self.ack_delay, self._send_ack
            )

    def _send_ack(self) -> None:
        self._ack_timer = None
        protocol = self._protocol
        if (
            self._last_seq > self._acked_seq
            and protocol is not None
            and protocol.signaling_open
        ):
            self._acked_seq = self._last_seq
            protocol.sendMessage(
                json.dumps({"type": "ack", "seq": self._last_seq}).encode("utf-8")
            )
