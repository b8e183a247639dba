"""
A real C{redis-server} for the cluster bus tests: on a unix socket in a
pytest temporary directory (never a TCP port, so parallel runs cannot
collide), started and stopped by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .realsockets import stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """
    C{redis-server} without persistence, so that a restart comes back empty.
    """

    def __init__(self, directory: Path, *options: str) -> None:
        """
        :param options: More C{redis-server} options (C{--requirepass}, ...).
        """
        self.directory = directory
        self.options = options
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10) -> None:
        log = open(self.directory / "redis.log", "ab")
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited early: {self.log()}")
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"redis-server did not start: {self.log()}")

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(1)
                client.connect(str(self.socket))
                client.sendall(b"PING\r\n")
                # -NOAUTH from a server with a password answers too.
                return client.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """
        Run one command on a connection of its own; the raw reply.
        """
        request = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args
        )
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(str(self.socket))
            client.sendall(request)
            return client.recv(65536)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""
