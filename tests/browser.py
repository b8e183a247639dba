"""
A small Chrome DevTools driver for the browser tests: headless Chromium
(Debian's C{chromium}, installed by .ci/run), each tab a flattened session.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import websocket

from .realsockets import stop_process

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Loopback only: candidates must be usable on 127.0.0.1.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--window-size=1100,720",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required on CI (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


class Browser:
    """
    One Chromium process, spoken to over its DevTools WebSocket; each tab
    is a flattened session.
    """

    def __init__(self, binary: str, profile: Path, log_path: Path) -> None:
        self.log_file = open(log_path, "wb")
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            match = re.search(
                r"DevTools listening on (ws://\S+)",
                log_path.read_text(errors="replace"),
            )
            if match:
                url = match.group(1)
            elif self.process.poll() is not None:
                raise AssertionError(
                    "chromium exited:\n" + log_path.read_text(errors="replace")
                )
            else:
                time.sleep(0.05)
        assert url, "chromium did not start:\n" + log_path.read_text(errors="replace")
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        message_id = next(self.ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def open_tab(self, url: str) -> str:
        target = self.call("Target.createTarget", url=url)["targetId"]
        return self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 20) -> Any:
        """
        Poll C{expression} in the tab until it is truthy.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(session, expression)
            except AssertionError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {expression}")
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            self.ws.close()
        finally:
            stop_process(self.process)
            self.log_file.close()


def running_browser(tmp_path: Path):
    """
    The body of a C{browser} fixture: a L{Browser} with its profile and log
    in C{tmp_path}, stopped afterwards.
    """
    browser = Browser(
        chromium_binary(), tmp_path / "profile", tmp_path / "chromium.log"
    )
    try:
        yield browser
    finally:
        browser.stop()
