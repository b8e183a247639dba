"""
Helpers for tests over real sockets: WebSocket clients on the running reactor
and a C{twistd -n signaling} subprocess.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, DeferredQueue

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))


class QueueClient(WebSocketClientProtocol):
    """
    A WebSocket client whose incoming messages wait in a queue.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: DeferredQueue = DeferredQueue()
        self.closed: Deferred = Deferred()
        self.answer_pings = True

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.put(orjson.loads(payload))

    def onPing(self, payload: bytes) -> None:
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason))
        if not self.closed.called:
            self.closed.callback(code)

    def send_json(self, message: Any) -> None:
        self.sendMessage(orjson.dumps(message))

    def next(self, timeout: float = 5) -> Deferred:
        """
        The next message, failing after C{timeout} seconds.
        """
        return self.messages.get().addTimeout(timeout, reactor)


def open_websocket(url: str, context=None, headers=None) -> Deferred:
    """
    Connect to C{url}; fires with the open L{QueueClient}.
    """
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = QueueClient
    factory.setProtocolOptions(autoPingInterval=0, failByDrop=False)
    factory.opened = Deferred()
    connectWS(factory, context, timeout=5)
    return factory.opened.addTimeout(10, reactor)


def sleep(seconds: float) -> Deferred:
    return defer.Deferred.fromCoroutine(_sleep(seconds))


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


class TwistdServer:
    """
    C{twistd -n signaling ARGS} in a subprocess; stopped by its PID.
    """

    def __init__(self, *args: str, env: dict | None = None, file_limit: int | None = None) -> None:
        """
        :param file_limit: The server's RLIMIT_NOFILE (as C{ulimit -n}).
        """
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.file_limit = file_limit
        self.process: subprocess.Popen | None = None
        self.urls: list[str] = []
        self.log_path: Path | None = None

    def start(self, log_path: Path, expect_urls: int = 1, timeout: float = 20) -> list[str]:
        self.log_path = log_path
        log_file = open(log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "signaling", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit_files if self.file_limit else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            self.urls = re.findall(r"signaling listening on (\S+)", text)
            if len(self.urls) >= expect_urls:
                return self.urls
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited early:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"twistd did not start:\n{log_path.read_text()}")

    def _limit_files(self) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (self.file_limit, self.file_limit))

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def stop_process(process: subprocess.Popen | None) -> None:
    """
    Stop a subprocess we started, by its PID: SIGTERM, then SIGKILL if it
    has not exited within 10 seconds.
    """
    if process is not None and process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


class SocketIOQueueClient:
    """
    A python-socketio client over WebSocket whose events wait in one queue,
    in the order they arrived, as C{(event, data)}.
    """

    def __init__(self, url: str, auth: dict | None = None, timeout: float = 5) -> None:
        import queue

        import socketio

        self.timeout = timeout
        self.inbox: queue.Queue = queue.Queue()
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", lambda event, data=None: self.inbox.put((event, data)))
        self.client.connect(url, transports=["websocket"], auth=auth, wait_timeout=timeout)
        self.id = self.client.get_sid()

    def emit(self, event: str, data: Any, callback=None) -> None:
        self.client.emit(event, data, callback=callback)

    def next(self) -> tuple[str, Any]:
        return self.inbox.get(timeout=self.timeout)

    def close(self) -> None:
        self.client.disconnect()


def twistd_servers(tmp_path: Path):
    """
    The body of a C{twistd} fixture: yields C{start(*args, env=None,
    expect_urls=1)}, which starts a L{TwistdServer} logging into
    C{tmp_path}; every server started is stopped afterwards.
    """
    servers: list[TwistdServer] = []

    def start(*args: str, env: dict | None = None, expect_urls: int = 1) -> TwistdServer:
        server = TwistdServer(*args, env=env)
        servers.append(server)
        server.start(tmp_path / f"twistd-{len(servers)}.log", expect_urls)
        return server

    yield start
    for server in servers:
        server.stop()
