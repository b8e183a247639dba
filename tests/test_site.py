"""
The guarded HTTP site on a fake clock and in-memory transports: request
deadlines, body limits, per-address refusals, the fd warning, redaction.
"""

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource

from signaling.transports.addresses import AddressLimiter, AddressLimits
from signaling.transports.site import (
    GuardedSite,
    HTTPLimits,
    UpgradeRoutes,
    redact_uri,
)


class Echo(Resource):
    isLeaf = True

    def render(self, request):
        return b"body:" + request.content.read()


class Recorded(Protocol):
    """
    Stands for an Autobahn protocol: records its bytes and its end.
    """

    def __init__(self):
        self.received = []
        self.lost = []

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost.append(reason)


class RecordingFactory:
    def __init__(self):
        self.built = []

    def buildProtocol(self, address):
        protocol = Recorded()
        self.built.append((address, protocol))
        return protocol


UPGRADE = (
    b"GET /ws/lobby?token=t HTTP/1.1\r\nHost: localhost\r\nUpgrade: WebSocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class SiteTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.limiter = AddressLimiter(
            self.reactor, AddressLimits(max_connections=2, max_new_per_second=0)
        )
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def site(self, upgrades=None, **limits):
        return GuardedSite(
            Echo(),
            HTTPLimits(**{"request_timeout": 30, "max_body": 16, **limits}),
            self.limiter,
            self.reactor,
            open_files=lambda: self.open_files,
            file_limit=10,
            upgrades=upgrades,
        )

    def upgrades(self):
        self.factory = RecordingFactory()
        routes = UpgradeRoutes()
        routes.add("/ws/{topic}", self.factory)
        routes.add("/signal", self.factory)
        return routes

    open_files = 0

    def connect(self, site, host="192.0.2.7"):
        channel = site.buildProtocol(None)
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", host, 40000)
        )
        transport.protocol = channel
        channel.makeConnection(transport)
        return channel, transport

    def status(self, transport):
        return transport.value().split(b"\r\n", 1)[0]

    def test_trickled_head_is_cut_at_the_deadline(self):
        site = self.site()
        channel, transport = self.connect(site)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        for index in range(5):
            self.reactor.advance(5)
            channel.dataReceived(b"X-Slow: %d\r\n" % index)
        self.assertTrue(transport.connected)
        self.reactor.advance(5)
        self.assertEqual(self.status(transport), b"HTTP/1.1 408 Request Timeout")
        self.assertFalse(transport.connected)
        self.assertEqual(self.limiter.held("192.0.2.7"), 0)

    def test_idle_keep_alive_is_closed_quietly(self):
        site = self.site()
        channel, transport = self.connect(site)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"body:", transport.value())
        self.reactor.advance(29)
        self.assertTrue(transport.connected)
        transport.clear()
        self.reactor.advance(1)
        self.assertEqual((transport.value(), transport.connected), (b"", False))

    def test_a_silent_connection_is_closed_at_the_first_timeout(self):
        """
        A connection that sends nothing is closed quietly at its request
        deadline, or at the idle timeout where that comes first; until
        then the server holds one reactor call for the deadlines of all
        such connections.
        """
        for timeout, idle in ((30, 60), (30, 10)):
            site = self.site(request_timeout=timeout)
            site.timeOut = idle
            connections = [self.connect(site, f"192.0.2.{i}") for i in (1, 2)]
            if idle > timeout:
                self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
            self.reactor.advance(min(timeout, idle) - 1)
            self.assertTrue(all(t.connected for _, t in connections))
            self.reactor.advance(1)
            for _, transport in connections:
                self.assertEqual((transport.value(), transport.connected), (b"", False))
            self.reactor.advance(60)

    def test_first_bytes_start_the_idle_timeout(self):
        """
        Twisted's idle timeout is armed by a request's first bytes, for its
        whole period from then (as its reset on those bytes did before).
        """
        site = self.site(request_timeout=30)
        site.timeOut = 60
        channel, transport = self.connect(site)
        self.reactor.advance(10)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(
            sorted(call.getTime() for call in self.reactor.getDelayedCalls()),
            [30, 70],
        )

    def test_content_length_over_the_limit(self):
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 413 Content Too Large")
        self.assertEqual(
            orjson.loads(transport.value().split(b"\r\n\r\n", 1)[1]),
            {"error": "request body too large", "limit": 16},
        )

    def test_chunked_body_stops_at_the_limit(self):
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        channel.dataReceived(b"10\r\n" + b"x" * 16 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"1\r\ny\r\n0\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 413 Content Too Large")
        self.assertNotIn(b"body:", transport.value())

    def test_body_within_the_limit_and_get_without_one(self):
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        self.assertIn(b"body:abc", transport.value())
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(self.status(transport), b"HTTP/1.1 413 Content Too Large")

    def test_over_the_cap_is_429_at_accept_and_closing_frees_a_slot(self):
        site = self.site()
        first, first_transport = self.connect(site)
        self.connect(site)
        _, refused = self.connect(site)
        self.assertEqual(self.status(refused), b"HTTP/1.1 429 Too Many Requests")
        self.assertFalse(refused.connected)
        self.assertEqual(site.open_connections, 2)
        first_transport.loseConnection()
        _, admitted = self.connect(site)
        self.assertEqual(admitted.value(), b"")

    def test_forwarded_address_counts_behind_proxies(self):
        site = self.site(trusted_hops=1)
        for _ in range(2):
            channel, transport = self.connect(site, host="10.0.0.1")
            channel.dataReceived(
                b"GET / HTTP/1.1\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n"
            )
            self.assertIn(b"body:", transport.value())
        channel, transport = self.connect(site, host="10.0.0.1")
        channel.dataReceived(b"GET / HTTP/1.1\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 429 Too Many Requests")
        self.assertEqual(self.limiter.held("198.51.100.1"), 2)
        self.assertEqual(self.limiter.held("10.0.0.1"), 0)

    def test_open_files_warning_once_an_interval(self):
        self.limiter = None
        site = self.site(fd_log_interval=30, request_timeout=0)
        self.open_files = 9
        for _ in range(6):
            self.connect(site)
        self.reactor.advance(29)
        self.connect(site)
        self.reactor.advance(1)
        self.connect(site)
        warnings = [
            e
            for e in self.events
            if "file descriptors are open" in e.get("log_format", "")
        ]
        self.assertEqual(
            [(e["in_use"], e["file_limit"]) for e in warnings], [(9, 10), (9, 10)]
        )

    def counting_site(self, open_files):
        """
        A site with a limit of 20 files whose count of open files is
        C{open_files(number of counts so far)}, and the times it counted.
        """
        self.limiter = None
        site = self.site(fd_log_interval=30, request_timeout=0)
        site.file_limit = 20
        counts = []

        def count():
            counts.append(self.reactor.seconds())
            return open_files(len(counts))

        site.open_files = count
        return site, counts

    def fd_warnings(self):
        return [
            e
            for e in self.events
            if "file descriptors are open" in e.get("log_format", "")
        ]

    def test_open_files_counted_once_a_second(self):
        """
        Past half the file limit the open files are counted at most once a
        second, not on every connection, and once more at the end of the
        second after connections went uncounted; a warning comes at the
        next count.
        """
        site, counts = self.counting_site(lambda count: 8 + count * 5)
        for _ in range(11):
            self.connect(site)
        self.reactor.advance(0.5)
        self.connect(site)
        self.assertEqual(counts, [0])
        self.reactor.advance(0.5)
        self.assertEqual(counts, [0, 1])
        self.assertEqual([e["in_use"] for e in self.fd_warnings()], [18])

    def test_connections_alone_past_the_warning_share(self):
        """
        When the site's own connections alone fill the warning share of the
        file limit, they are the count: no listing of the descriptors.
        """
        site, counts = self.counting_site(lambda count: 0)
        for _ in range(18):
            self.connect(site)
        # Counted at the tenth connection; at the end of the second, the
        # eighteen are enough.
        self.reactor.advance(1)
        self.assertEqual(
            [(e["in_use"], e["file_limit"]) for e in self.fd_warnings()], [(18, 20)]
        )
        self.assertEqual(counts, [0])

    def test_upgrade_is_handed_straight_to_its_factory(self):
        """
        A WebSocket upgrade at a route's path reaches the route's factory as
        it arrived, without the web resource; the connection keeps its
        address's slot until the socket closes, and no request deadline
        cuts it.
        """
        site = self.site(self.upgrades())
        channel, transport = self.connect(site)
        channel.dataReceived(UPGRADE)
        [(address, protocol)] = self.factory.built
        self.assertEqual(address, IPv4Address("TCP", "192.0.2.7", 40000))
        self.assertEqual(protocol.received, [UPGRADE])
        self.assertIs(protocol.transport, transport)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.limiter.held("192.0.2.7"), 1)
        self.reactor.advance(3600)
        self.assertFalse(transport.disconnecting)
        transport.loseConnection()
        self.assertEqual(len(protocol.lost), 1)
        self.assertEqual(self.limiter.held("192.0.2.7"), 0)
        self.assertEqual(site.open_connections, 0)

    def test_other_requests_go_through_the_resource(self):
        """
        Whatever is not one whole upgrade head at a route's path, with no
        body, goes through the web resource, which answers it.
        """
        upgrade = b"Upgrade: websocket\r\n"
        for head in [
            b"GET /ws/lobby HTTP/1.1\r\n\r\n",
            b"GET /other HTTP/1.1\r\n" + upgrade + b"\r\n",
            b"GET /ws/a%2Fb HTTP/1.1\r\n" + upgrade + b"\r\n",
            b"GET /ws/a/b HTTP/1.1\r\n" + upgrade + b"\r\n",
            b"GET /ws/ HTTP/1.1\r\n" + upgrade + b"\r\n",
            b"GET /signal/ HTTP/1.1\r\n" + upgrade + b"\r\n",
            b"GET /signal HTTP/1.0\r\n" + upgrade + b"\r\n",
            b"POST /signal HTTP/1.1\r\nContent-Length: 2\r\n" + upgrade + b"\r\nab",
            b"GET /signal HTTP/1.1\r\nContent-Length: 0\r\n" + upgrade + b"\r\n",
            b"GET /signal HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"GET /signal HTTP/1.1\r\n" + upgrade + b"\r\nGET / HTTP/1.1\r\n\r\n",
        ]:
            site = self.site(self.upgrades())
            channel, transport = self.connect(site, host=f"192.0.2.{len(head)}")
            channel.dataReceived(head)
            self.assertEqual(self.factory.built, [], head)
            self.assertTrue(self.status(transport).endswith(b" 200 OK"), head)

    def test_upgrade_in_pieces_goes_through_the_resource(self):
        site = self.site(self.upgrades())
        channel, transport = self.connect(site)
        channel.dataReceived(UPGRADE[:20])
        channel.dataReceived(UPGRADE[20:])
        self.assertEqual(self.factory.built, [])
        self.assertEqual(self.status(transport), b"HTTP/1.1 200 OK")

    def test_upgrade_behind_trusted_proxies_goes_through_the_resource(self):
        """
        Behind trusted proxies the client's address (and so its slot) is in
        the request's headers, which only the whole way reads.
        """
        site = self.site(self.upgrades(), trusted_hops=1)
        channel, transport = self.connect(site, host="10.0.0.1")
        channel.dataReceived(UPGRADE)
        self.assertEqual(self.factory.built, [])
        self.assertEqual(self.status(transport), b"HTTP/1.1 200 OK")
        self.assertEqual(self.limiter.held("localhost"), 0)

    def test_upgrade_routes_match_whole_segments(self):
        routes = UpgradeRoutes()
        routes.add("/ws", "envelope")
        routes.add("/ws/{topic}", "topic")
        routes.add("/p/room/{name}/peerjs", "peerjs")
        self.assertEqual(
            [
                routes.match(path)
                for path in [
                    b"/ws",
                    b"/ws/a.b-c",
                    b"/ws/",
                    b"/wsx",
                    b"/ws/a/b",
                    b"/p/room/r1/peerjs",
                    b"/p/room//peerjs",
                    b"/p/room/r1/peerjsx",
                ]
            ],
            ["envelope", "topic", None, None, None, "peerjs", None, None],
        )

    def test_redaction(self):
        self.assertEqual(
            redact_uri(
                b"/socket.io/?EIO=4&transport=polling&sid=abc&token=x.y.z&room=r&access_key=k&flag"
            ),
            "/socket.io/?EIO=4&transport=polling&sid=REDACTED&token=REDACTED&room=r&access_key=REDACTED&flag",
        )
