"""
The real C{peerjs} client (npm, tests/node/peerjs) in headless Chromium
against the PeerJS dialect of a real twistd: two tabs open a DataConnection
through our server and exchange messages both ways.

The page and C{peerjs.min.js} come from a small HTTP server of the test's
own; the signaling server does not ship the client.
"""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from .browser import running_browser
from .realsockets import ROOT, TwistdServer, node_with_packages

PEERJS_DIR = ROOT / "tests" / "node" / "peerjs"

#: The wire document's snippet: tab 1 ?me=bob, tab 2 ?me=alice&other=bob.
PAGE = """<!doctype html><meta charset="utf-8"><title>peerjs</title>
<script src="/peerjs.min.js"></script><script>
const q = new URLSearchParams(location.search), me = q.get('me'), other = q.get('other');
window.got = []; window.errors = []; window.opened = false;
const peer = new peerjs.Peer(me, {host: '127.0.0.1', port: Number(q.get('port')),
  path: '/peerjs', secure: false, config: {iceServers: []}});
peer.on('error', e => errors.push(e.type));
peer.on('connection', c => c.on('data', d => { got.push(d); c.send('echo:' + d); }));
peer.on('open', id => { window.opened = id; if (!other) return;
  const c = peer.connect(other, {reliable: true});
  c.on('open', () => c.send('hi')); c.on('data', d => got.push(d)); });
</script>"""


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/page"):
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path != "/peerjs.min.js":
            self.send_error(404)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def pages():
    node_with_packages("the peerjs browser test", PEERJS_DIR)
    handler = functools.partial(
        _PageHandler, directory=str(PEERJS_DIR / "node_modules" / "peerjs" / "dist")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(tmp_path):
    yield from running_browser(tmp_path)


@pytest.fixture
def server(tmp_path):
    server = TwistdServer("--port", "tcp:0:interface=127.0.0.1", "--ping-interval", "0")
    server.start(tmp_path / "twistd.log")
    server.port = int(server.urls[0].rsplit(":", 1)[1].split("/", 1)[0])
    yield server
    server.stop()


def test_data_connection(browser, server, pages):
    """
    Bob opens, Alice opens and connects to Bob: the DataConnection opens
    over our server's OFFER/ANSWER/CANDIDATE relay, "hi" reaches Bob and
    his echo reaches Alice.
    """
    bob = browser.open_tab(f"{pages}/page?me=bob&port={server.port}")
    assert browser.wait_for(bob, "window.opened") == "bob"
    alice = browser.open_tab(f"{pages}/page?me=alice&other=bob&port={server.port}")
    try:
        browser.wait_for(alice, "window.got && got.includes('echo:hi')", timeout=20)
    except AssertionError:
        raise AssertionError(
            str(browser.evaluate(alice, "JSON.stringify([opened, got, errors])"))
            + str(browser.evaluate(bob, "JSON.stringify([opened, got, errors])"))
            + server.log()[-3000:]
        )
    assert browser.evaluate(bob, "got") == ["hi"]
    assert browser.evaluate(alice, "errors") == []
    assert "peerjs connection opened: peer alice" in server.log()
