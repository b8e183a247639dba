"""
The twistd plugin's options and service wiring, on a memory reactor.
"""

import trustme
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.application.service import IServiceMaker

from signaling import tap
from signaling.metrics import WorkersMetricsResource


def parse(*argv, environ=None):
    options = tap.Options(environ=environ or {})
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self):
        options = parse()
        self.assertEqual(options["ports"], ["tcp:8080:interface=127.0.0.1"])
        self.assertEqual(options["max-message-size"], 65536)
        self.assertEqual(options["ping-interval"], 30.0)
        self.assertEqual(options["ping-timeout"], 10.0)
        self.assertEqual(options["max-peers-per-room"], 100)
        self.assertEqual(options["max-rooms-per-peer"], 16)
        self.assertEqual(options["max-message-rate"], 100.0)
        self.assertEqual(options["max-send-buffer"], 262144)
        self.assertEqual(options["allowed-origins"], [])
        self.assertEqual(options["log-level"], "info")
        self.assertEqual(options["drain-timeout"], 10.0)
        self.assertEqual(options["metrics-port"], None)
        self.assertEqual(options["log-format"], "text")

    def test_environment(self):
        options = parse(
            environ={
                "PORT": "9000",
                "CLIENT_URL": "http://a.example/, https://b.example",
                "LOG_LEVEL": "DEBUG",
            }
        )
        self.assertEqual(options["ports"], ["tcp:9000:interface=127.0.0.1"])
        self.assertEqual(
            options["allowed-origins"], ["http://a.example", "https://b.example"]
        )
        self.assertEqual(options["log-level"], "debug")

    def test_options_override_environment(self):
        options = parse(
            "--port",
            "tcp:1",
            "--port",
            "unix:/tmp/x",
            "--allowed-origin",
            "https://c.example",
            "--log-level",
            "warn",
            environ={
                "PORT": "9000",
                "CLIENT_URL": "http://a.example",
                "LOG_LEVEL": "debug",
            },
        )
        self.assertEqual(options["ports"], ["tcp:1", "unix:/tmp/x"])
        self.assertEqual(options["allowed-origins"], ["https://c.example"])
        self.assertEqual(options["log-level"], "warn")

    def test_bad_options_exit_with_one_line(self):
        for argv, words in [
            (["--max-message-size", "big"], "max-message-size"),
            (["--ping-interval", "-1"], "--ping-interval takes seconds"),
            (["--log-level", "loud"], "log level"),
            (["--port", "tls:8443"], "--tls-cert"),
            (["--tls-key", "k.pem"], "--tls-cert"),
            (["--bogus"], "bogus"),
            (
                ["--root-dialect", "topic"],
                "--root-dialect must be one of native, directory, envelope or none",
            ),
            (["--directory-hold", "-1"], "--directory-hold takes seconds"),
            (
                ["--directory-max-held", "many"],
                "--directory-max-held takes a whole number",
            ),
            (
                ["--directory-probe-timeout", "0"],
                "--directory-probe-timeout must be above 0",
            ),
            (
                ["--resume-max-messages", "0"],
                "--resume-max-messages and --resume-max-bytes must be above 0",
            ),
            (["--resume-grace", "soon"], "--resume-grace takes seconds"),
            (["--drain-timeout", "-1"], "--drain-timeout takes seconds"),
            (
                ["--log-format", "xml"],
                "--log-format must be one of text, json, not 'xml'",
            ),
        ]:
            error = self.assertRaises(SystemExit, parse, *argv)
            message = str(error.code)
            self.assertNotIn("\n", message)
            self.assertIn(words, message)
            self.assertTrue(message.startswith("twistd signaling: "), message)
        error = self.assertRaises(SystemExit, parse, environ={"PORT": "http"})
        self.assertIn("PORT", str(error.code))

    def test_plugin_is_found(self):
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertEqual(makers["signaling"].options, tap.Options)


