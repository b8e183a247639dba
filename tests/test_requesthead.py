"""
The parse of a common request head, shared by the site's routing and the
fast handshake.
"""

from twisted.trial.unittest import SynchronousTestCase

from signaling.transports.requesthead import parse_request_head

_REST = (
    b"Host: localhost:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


class RequestHeadTests(SynchronousTestCase):
    def test_a_common_head(self):
        """
        The target, its path and query, and the headers by lower-case name
        with their values stripped, as a handshake reads them.
        """
        head = (
            b"GET /ws/lobby?token=a.b&x=1 HTTP/1.1\r\n"
            + _REST
            + b"User-Agent:  Mozilla/5.0 (X11)\t\r\nX-Empty:\r\n\r\n"
        )
        parsed = parse_request_head(head)
        self.assertIs(parsed.raw, head)
        self.assertEqual(parsed.uri, "/ws/lobby?token=a.b&x=1")
        self.assertEqual(parsed.path, "/ws/lobby")
        self.assertEqual(parsed.query, "token=a.b&x=1")
        self.assertEqual(parsed.status_line, "GET /ws/lobby?token=a.b&x=1 HTTP/1.1")
        self.assertEqual(
            parsed.headers,
            {
                "host": "localhost:8080",
                "upgrade": "websocket",
                "connection": "Upgrade",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
                "sec-websocket-version": "13",
                "user-agent": "Mozilla/5.0 (X11)",
                "x-empty": "",
            },
        )

    def test_no_query(self):
        parsed = parse_request_head(b"GET /signal HTTP/1.1\r\n" + _REST + b"\r\n")
        self.assertEqual((parsed.path, parsed.query), ("/signal", ""))

    def test_anything_else_is_not_parsed(self):
        """
        What is not common is left to twisted.web and Autobahn: None.
        """
        for head in [
            # Not a GET of an absolute path over HTTP/1.1, with single spaces.
            b"POST /signal HTTP/1.1\r\n" + _REST + b"\r\n",
            b"GET /signal HTTP/1.0\r\n" + _REST + b"\r\n",
            b"GET signal HTTP/1.1\r\n" + _REST + b"\r\n",
            b"GET http://localhost/signal HTTP/1.1\r\n" + _REST + b"\r\n",
            b"GET  /signal HTTP/1.1\r\n" + _REST + b"\r\n",
            b"GET /sig\tnal HTTP/1.1\r\n" + _REST + b"\r\n",
            # A byte outside printable ASCII, a lone CR or LF.
            b"GET /signal HTTP/1.1\r\n" + _REST + b"X: caf\xc3\xa9\r\n\r\n",
            b"GET /signal HTTP/1.1\r\n" + _REST + b"X: a\x00b\r\n\r\n",
            b"GET /signal HTTP/1.1\r\n" + _REST + b"X: a\rb\r\n\r\n",
            b"GET /signal HTTP/1.1\r\n" + _REST + b"X: a\nY: b\r\n\r\n",
            # A folded line; white space around a name; no name; no colon.
            b"GET /signal HTTP/1.1\r\n" + _REST + b"X: a\r\n b\r\n\r\n",
            b"GET /signal HTTP/1.1\r\n" + _REST + b"X : a\r\n\r\n",
            b"GET /signal HTTP/1.1\r\n" + _REST + b" X: a\r\n\r\n",
            b"GET /signal HTTP/1.1\r\n" + _REST + b": a\r\n\r\n",
            b"GET /signal HTTP/1.1\r\n" + _REST + b"X\r\n\r\n",
            # A header twice, in any case.
            b"GET /signal HTTP/1.1\r\n" + _REST + b"host: other\r\n\r\n",
            # Not one whole head.
            b"GET /signal HTTP/1.1\r\n" + _REST,
            b"GET /signal HTTP/1.1\r\n" + _REST + b"\r\nGET / HTTP/1.1\r\n\r\n",
        ]:
            self.assertIsNone(parse_request_head(head), head)
