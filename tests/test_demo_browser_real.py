"""
The demo page at C{/} in a real browser: headless Chromium (Debian's
C{chromium}, installed by .ci/run) with fake media devices opens
C{/?room=NAME} in two tabs, driven over the Chrome DevTools protocol.

Set C{SIGNALING_SCREENSHOT=docs/demo.png} to keep the screenshot taken
during the call (it is how docs/demo.png was made).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .browser import running_browser
from .realsockets import CuttableProxy, TwistdServer


@pytest.fixture
def browser(tmp_path):
    yield from running_browser(tmp_path)


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