class ServiceTests(SynchronousTestCase):
    def setUp(self):
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")
        directory = FilePath(self.mktemp())
        directory.makedirs()
        self.cert_path = directory.child("cert.pem")
        self.key_path = directory.child("key.pem")
        self.cert_path.setContent(cert.cert_chain_pems[0].bytes())
        self.key_path.setContent(cert.private_key_pem.bytes())
        self.combined_path = directory.child("combined.pem")
        self.combined_path.setContent(cert.private_key_and_cert_chain_pem.bytes())
        self.reactor = MemoryReactorClock()

    def start(self, *argv):
        service = tap.make_service(parse(*argv), self.reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_default_listens_on_localhost_8080_with_a_big_backlog(self):
        self.start()
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, backlog, interface), (8080, 4096, "127.0.0.1"))

    def test_repeated_ports(self):
        self.start("--port", "tcp:9001", "--port", "tcp:9002:backlog=10")
        self.assertEqual(
            [(p[0], p[2]) for p in self.reactor.tcpServers], [(9001, 4096), (9002, 10)]
        )

    def test_tls_shorthand(self):
        self.start(
            "--port",
            "tls:8443",
            "--tls-cert",
            self.cert_path.path,
            "--tls-key",
            self.key_path.path,
        )
        [(port, factory, context, backlog, interface)] = self.reactor.sslServers
        self.assertEqual((port, backlog, interface), (8443, 4096, ""))

    def test_tls_shorthand_with_combined_pem_and_interface(self):
        self.start(
            "--port",
            "tls:8443:interface=127.0.0.1",
            "--tls-cert",
            self.combined_path.path,
        )
        [(port, factory, context, backlog, interface)] = self.reactor.sslServers
        self.assertEqual((port, interface), (8443, "127.0.0.1"))

    def test_twisted_tls_directory_string_still_works(self):
        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child("localhost.pem").setContent(self.combined_path.getContent())
        self.start("--port", f"tls:{directory.path}:port=8443")
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertEqual(self.reactor.tcpServers[0][0], 8443)

    def test_unreadable_certificate_exits(self):
        error = self.assertRaises(
            SystemExit,
            tap.make_service,
            parse("--port", "tls:8443", "--tls-cert", "/nonexistent/cert.pem"),
            self.reactor,
        )
        self.assertIn("cannot load the TLS certificate", str(error.code))
        self.assertNotIn("\n", str(error.code))

    def test_busy_port_exits(self):
        """
        A port that cannot be listened on ends startup with a one-line
        message.
        """
        from twisted.internet.error import CannotListenError

        class BusyReactor(MemoryReactorClock):
            def listenTCP(self, port, factory, backlog=50, interface=""):
                raise CannotListenError(
                    interface, port, OSError(98, "Address already in use")
                )

        service = tap.make_service(parse("--port", "tcp:8080"), BusyReactor())
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIn("cannot listen on tcp:8080", str(error.code))
        self.assertIn("Address already in use", str(error.code))

    def test_bad_endpoint_exits(self):
        error = self.assertRaises(
            SystemExit,
            tap.make_service,
            parse("--port", "carrier-pigeon:1"),
            self.reactor,
        )
        self.assertIn("bad --port", str(error.code))

    def test_log_level_filters_our_events(self):
        """
        --log-level warn drops our info events and keeps warnings.
        """
        from twisted.logger import globalLogPublisher

        from signaling import logs

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.addCleanup(logs.set_level, "info")
        self.start("--log-level", "warn")
        log = logs.Logger(namespace="signaling.test")
        log.info("hidden")
        log.warn("shown")
        self.assertEqual(
            [
                event["log_format"]
                for event in events
                if event["log_namespace"] == "signaling.test"
            ],
            ["shown"],
        )

    def test_settings_reach_the_hub(self):
        service = self.start("--max-peers-per-room", "3", "--max-rooms-per-peer", "4")
        self.assertEqual(
            (
                service.hub.limits.max_peers_per_room,
                service.hub.limits.max_rooms_per_peer,
            ),
            (3, 4),
        )


class DirectoryOptionsTests(SynchronousTestCase):
    def test_defaults(self):
        options = parse()
        self.assertEqual(
            (
                options["directory-hold"],
                options["directory-max-held"],
                options["directory-probe-timeout"],
                options["root-dialect"],
            ),
            (60.0, 10000, 2.0, "native"),
        )


