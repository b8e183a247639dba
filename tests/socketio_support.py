"""
In-memory Engine.IO and Socket.IO clients for the synchronous tests: polling
through L{treq.testing.StubTreq} on the real Klein site, WebSockets through
L{tests.support.Harness}.
"""

from __future__ import annotations

from typing import Any

import jwt
import orjson
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from signaling.auth import TokenVerifier
from signaling.hub import HubLimits
from signaling.transports.websocket import WebSocketSettings

from .support import Client, Harness, make_site

URL = "http://localhost:8080/socket.io/"
SECRET = "a test secret that is long enough for HS256"


def token(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


class RawClient(Client):
    """
    A WebSocket client that records text frames as strings, binary as bytes.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(payload if isBinary else payload.decode("utf-8"))

    def send_text(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"))


def events(packets: list[str]) -> list[tuple[str, Any]]:
    """
    The Socket.IO events among Engine.IO packets, as (name, data).
    """
    found = []
    for packet in packets:
        if packet.startswith("42["):
            name, *rest = orjson.loads(packet[2:])
            found.append((name, rest[0] if rest else None))
    return found


class Response:
    def __init__(self, code: int, headers: Any, body: str) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class SocketIOCase(SynchronousTestCase):
    """
    A hub and site, with helpers to reach C{/socket.io/} by polling and by
    WebSocket.
    """

    settings = WebSocketSettings(ping_interval=25, ping_timeout=20)
    limits = HubLimits()
    verifier: TokenVerifier | None = None

    def setUp(self) -> None:
        self.harness = Harness(self.limits, self.settings)
        self.addCleanup(self.harness.restore)
        self.site = make_site(self.harness.hub, self.settings, verifier=self.verifier)
        self.harness.site = self.site
        self.harness.web = Site(self.site.resource())
        self.stub = StubTreq(self.site.resource())
        self.hub = self.harness.hub
        self.clock = self.harness.clock

    @property
    def sessions(self) -> dict:
        return self.site._socketio.server.sessions

    # HTTP

    def start(
        self,
        method: str,
        query: str,
        body: bytes | None = None,
        headers: dict | None = None,
    ):
        return self.stub.request(method, URL + "?" + query, data=body, headers=headers)

    def finish(self, pending) -> Response:
        self.stub.flush()
        response = self.successResultOf(pending)
        body = self.successResultOf(response.content()).decode("utf-8")
        return Response(response.code, response.headers, body)

    def http(
        self,
        method: str,
        query: str,
        body: bytes | None = None,
        headers: dict | None = None,
    ) -> Response:
        return self.finish(self.start(method, query, body, headers))

    def assertEngineError(
        self, response: Response, code: int, status: int = 400
    ) -> None:
        self.assertEqual(response.code, status)
        body = response.json()
        self.assertEqual(body["code"], code)
        self.assertIsInstance(body["message"], str)

    # clients

    def polling(self, query: str = "", headers: dict | None = None) -> "PollingClient":
        return PollingClient(self, query, headers)

    def websocket(self, query: str = "", origin: str | None = None) -> RawClient:
        client = self.harness.connect(
            "/socket.io/?EIO=4&transport=websocket" + query,
            origin=origin,
            client_class=RawClient,
        )
        return client

    def ws_socket(self, auth: dict | None = None, query: str = "") -> RawClient:
        """
        A Socket.IO client connected over a WebSocket only; C{.id} is its
        socket id.
        """
        client = self.websocket(query)
        [opened] = client.take()
        self.assertEqual(opened[0], "0")
        client.sid = orjson.loads(opened[1:])["sid"]
        self.ws_send(
            client, "40" + (orjson.dumps(auth).decode() if auth is not None else "")
        )
        [connected] = client.take()
        self.assertEqual(connected[:2], "40", connected)
        client.id = orjson.loads(connected[2:])["sid"]
        return client

    def ws_send(self, client: RawClient, text: str) -> None:
        client.send_text(text)
        self.harness.flush()

    def ws_emit(
        self, client: RawClient, name: str, data: Any = None, ack: int | None = None
    ) -> None:
        self.ws_send(
            client,
            "42"
            + ("" if ack is None else str(ack))
            + orjson.dumps([name, data]).decode(),
        )

    def ws_events(self, client: RawClient) -> list[tuple[str, Any]]:
        return events([packet for packet in client.take() if isinstance(packet, str)])


class PollingClient:
    """
    An Engine.IO client on HTTP long-polling, opened by its constructor.
    """

    def __init__(
        self, case: SocketIOCase, query: str = "", headers: dict | None = None
    ) -> None:
        self.case = case
        self.headers = headers
        response = case.http("GET", "EIO=4&transport=polling" + query, headers=headers)
        case.assertEqual(response.code, 200, response.body)
        self.handshake_response = response
        case.assertEqual(response.body[0], "0")
        self.open = orjson.loads(response.body[1:])
        self.sid = self.open["sid"]
        self.id: str | None = None

    @property
    def query(self) -> str:
        return f"EIO=4&transport=polling&sid={self.sid}"

    def start_get(self):
        return self.case.start("GET", self.query, headers=self.headers)

    def get(self) -> list[str]:
        """
        One poll that must be answered at once; its packets.
        """
        response = self.case.http("GET", self.query, headers=self.headers)
        self.case.assertEqual(response.code, 200, response.body)
        return response.body.split("\x1e")

    def post(self, *packets: str) -> Response:
        return self.case.http(
            "POST", self.query, "\x1e".join(packets).encode("utf-8"), self.headers
        )

    def connect(self, auth: dict | None = None) -> str:
        """
        Socket.IO CONNECT to the default namespace; the socket id.
        """
        self.post("40" + (orjson.dumps(auth).decode() if auth is not None else ""))
        [connected] = self.get()
        self.case.assertEqual(connected[:2], "40", connected)
        self.id = orjson.loads(connected[2:])["sid"]
        return self.id

    def emit(self, name: str, data: Any = None, ack: int | None = None) -> Response:
        return self.post(
            "42"
            + ("" if ack is None else str(ack))
            + orjson.dumps([name, data]).decode()
        )

    def events(self) -> list[tuple[str, Any]]:
        return events(self.get())
