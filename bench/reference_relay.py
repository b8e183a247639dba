"""
The naive relay the benchmark measures our server against.

The thinnest Twisted/Autobahn signaling relay one would write in an
afternoon: Autobahn's default protocol options, the standard library's
C{json}, a dict of id -> protocol and a dict of room -> ids. It speaks just
enough of the native protocol (C{/signal}) and the topic dialect
(C{/ws/TOPIC}) for the load generator, and answers C{GET /api/stats} with
the same counts as the real server so the churn scenario can check both.

Run: C{python bench/reference_relay.py --port 0}; it prints
C{reference relay listening on ws://127.0.0.1:PORT}.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

RELAY_TYPES = {"offer", "answer", "candidate", "ice-candidate", "message"}

peers: dict[str, "RelayProtocol"] = {}
rooms: dict[str, set[str]] = {}


class RelayProtocol(WebSocketServerProtocol):
    peer_id = None
    topic = None

    def onConnect(self, request):
        if request.path.startswith("/ws/"):
            self.topic = request.path[len("/ws/") :]

    def onOpen(self):
        self.peer_id = uuid.uuid4().hex
        peers[self.peer_id] = self
        self.my_rooms = set()
        if self.topic is None:
            self.send_json({"type": "welcome", "peerId": self.peer_id})
            return
        self.send_json({"type": "welcome", "selfId": self.peer_id})
        others = rooms.setdefault(self.topic, set())
        self.send_json({"type": "peer-list", "peers": [{"id": i} for i in others]})
        for other in others:
            peers[other].send_json({"type": "peer-joined", "peerId": self.peer_id})
        others.add(self.peer_id)
        self.my_rooms.add(self.topic)

    def onMessage(self, payload, isBinary):
        message = json.loads(payload.decode("utf-8"))
        kind = message.get("type")
        if kind in RELAY_TYPES:
            target = peers.get(message.get("to"))
            if target is None:
                self.send_json({"type": "error", "code": "peer-not-found"})
            elif self.topic is None:
                target.send_json(
                    {
                        "type": kind,
                        "room": message.get("room"),
                        "from": self.peer_id,
                        "payload": message.get("payload"),
                    }
                )
            else:
                message["from"] = self.peer_id
                target.send_json(message)
        elif kind == "join":
            room = message["room"]
            members = rooms.setdefault(room, set())
            self.send_json(
                {
                    "type": "joined",
                    "room": room,
                    "peers": [{"id": i, "metadata": {}} for i in members],
                }
            )
            for other in members:
                peers[other].send_json(
                    {
                        "type": "peer-joined",
                        "room": room,
                        "peer": {"id": self.peer_id, "metadata": {}},
                    }
                )
            members.add(self.peer_id)
            self.my_rooms.add(room)
        elif kind == "leave":
            room = message["room"]
            self.leave(room)
            self.send_json({"type": "left", "room": room})

    def leave(self, room):
        self.my_rooms.discard(room)
        members = rooms.get(room, set())
        members.discard(self.peer_id)
        if not members:
            rooms.pop(room, None)
        for other in members:
            if self.topic is None:
                event = {
                    "type": "peer-left",
                    "room": room,
                    "peer": {"id": self.peer_id, "metadata": {}},
                }
            else:
                event = {"type": "peer-left", "peerId": self.peer_id}
            peers[other].send_json(event)

    def onClose(self, wasClean, code, reason):
        if self.peer_id is None:
            return
        for room in list(self.my_rooms):
            self.leave(room)
        peers.pop(self.peer_id, None)

    def send_json(self, body):
        self.sendMessage(json.dumps(body).encode("utf-8"))


class Stats(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        in_rooms = sum(1 for p in peers.values() if p.my_rooms)
        return json.dumps(
            {
                "peers": {"total": len(peers), "without_room": len(peers) - in_rooms},
                "rooms": {"total": len(rooms), "total_peers": in_rooms},
            }
        ).encode()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args(argv)
    factory = WebSocketServerFactory()
    factory.protocol = RelayProtocol
    websocket = WebSocketResource(factory)
    root = Resource()
    root.putChild(b"signal", websocket)
    root.putChild(b"ws", websocket)
    api = Resource()
    api.putChild(b"stats", Stats())
    root.putChild(b"api", api)
    port = reactor.listenTCP(
        options.port, Site(root), backlog=1024, interface="127.0.0.1"
    )
    print(
        f"reference relay listening on ws://127.0.0.1:{port.getHost().port}", flush=True
    )
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
