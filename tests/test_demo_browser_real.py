"""
The demo page at C{/} in a real browser: headless Chromium (Debian's
C{chromium}, installed by .ci/run) with fake media devices opens
C{/?room=NAME} in two tabs, driven over the Chrome DevTools protocol.

Set C{SIGNALING_SCREENSHOT=docs/demo.png} to keep the screenshot taken
during the call (it is how docs/demo.png was made).
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

from .realsockets import CuttableProxy, TwistdServer, stop_process

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


@pytest.fixture
def browser(tmp_path):
    browser = Browser(
        chromium_binary(), tmp_path / "profile", tmp_path / "chromium.log"
    )
    yield browser
    browser.stop()


@pytest.fixture
def server(tmp_path):
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--resume-grace",
        "10",
    )
    server.start(tmp_path / "twistd.log")
    server.port = int(server.urls[0].rsplit(":", 1)[1].split("/", 1)[0])
    yield server
    server.stop()


CONNECTED = (
    "(() => { const p = Object.values(demo.peers());"
    " return p.length === 1 && p[0].connection === 'connected' && p[0].channel === 'open'; })()"
)


def test_two_tabs_connect_chat_and_survive_a_cut(browser, server, tmp_path):
    """
    Two tabs on one C{/?room=NAME} reach C{connected} with an open data
    channel and no click; a chat message crosses it; the server loses one
    tab's socket (cut at a proxy) and the tab resumes its session while the
    other never sees it leave; the camera button starts a call. The log
    says where the page is.
    """
    assert (
        f"demo page: open http://127.0.0.1:{server.port}/ in two tabs" in server.log()
    )
    proxy = CuttableProxy(server.port)
    try:
        alice = browser.open_tab(f"http://127.0.0.1:{server.port}/?room=demo-test")
        alice_id = browser.wait_for(alice, "window.demo && demo.client.peerId")
        bob = browser.open_tab(f"http://127.0.0.1:{proxy.port}/?room=demo-test")
        bob_id = browser.wait_for(bob, "window.demo && demo.client.peerId")
        browser.wait_for(alice, CONNECTED)
        browser.wait_for(bob, CONNECTED)
        assert list(browser.evaluate(alice, "demo.peers()")) == [bob_id]
        assert list(browser.evaluate(bob, "demo.peers()")) == [alice_id]

        browser.evaluate(alice, "demo.say('hello over the data channel')")
        browser.wait_for(
            bob, "demo.chat.some(m => m.text === 'hello over the data channel')"
        )

        browser.evaluate(
            alice, "window.left = []; demo.client.on('peer-left', e => left.push(e)); 1"
        )
        browser.evaluate(
            bob,
            "window.states = []; window.welcomes = [];"
            " demo.client.on('state', e => states.push(e.state));"
            " demo.client.on('welcome', e => welcomes.push(e)); 1",
        )
        proxy.cut()
        try:
            browser.wait_for(bob, "welcomes.length === 1", timeout=10)
        except AssertionError:
            raise AssertionError(
                browser.evaluate(
                    bob, "JSON.stringify([states, welcomes, demo.client.state])"
                )
                + server.log()[-2000:]
            )
        welcome = browser.evaluate(bob, "welcomes[0]")
        assert (welcome["resumed"], welcome["peerId"]) == (True, bob_id)
        assert browser.evaluate(bob, "states") == ["reconnecting", "open"]
        assert browser.evaluate(alice, "left") == []
        assert list(browser.evaluate(alice, "demo.peers()")) == [bob_id]
        browser.evaluate(bob, "demo.say('still here')")
        browser.wait_for(alice, "demo.chat.some(m => m.text === 'still here')")

        for tab in (alice, bob):
            browser.evaluate(tab, "document.getElementById('media').click(); 1")
        for tab in (alice, bob):
            # Its own picture and the other's.
            browser.wait_for(
                tab,
                "[...document.querySelectorAll('video')].filter(v => v.videoWidth > 0).length === 2",
            )
            browser.wait_for(tab, CONNECTED)
        png = browser.call("Page.captureScreenshot", alice, format="png")["data"]
        import base64

        image = base64.b64decode(png)
        assert image.startswith(b"\x89PNG")
        target = os.environ.get("SIGNALING_SCREENSHOT")
        (Path(target) if target else tmp_path / "demo.png").write_bytes(image)
    finally:
        proxy.close()
