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
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
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

    def __init__(
        self, *args: str, env: dict | None = None, file_limit: int | None = None
    ) -> None:
        """
        :param file_limit: The server's RLIMIT_NOFILE (as C{ulimit -n}).
        """
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.file_limit = file_limit
        self.process: subprocess.Popen | None = None
        self.urls: list[str] = []
        self.log_path: Path | None = None

    def start(
        self, log_path: Path, expect_urls: int = 1, timeout: float = 20
    ) -> list[str]:
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


def build_wheel(outdir: Path) -> Path:
    """
    Build the wheel of this tree into C{outdir}, as an operator would
    (C{python -m build}); its path.
    """
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(outdir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = outdir.glob("signaling-*.whl")
    return wheel


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
        self.client.connect(
            url, transports=["websocket"], auth=auth, wait_timeout=timeout
        )
        self.id = self.client.get_sid()

    def emit(self, event: str, data: Any, callback=None) -> None:
        self.client.emit(event, data, callback=callback)

    def next(self) -> tuple[str, Any]:
        return self.inbox.get(timeout=self.timeout)

    def close(self) -> None:
        self.client.disconnect()


class CuttableProxy:
    """
    A TCP proxy on loopback to C{port} whose connections L{cut} ends at
    once, with a reset and no WebSocket close frame, as when a network link
    goes. Threads, so that it serves clients in other processes whatever
    the reactor does.
    """

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self._target = port
        self._sockets: set = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(
                    ("127.0.0.1", self._target), timeout=5
                )
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pipe, args=(source, sink), daemon=True
                ).start()

    def _pipe(self, source, sink) -> None:
        import socket

        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown, not only close: a close does not wake the other
            # pipe's thread blocked in recv on the same socket, and the
            # socket stays open while it waits.
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def cut(self) -> None:
        """
        Reset every connection through the proxy; new ones are accepted.
        """
        import socket
        import struct

        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            try:
                # SO_LINGER 0: the close that follows sends a reset.
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                # Wakes the pipe threads, which close the sockets.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
        self.cut()


#: The npm packages the Node-driven tests use (tests/node/package.json).
NODE_DIR = ROOT / "tests" / "node"


def node_with_packages(what: str, directory: Path | None = None) -> str:
    """
    The node binary, with the packages of C{directory}'s package.json
    installed into its ignored node_modules on first use; fails on CI and
    skips elsewhere without Node.

    :param what: What cannot run without Node, for the skip message.
    :param directory: Where the package.json is; by default tests/node.
    """
    import shutil

    import pytest

    node_binary = shutil.which("node")
    npm = shutil.which("npm")
    if node_binary is None or npm is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are required on CI (see .ci/run)")
        pytest.skip(f"node and npm are not installed: {what} cannot run")
    directory = directory or NODE_DIR
    wanted = orjson.loads((directory / "package.json").read_bytes())["dependencies"]
    installed = [directory / "node_modules" / name for name in wanted]
    if not all(path.is_dir() for path in installed):
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(directory)],
            cwd=directory,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return node_binary


def twistd_servers(tmp_path: Path):
    """
    The body of a C{twistd} fixture: yields C{start(*args, env=None,
    expect_urls=1)}, which starts a L{TwistdServer} logging into
    C{tmp_path}; every server started is stopped afterwards.
    """
    servers: list[TwistdServer] = []

    def start(
        *args: str, env: dict | None = None, expect_urls: int = 1
    ) -> TwistdServer:
        server = TwistdServer(*args, env=env)
        servers.append(server)
        server.start(tmp_path / f"twistd-{len(servers)}.log", expect_urls)
        return server

    yield start
    for server in servers:
        server.stop()