class EngineIOOptionsTests(SynchronousTestCase):
    def test_upgrade_timeout(self):
        """
        --upgrade-timeout defaults to the reference server's 10 s and must
        be above 0 (tests/test_engineio_limits_real.py sees it at work).
        """
        self.assertEqual(parse()["upgrade-timeout"], 10.0)
        self.assertEqual(parse("--upgrade-timeout", "2.5")["upgrade-timeout"], 2.5)
        error = self.assertRaises(SystemExit, parse, "--upgrade-timeout", "0")
        self.assertIn("--upgrade-timeout must be above 0", str(error.code))


class ClosesPerTurnOptionsTests(SynchronousTestCase):
    def test_closes_per_turn(self):
        """
        --closes-per-turn defaults to 200 and takes 0 (every close at once);
        tests/test_closes.py sees it at work.
        """
        self.assertEqual(parse()["closes-per-turn"], 200)
        self.assertEqual(parse("--closes-per-turn", "0")["closes-per-turn"], 0)
        error = self.assertRaises(SystemExit, parse, "--closes-per-turn", "-1")
        self.assertIn("closes-per-turn", str(error.code))


class GarbageCollectionOptionsTests(SynchronousTestCase):
    def test_gc_memory_growth(self):
        self.assertEqual(parse()["gc-memory-growth"], 32)
        self.assertEqual(parse("--gc-memory-growth", "0")["gc-memory-growth"], 0)
        error = self.assertRaises(SystemExit, parse, "--gc-memory-growth", "-1")
        self.assertIn("gc-memory-growth", str(error.code))


class ClusterOptionsTests(SynchronousTestCase):
    def test_redis_and_node_id(self):
        """
        No --redis: one process, no bus. With it, the node id defaults to
        the host name and process id; a bad URL or node id, or --node-id
        alone, is one line.
        """
        import os
        import socket

        options = parse()
        self.assertEqual(
            (options["redis"], options["node-id"], options["redis-address"]),
            (None, None, None),
        )
        options = parse("--redis", "unix:///run/redis.sock")
        self.assertEqual(options["node-id"], f"{socket.gethostname()}-{os.getpid()}")
        self.assertEqual(options["redis-address"].describe(), "unix:///run/redis.sock")
        self.assertEqual(
            parse("--redis", "redis://127.0.0.1:6379/2", "--node-id", "a-1")["node-id"],
            "a-1",
        )
        for argv, words in [
            (["--node-id", "a"], "--node-id needs --redis"),
            (["--redis", "http://127.0.0.1"], "--redis: "),
            (["--redis", "redis://127.0.0.1", "--node-id", "a b"], "--node-id takes"),
        ]:
            error = self.assertRaises(SystemExit, parse, *argv)
            self.assertIn(words, str(error.code))
            self.assertNotIn("\n", str(error.code))


class OperationsOptionsTests(SynchronousTestCase):
    def test_workers_parent_waits_for_the_drain(self):
        """
        The --workers parent gives its workers --drain-timeout and a margin
        to exit after SIGTERM before it kills them.
        """
        from signaling import workers

        top = tap.make_service(
            parse("--workers", "2", "--drain-timeout", "30"), MemoryReactorClock()
        )
        [parent] = [
            service for service in top if isinstance(service, workers.WorkersService)
        ]
        self.assertEqual(parent.stop_timeout, 30 + workers.STOP_MARGIN)

    def test_metrics_port_with_workers_is_the_parents(self):
        """
        --metrics-port with --workers is served by the parent, which asks
        its workers; it has no hub of its own to count.
        """
        top = tap.make_service(
            parse("--workers", "2", "--metrics-port", "tcp:0"), MemoryReactorClock()
        )
        listeners = [
            service for service in top if isinstance(service, tap.MetricsListener)
        ]
        self.assertEqual(len(listeners), 1)
        self.assertIsInstance(
            listeners[0].factory.resource.children[b"metrics"], WorkersMetricsResource
        )
