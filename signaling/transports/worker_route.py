"""
Engine.IO long-polling across C{--workers}: every request of a session must
reach the worker that holds it, yet the kernel hands each new connection to
any worker. A session's id names its worker (C{w<index>x...}); a request
for a session of another worker is passed on, over that worker's unix
socket in the workers' private directory, and its answer passed back.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs
from twisted.web.proxy import ProxyClientFactory
from twisted.web.server import NOT_DONE_YET

_OWNER = re.compile(r"^w(\d{1,4})x")


@attrs.frozen
class WorkerRoute:
    """
    Where this worker's sessions are named and where the others' are.

    :ivar index: This worker's index.
    :ivar directory: The directory of the workers' unix sockets.
    :ivar reactor: Connects to the other workers (an C{IReactorUNIX}).
    """

    index: int
    directory: str
    reactor: Any

    @property
    def sid_prefix(self) -> str:
        return f"w{self.index}x"

    def socket_path(self, index: int | None = None) -> str:
        return os.path.join(
            self.directory, f"worker{self.index if index is None else index}.sock"
        )

    def owner(self, sid: str) -> int | None:
        """
        The index of the worker that holds session C{sid}, if another one.
        """
        match = _OWNER.match(sid)
        if match is None or int(match.group(1)) == self.index:
            return None
        return int(match.group(1))

    def forward(self, request: Any, index: int) -> Any:
        """
        Pass C{request} on to worker C{index}; its answer is written to
        C{request}.
        """
        request.content.seek(0)
        factory = ProxyClientFactory(
            request.method,
            request.uri,
            request.clientproto,
            request.getAllHeaders(),
            request.content.read(),
            request,
        )
        self.reactor.connectUNIX(self.socket_path(index), factory, timeout=5)
        return NOT_DONE_YET
