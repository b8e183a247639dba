"""
The twistd plugin's options and service: the only place that picks the
reactor.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import tempfile
from typing import Any, Mapping

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import ILogObserver
from twisted.python import usage

from . import fastpath, logs, tlsconfig, workers
from .auth import AUTH_MODES, AuthPolicy, TokenVerifier, UnusableKey
from .directory import HOLD_SECONDS, MAX_HELD, PROBE_SECONDS, Directory
from .gcpolicy import CollectionPolicy
from .jwks import JWKSKeys, JWKSRefresher, treq_fetch
from .turn import DEFAULT_TTL, IceServers
from .hub import Hub, HubLimits
from .lifecycle import DrainService, SystemdNotifier
from .logs import Logger
from .metrics import MetricsService, WorkersMetricsResource
from .metadata import MetadataLimits
from .resume import MemorySessionStore, ResumeSettings
from .transports.addresses import AddressLimiter, AddressLimits
from .transports.site import GuardedSite, HTTPLimits
from .transports.websocket import WebSocketSettings
from .web import MAX_ROOMS_PAGE, ROOT_DIALECTS, SignalingSite
from .dialects.peerjs import PeerJSRealm, PeerJSSettings
from .dialects.ywebrtc import YWebRTCSettings

#: The first path segments of the other routes, which --peerjs-path may not
#: take.
PEERJS_RESERVED = (
    "api",
    "ws",
    "signal",
    "directory",
    "socket.io",
    "client",
    "health",
    "healthz",
)

DEFAULT_PORT = 8080
#: Twisted's default of 50 stalls WebSocket handshakes under a burst, and a
#: reconnect storm (every client of a restarted server at once) overflows
#: 1024; Linux caps it at net.core.somaxconn (4096 since 5.4).
LISTEN_BACKLOG = 4096

_log = Logger()

_TLS_SHORTHAND = re.compile(r"^tls:(\d+)((?::[a-z]+=[^:]*)*)$")
_BACKLOG_PREFIXES = ("tcp:", "tcp6:", "ssl:", "tls:")


def _number(option: str, kind: type, description: str):
    """
    A coercer for C{--option} that names the option when the value is bad.
    """

    def coerce(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = -1
        if number < 0:
            raise ValueError(f"--{option} takes {description}, not {value!r}")
        return number

    coerce.coerceDoc = description[0].upper() + description[1:] + "."  # type: ignore[attr-defined]
    return coerce


def _whole(option: str):
    return _number(option, int, "a whole number, 0 or more")


def _seconds(option: str):
    return _number(option, float, "seconds, 0 or more")


def _workers(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"--workers takes a number of processes, 1 or more, or auto, not {value!r}"
        )
    return int(value)


_workers.coerceDoc = "A number of processes, or auto."  # type: ignore[attr-defined]


class Options(usage.Options):
    """
    Options of C{twistd signaling}.
    """

    synopsis = "[options]"
    longdesc = (
        "A WebRTC signaling server speaking several dialects over one hub of "
        "rooms. --port takes Twisted endpoint strings and may be repeated; "
        "'tls:PORT' is shorthand for TLS on PORT with --tls-cert/--tls-key, or "
        "else cert.pem + key.pem or fullchain.pem + privkey.pem from "
        "$CREDENTIALS_DIRECTORY, then /etc/signaling/tls/, or else (on "
        "loopback or with --dev-tls) a self-signed one; SIGHUP re-reads them. "
        "Environment: PORT (default port), CLIENT_URL (allowed origins, "
        "comma-separated), LOG_LEVEL, API_TOKEN (--api-token)."
    )

    optParameters = [
        ["tls-cert", None, None, "PEM certificate (chain) for 'tls:PORT' ports."],
        [
            "tls-key",
            None,
            None,
            "PEM private key for 'tls:PORT'; default: --tls-cert's file.",
        ],
        [
            "max-message-size",
            None,
            64 * 1024,
            "Largest WebSocket message in bytes; larger closes with 1009.",
            _whole("max-message-size"),
        ],
        [
            "ping-interval",
            None,
            30.0,
            "Seconds between WebSocket pings; 0 disables them.",
            _seconds("ping-interval"),
        ],
        [
            "ping-timeout",
            None,
            10.0,
            "Seconds to wait for a pong before the peer is removed.",
            _seconds("ping-timeout"),
        ],
        [
            "max-message-rate",
            None,
            100.0,
            "Messages per second one connection may send (bursts of twice that); 0 for unlimited.",
            _number("max-message-rate", float, "messages per second, 0 or more"),
        ],
        [
            "max-send-buffer",
            None,
            256 * 1024,
            "Bytes queued for a peer that is not reading before messages to it are dropped.",
            _whole("max-send-buffer"),
        ],
        [
            "max-peers-per-room",
            None,
            100,
            "Peers a room may hold; 0 for unlimited.",
            _whole("max-peers-per-room"),
        ],
        [
            "max-rooms-per-peer",
            None,
            16,
            "Rooms one connection may be in; 0 for unlimited.",
            _whole("max-rooms-per-peer"),
        ],
        [
            "stale-timeout",
            None,
            120.0,
            "Seconds without activity after which a peer is removed; 0 never.",
            _seconds("stale-timeout"),
        ],
        [
            "empty-room-ttl",
            None,
            0.0,
            "Seconds an empty room is kept; 0 deletes it at once.",
            _seconds("empty-room-ttl"),
        ],
        [
            "cleanup-interval",
            None,
            30.0,
            "Seconds between sweeps for stale peers and expired empty rooms.",
            _seconds("cleanup-interval"),
        ],
        [
            "jwt-secret",
            None,
            None,
            "HS256 secret for Socket.IO tokens (env JWT_SECRET).",
        ],
        [
            "jwt-public-key",
            None,
            None,
            "PEM public key file for Socket.IO tokens (RS256 or ES256).",
        ],
        [
            "log-level",
            None,
            None,
            "debug, info, warn or error (env LOG_LEVEL; default info). Only debug may log message payloads and tokens.",
        ],
        [
            "max-metadata-size",
            None,
            4096,
            "Largest peer or room metadata in bytes of JSON; 0 for unlimited.",
            _whole("max-metadata-size"),
        ],
        [
            "max-metadata-depth",
            None,
            4,
            "Deepest nesting of peer or room metadata (the object itself is 1); 0 for unlimited.",
            _whole("max-metadata-depth"),
        ],
        [
            "max-metadata-values",
            None,
            64,
            "Most values in one peer's or room's metadata, at all levels; 0 for unlimited.",
            _whole("max-metadata-values"),
        ],
        [
            "max-fragments",
            None,
            128,
            "Frames one WebSocket message may arrive in (more closes with 1008); 0 for unlimited.",
            _whole("max-fragments"),
        ],
        [
            "closes-per-turn",
            None,
            200,
            "WebSocket closes handled in one turn of the reactor; more at once (a mass drop) wait for the next turns, so new connections are answered between them; 0 handles all at once.",
            _whole("closes-per-turn"),
        ],
        [
            "directory-hold",
            None,
            HOLD_SECONDS,
            "Seconds a directory userId registered with proof of key stays bound to its key after its connection closed; 0 frees it at once.",
            _seconds("directory-hold"),
        ],
        [
            "directory-max-held",
            None,
            MAX_HELD,
            "Offline directory userIds held at once; past it further ones are freed at once (holds are never cut short).",
            _whole("directory-max-held"),
        ],
        [
            "directory-probe-timeout",
            None,
            PROBE_SECONDS,
            "Seconds the holder of a directory userId has to answer a ping when another connection registers it without proof; a silent holder loses it.",
            _seconds("directory-probe-timeout"),
        ],
        [
            "root-dialect",
            None,
            "native",
            "Dialect of a WebSocket at '/': "
            + ", ".join(ROOT_DIALECTS)
            + " or none (a plain GET / is never a WebSocket).",
        ],
        [
            "upgrade-timeout",
            None,
            10.0,
            "Seconds an Engine.IO WebSocket may take to complete its upgrade from polling before it is closed.",
            _seconds("upgrade-timeout"),
        ],
        [
            "gc-memory-growth",
            None,
            32,
            "Megabytes of growth of resident memory since the last full garbage collection that bring the next one; 0 never.",
            _whole("gc-memory-growth"),
        ],
        [
            "max-connections-per-address",
            None,
            512,
            "Connections (and Engine.IO polling sessions) one client address may hold; 0 for unlimited.",
            _whole("max-connections-per-address"),
        ],
        [
            "max-new-connections-per-address",
            None,
            50.0,
            "New connections (and sessions) per second one client address may open, bursts of twice that; 0 for unlimited.",
            _number(
                "max-new-connections-per-address",
                float,
                "connections per second, 0 or more",
            ),
        ],
        [
            "trust-forwarded",
            None,
            0,
            "Reverse proxies in front of the server: take the client address from Forwarded/X-Forwarded-For, this many hops from the right; 0 uses the socket's peer.",
            _whole("trust-forwarded"),
        ],
        [
            "request-timeout",
            None,
            30.0,
            "Seconds a client has to send a whole HTTP request (head and body; for a WebSocket, up to the upgrade); 0 for none.",
            _seconds("request-timeout"),
        ],
        [
            "max-request-body",
            None,
            1024 * 1024,
            "Largest HTTP request body in bytes where a route takes one (Engine.IO polling: --max-message-size).",
            _whole("max-request-body"),
        ],
        [
            "api-token",
            None,
            None,
            "Bearer token that GET /api/rooms/{id} requires (env API_TOKEN; default: open).",
        ],
        [
            "max-rooms-page",
            None,
            MAX_ROOMS_PAGE,
            "Most rooms one page of GET /api/rooms may hold (?limit=; 100 without it).",
            _whole("max-rooms-page"),
        ],
        [
            "auth",
            None,
            "off",
            "Tokens in every dialect: off (only Socket.IO checks one, with a key), optional (a token presented must be valid) or required (no valid token, no connection); optional and required need a key.",
        ],
        [
            "jwt-audience",
            None,
            None,
            "The 'aud' a token must name (default: not checked).",
        ],
        [
            "jwt-issuer",
            None,
            None,
            "The 'iss' a token must have (default: not checked).",
        ],
        [
            "jwt-jwks-url",
            None,
            None,
            "URL of a JSON Web Key Set to check tokens with (instead of --jwt-secret/--jwt-public-key): fetched at start, every 5 minutes, and on an unknown kid (at most every 10 s).",
        ],
        [
            "turn-secret",
            None,
            None,
            "coturn's static-auth-secret (use-auth-secret): TURN credentials handed out are signed with it (env TURN_SECRET).",
        ],
        [
            "turn-secret-file",
            None,
            None,
            "A file holding --turn-secret (its first line).",
        ],
        [
            "turn-ttl",
            None,
            DEFAULT_TTL,
            "Seconds TURN credentials are valid; clients get fresh ones before they expire.",
            _seconds("turn-ttl"),
        ],
        [
            "jwt-jwks-min-interval",
            None,
            10.0,
            "Seconds between two fetches of --jwt-jwks-url that tokens with unknown key ids may cause.",
            _seconds("jwt-jwks-min-interval"),
        ],
        [
            "jwt-jwks-max-age",
            None,
            300.0,
            "Seconds after which --jwt-jwks-url is fetched again anyway.",
            _seconds("jwt-jwks-max-age"),
        ],
        [
            "auth-timeout",
            None,
            10.0,
            "Seconds a native client without a token in its URL has to send an auth message under --auth required; then it is closed with 4001.",
            _seconds("auth-timeout"),
        ],
        [
            "resume-grace",
            None,
            30.0,
            "Seconds a native peer whose socket died keeps its id and rooms, waiting for a resume; 0 turns resume off.",
            _seconds("resume-grace"),
        ],
        [
            "resume-max-messages",
            None,
            256,
            "Events kept for one native peer until it acknowledges them (and queued while it is away); beyond, senders are told 'dropped'.",
            _whole("resume-max-messages"),
        ],
        [
            "resume-max-bytes",
            None,
            256 * 1024,
            "Bytes of those events per native peer.",
            _whole("resume-max-bytes"),
        ],
        [
            "redis",
            None,
            None,
            "Share rooms and peers with the other nodes of a cluster through this Redis: redis://[:password@]host:port/db, rediss://... for TLS, unix:///path/redis.sock (docs/scaling.rst).",
        ],
        [
            "node-id",
            None,
            None,
            "This node's id in the cluster, unique among its nodes (default: host name and process id).",
        ],
        [
            "workers",
            None,
            1,
            "Worker processes sharing the ports, on a Redis bus (--redis, else a private redis-server on a unix socket); 'auto' for one per core.",
            _workers,
        ],
        [
            "drain-timeout",
            None,
            10.0,
            "Seconds SIGTERM waits for peers to leave after telling them the server is going away; the systemd unit's TimeoutStopSec is above it.",
            _seconds("drain-timeout"),
        ],
        [
            "metrics-port",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this Twisted endpoint, e.g. tcp:9100:interface=127.0.0.1 (default: off; keep it off the public network).",
        ],
        [
            "relay-time-sample",
            None,
            100,
            "With --metrics-port, time one relayed frame in this many from its arrival to its recipient's write (signaling_relay_seconds); 0 for none.",
            _whole("relay-time-sample"),
        ],
        [
            "log-format",
            None,
            "text",
            "text, or json: one object per line with the event's fields (for journald and log shippers).",
        ],
        [
            "peerjs-path",
            None,
            "/peerjs",
            "Where the PeerJS dialect is mounted: a peerjs client with {path: '/peerjs'} connects to PATH/peerjs and asks PATH/KEY/id; 'none' for no PeerJS dialect.",
        ],
        [
            "peerjs-key",
            None,
            "peerjs",
            "The API key PeerJS clients must present (their 'key' option); not 'room'.",
        ],
        [
            "peerjs-expire-timeout",
            None,
            5.0,
            "Seconds a message for a PeerJS id that is not connected waits before its sender is told EXPIRE.",
            _seconds("peerjs-expire-timeout"),
        ],
        [
            "peerjs-alive-timeout",
            None,
            60.0,
            "Seconds a PeerJS client may go without a HEARTBEAT before it is closed and its id freed; 0 never.",
            _seconds("peerjs-alive-timeout"),
        ],
        [
            "peerjs-concurrent-limit",
            None,
            5000,
            "PeerJS clients connected to one process at once; beyond, a client is refused with ERROR.",
            _whole("peerjs-concurrent-limit"),
        ],
        [
            "peerjs-queue-messages",
            None,
            64,
            "Messages queued for one PeerJS id that is not connected; beyond, the sender is told EXPIRE.",
            _whole("peerjs-queue-messages"),
        ],
        [
            "peerjs-queue-bytes",
            None,
            64 * 1024,
            "Bytes queued for one PeerJS id that is not connected.",
            _whole("peerjs-queue-bytes"),
        ],
        [
            "peerjs-queue-total-bytes",
            None,
            16 * 1024 * 1024,
            "Bytes queued for all PeerJS ids that are not connected, together.",
            _whole("peerjs-queue-total-bytes"),
        ],
        [
            "y-webrtc-path",
            None,
            "/y-webrtc",
            "Where y-webrtc providers connect (their signaling URL, e.g. ws://host:8080/y-webrtc); 'none' for no y-webrtc dialect.",
        ],
        [
            "y-webrtc-max-topics",
            None,
            32,
            "Topics one y-webrtc connection may subscribe to at once (0: --max-rooms-per-peer); beyond, it is told too-many-topics.",
            _whole("y-webrtc-max-topics"),
        ],
        [
            "y-webrtc-replay-window",
            None,
            5.0,
            "Seconds a y-webrtc client's first publish after a subscribe (its announce) is kept for subscribers on other nodes that join meanwhile; 0 keeps none.",
            _seconds("y-webrtc-replay-window"),
        ],
        [
            "y-webrtc-replay-bytes",
            None,
            4096,
            "The largest such publish kept, in bytes of its data.",
            _whole("y-webrtc-replay-bytes"),
        ],
    ]

    optFlags = [
        [
            "access-log",
            None,
            "Log every HTTP request at info (query values of token/sid/auth-like parameters redacted; addresses truncated).",
        ],
        [
            "no-fast-paths",
            None,
            "Run on plain Autobahn, without the relay's shortcuts past its private names (they are also off outside the Autobahn and Twisted versions they were verified against, or without wsaccel).",
        ],
        [
            "dev-tls",
            None,
            "Let 'tls:PORT' without a certificate found use a self-signed one for localhost on any interface (it always may on loopback).",
        ],
        [
            "peerjs-discovery",
            None,
            "Let GET PATH/KEY/peers list the connected PeerJS ids (the original's allow_discovery; off, it answers 401).",
        ],
        [
            "y-webrtc-any-path",
            None,
            "Also take y-webrtc WebSockets at / (instead of --root-dialect) and at any path no other route takes, as y-webrtc's server does.",
        ],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self["ports"] = []
        self["allowed-origins"] = []
        self["turn-uris"] = []
        self["stun-uris"] = []

    def opt_version(self) -> None:
        """Print the versions of signaling, Twisted and Autobahn, and exit."""
        import autobahn
        import twisted

        from . import __version__

        print(
            f"signaling {__version__} (Twisted {twisted.__version__}, Autobahn {autobahn.__version__})"
        )
        raise SystemExit(0)

    def opt_port(self, description: str) -> None:
        """Listen on this Twisted endpoint (repeatable; default tcp:8080:interface=127.0.0.1, or env PORT's port)."""
        self["ports"].append(description)

    opt_p = opt_port

    def opt_turn_uri(self, uri: str) -> None:
        """A TURN server for clients, e.g. turn:turn.example:3478?transport=tcp or turns:... (repeatable; needs --turn-secret)."""
        if not uri.startswith(("turn:", "turns:")):
            raise usage.UsageError(
                f"--turn-uri must start with turn: or turns:, not {uri!r}"
            )
        self["turn-uris"].append(uri)

    def opt_turn_url(self, uri: str) -> None:
        """Same as --turn-uri."""
        # Not "opt_turn_url = opt_turn_uri": usage.Options takes a long
        # alias for a synonym that --help cannot print (a KeyError).
        self.opt_turn_uri(uri)

    def opt_stun_uri(self, uri: str) -> None:
        """A STUN server for clients, e.g. stun:stun.example:3478 (repeatable)."""
        if not uri.startswith("stun:"):
            raise usage.UsageError(f"--stun-uri must start with stun:, not {uri!r}")
        self["stun-uris"].append(uri)

    def opt_allowed_origin(self, origin: str) -> None:
        """Allow browsers from this origin, e.g. https://app.example (repeatable; env CLIENT_URL; default: any)."""
        self["allowed-origins"].append(origin.rstrip("/"))

    def postOptions(self) -> None:
        if not self["ports"]:
            port = self.environ.get("PORT", str(DEFAULT_PORT))
            if not port.isdigit():
                raise usage.UsageError(f"PORT must be a port number, not {port!r}")
            self["ports"] = [f"tcp:{port}:interface=127.0.0.1"]
        if not self["allowed-origins"] and self.environ.get("CLIENT_URL"):
            self["allowed-origins"] = [
                origin.strip().rstrip("/")
                for origin in self.environ["CLIENT_URL"].split(",")
                if origin.strip()
            ]
        level = self["log-level"] or self.environ.get("LOG_LEVEL", "info")
        if level.lower() not in logs.LEVEL_NAMES:
            raise usage.UsageError(
                f"log level must be one of {', '.join(logs.LEVEL_NAMES)}, not {level!r}"
            )
        self["log-level"] = level.lower()
        if self["log-format"] not in logs.FORMATS:
            raise usage.UsageError(
                f"--log-format must be one of {', '.join(logs.FORMATS)}, not {self['log-format']!r}"
            )
        if self["ping-interval"] and not self["ping-timeout"]:
            raise usage.UsageError("--ping-timeout must be above 0 when pings are on")
        if not self["cleanup-interval"]:
            raise usage.UsageError("--cleanup-interval must be above 0")
        if not self["upgrade-timeout"]:
            raise usage.UsageError("--upgrade-timeout must be above 0")
        if 0 < self["stale-timeout"] <= self["ping-interval"]:
            # Pongs are the only activity of a quiet peer: it would be
            # swept between two pings.
            raise usage.UsageError(
                f"--stale-timeout ({self['stale-timeout']:g}) must be above "
                f"--ping-interval ({self['ping-interval']:g}), or 0"
            )
        verifier = self._token_verifier()
        if verifier is not None:
            verifier = attrs.evolve(
                verifier, audience=self["jwt-audience"], issuer=self["jwt-issuer"]
            )
        self["token-verifier"] = verifier
        if self["auth"] not in AUTH_MODES:
            raise usage.UsageError(
                f"--auth must be one of {', '.join(AUTH_MODES)}, not {self['auth']!r}"
            )
        if not self["jwt-jwks-max-age"]:
            raise usage.UsageError("--jwt-jwks-max-age must be above 0")
        if self["jwt-jwks-url"]:
            if verifier is not None:
                raise usage.UsageError("give --jwt-jwks-url or a JWT key, not both")
            if not self["jwt-jwks-url"].startswith(("http://", "https://")):
                raise usage.UsageError(
                    "--jwt-jwks-url must be an http:// or https:// URL"
                )
        elif self["auth"] != "off" and verifier is None:
            raise usage.UsageError(
                f"--auth {self['auth']} needs --jwt-secret, --jwt-public-key or --jwt-jwks-url"
            )
        self["ice-servers"] = self._ice_servers()
        if not self["auth-timeout"]:
            raise usage.UsageError("--auth-timeout must be above 0")
        self["auth-policy"] = AuthPolicy(
            mode=self["auth"], verifier=verifier, message_deadline=self["auth-timeout"]
        )
        if not self["directory-probe-timeout"]:
            # A holder could never answer in time: any registration would
            # take any userId registered without proof.
            raise usage.UsageError("--directory-probe-timeout must be above 0")
        if self["root-dialect"] not in (*ROOT_DIALECTS, "none"):
            raise usage.UsageError(
                f"--root-dialect must be one of {', '.join(ROOT_DIALECTS)} or none, "
                f"not {self['root-dialect']!r}"
            )
        self["api-token"] = self["api-token"] or self.environ.get("API_TOKEN") or None
        if self["resume-grace"] and not (
            self["resume-max-messages"] and self["resume-max-bytes"]
        ):
            # A peer away could be sent nothing at all: turn resume off instead.
            raise usage.UsageError(
                "--resume-max-messages and --resume-max-bytes must be above 0 "
                "(or --resume-grace 0)"
            )
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        self["tls-self-signed"] = False
        shorthands = [port for port in self["ports"] if _TLS_SHORTHAND.match(port)]
        if shorthands and not self["tls-cert"]:
            self._find_certificate(shorthands)
        self["redis-address"] = self._redis_address()
        self["peerjs-settings"] = self._peerjs_settings()
        self["y-webrtc-settings"] = self._ywebrtc_settings()

    def _peerjs_settings(self) -> PeerJSSettings | None:
        path = self["peerjs-path"]
        if path == "none":
            return None
        path = "/" + path.strip("/")
        if path == "/" or path.split("/")[1] in PEERJS_RESERVED:
            raise usage.UsageError(
                f"--peerjs-path must be a path of its own, not {self['peerjs-path']!r}"
            )
        if self["peerjs-key"] in ("", "room"):
            # "room" begins the paths of the clients in a hub room.
            raise usage.UsageError(
                f"--peerjs-key must not be empty or 'room', not {self['peerjs-key']!r}"
            )
        if not self["peerjs-expire-timeout"]:
            raise usage.UsageError("--peerjs-expire-timeout must be above 0")
        return PeerJSSettings(
            path=path,
            key=self["peerjs-key"],
            discovery=bool(self["peerjs-discovery"]),
            expire_timeout=self["peerjs-expire-timeout"],
            alive_timeout=self["peerjs-alive-timeout"],
            concurrent_limit=self["peerjs-concurrent-limit"],
            queue_messages=self["peerjs-queue-messages"],
            queue_bytes=self["peerjs-queue-bytes"],
            queue_total_bytes=self["peerjs-queue-total-bytes"],
        )

    def _ywebrtc_settings(self) -> YWebRTCSettings | None:
        path = self["y-webrtc-path"]
        if path == "none":
            if self["y-webrtc-any-path"]:
                raise usage.UsageError("--y-webrtc-any-path needs a --y-webrtc-path")
            return None
        path = "/" + path.strip("/")
        first = path.split("/")[1]
        peerjs = self["peerjs-settings"]
        if (
            path == "/"
            or not path.isascii()
            or first in PEERJS_RESERVED
            or (peerjs is not None and first == peerjs.path.split("/")[1])
        ):
            raise usage.UsageError(
                f"--y-webrtc-path must be a path of its own, not {self['y-webrtc-path']!r}"
            )
        return YWebRTCSettings(
            path=path,
            any_path=bool(self["y-webrtc-any-path"]),
            max_topics=self["y-webrtc-max-topics"],
            replay_window=self["y-webrtc-replay-window"],
            replay_bytes=self["y-webrtc-replay-bytes"],
        )

    def _find_certificate(self, shorthands: list[str]) -> None:
        directories = tlsconfig.search_directories(self.environ, self.tls_directory)
        found = tlsconfig.find_certificate(directories)
        if found is not None:
            self["tls-cert"], self["tls-key"] = found
            return
        public = [
            port
            for port in shorthands
            if not tlsconfig.is_loopback(
                _shorthand_arguments(port).get("interface", "")
            )
        ]
        if public and not self["dev-tls"]:
            pairs = " or ".join(" + ".join(pair) for pair in tlsconfig.PAIRS)
            raise usage.UsageError(
                f"--port {public[0]} needs a certificate: no {pairs} in "
                f"{', '.join(directories)}; give --tls-cert, or --dev-tls for a "
                "self-signed one"
            )
        self["tls-self-signed"] = True

    #: Searched for the C{tls:PORT} certificate after $CREDENTIALS_DIRECTORY.
    tls_directory = tlsconfig.DEFAULT_DIRECTORY

    def _redis_address(self):
        if self["redis"] is None:
            if self["node-id"] is not None:
                raise usage.UsageError("--node-id needs --redis")
            return None
        try:
            from .cluster import InvalidRedisURL, parse_redis_url
        except ImportError as error:
            raise usage.UsageError(
                f"--redis needs the cluster extra (pip install 'signaling[cluster]'): {error}"
            )

        try:
            address = parse_redis_url(self["redis"])
        except InvalidRedisURL as error:
            raise usage.UsageError(f"--redis: {error}")
        if self["node-id"] is None:
            self["node-id"] = default_node_id()
        elif not re.match(r"^[A-Za-z0-9._:-]{1,128}$", self["node-id"]):
            raise usage.UsageError(
                "--node-id takes 1 to 128 letters, digits, '.', '_', ':' or '-'"
            )
        return address

    def _token_verifier(self) -> TokenVerifier | None:
        secret = self["jwt-secret"] or self.environ.get("JWT_SECRET") or None
        key_path = self["jwt-public-key"]
        if secret and key_path:
            raise usage.UsageError("give --jwt-secret or --jwt-public-key, not both")
        try:
            if key_path:
                try:
                    with open(key_path, "rb") as key_file:
                        pem = key_file.read()
                except OSError as error:
                    raise usage.UsageError(
                        f"cannot read --jwt-public-key: {error.strerror}: {key_path}"
                    )
                return TokenVerifier.from_public_key(pem)
            if secret:
                return TokenVerifier.from_secret(secret)
        except UnusableKey as error:
            raise usage.UsageError(f"unusable JWT key: {error}")
        return None

    def _ice_servers(self) -> IceServers:
        secret = self["turn-secret"] or self.environ.get("TURN_SECRET") or None
        if self["turn-secret-file"]:
            if secret:
                raise usage.UsageError(
                    "give --turn-secret or --turn-secret-file, not both"
                )
            try:
                with open(self["turn-secret-file"], encoding="utf-8") as secret_file:
                    secret = secret_file.readline().strip()
            except OSError as error:
                raise usage.UsageError(
                    f"cannot read --turn-secret-file: {error.strerror}"
                )
            if not secret:
                raise usage.UsageError("--turn-secret-file is empty")
        if self["turn-uris"] and not secret:
            raise usage.UsageError(
                "--turn-uri needs --turn-secret or --turn-secret-file"
            )
        if secret and not self["turn-uris"]:
            raise usage.UsageError("--turn-secret needs at least one --turn-uri")
        if not self["turn-ttl"]:
            raise usage.UsageError("--turn-ttl must be above 0")
        return IceServers(
            secret=secret.encode("utf-8") if secret else None,
            turn_uris=tuple(self["turn-uris"]),
            stun_uris=tuple(self["stun-uris"]),
            ttl=self["turn-ttl"],
        )

    def parseOptions(self, options=None) -> None:
        # twistd prints its whole usage text above an option error; one line
        # saying what is wrong is easier to read in a journal.
        # --workers hands the workers the same arguments.
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            raise SystemExit(f"twistd signaling: {error} (see twistd signaling --help)")


def _shorthand_arguments(description: str) -> dict[str, str]:
    shorthand = _TLS_SHORTHAND.match(description)
    assert shorthand is not None
    return dict(part.split("=", 1) for part in shorthand.group(2).split(":") if part)


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def tls_for(options: Mapping[str, Any]) -> tlsconfig.ReloadableTLS:
    """
    The context factory of the C{tls:PORT} ports: C{--tls-cert} (or the one
    found), or a new self-signed certificate whose fingerprint is logged.
    """
    cert_path, key_path = options["tls-cert"], options["tls-key"]
    if options.get("tls-self-signed"):
        environ = getattr(options, "environ", os.environ)
        directory = environ.get("STATE_DIRECTORY") or tempfile.mkdtemp(
            prefix="signaling-tls-"
        )
        cert_path, key_path = tlsconfig.make_self_signed(directory)
    try:
        tls = tlsconfig.ReloadableTLS(cert_path, key_path)
    except tlsconfig.TLSError as error:
        raise SystemExit(f"twistd signaling: cannot load the TLS certificate: {error}")
    if options.get("tls-self-signed"):
        _log.warn(
            "no TLS certificate found: serving a self-signed one for localhost "
            "from {path}, SHA-256 {fingerprint} (for development only)",
            path=cert_path,
            fingerprint=tlsconfig.fingerprint(tls.options),
        )
    return tls


def endpoint_for(
    reactor: Any,
    description: str,
    options: Mapping[str, Any],
    tls: tlsconfig.ReloadableTLS | None = None,
) -> IStreamServerEndpoint:
    """
    Parse one C{--port}: the C{tls:PORT} shorthand, or any Twisted server
    endpoint string (given a backlog of L{LISTEN_BACKLOG} unless it says one).

    :param tls: The shorthand's context factory (by default, L{tls_for}).
    """
    shorthand = _TLS_SHORTHAND.match(description)
    if shorthand:
        arguments = _shorthand_arguments(description)
        return SSL4ServerEndpoint(
            reactor,
            int(shorthand.group(1)),
            tls if tls is not None else tls_for(options),
            backlog=int(arguments.get("backlog", LISTEN_BACKLOG)),
            interface=arguments.get("interface", ""),
        )
    if description.startswith(_BACKLOG_PREFIXES) and "backlog=" not in description:
        description += f":backlog={LISTEN_BACKLOG}"
    try:
        return serverFromString(reactor, description)
    except Exception as error:
        raise SystemExit(f"twistd signaling: bad --port {description!r}: {error}")


def url_for(port: IListeningPort, secure: bool) -> str:
    address = port.getHost()
    host = getattr(address, "host", "localhost")
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "wss" if secure else "ws"
    return f"{scheme}://{host}:{address.port}/signal"


@attrs.define(eq=False)
class ListeningService(Service):
    """
    Listens on one endpoint; a failure to listen ends startup with a
    one-line message instead of a traceback and an idle process.
    """

    endpoint: IStreamServerEndpoint
    factory: Any
    description: str
    port: IListeningPort | None = None
    _log = Logger()

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        outcome: list = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            # Endpoints that listen asynchronously report later.
            return
        if not IListeningPort.providedBy(outcome[0]):
            raise SystemExit(
                f"twistd signaling: cannot listen on {self.description}: "
                f"{outcome[0].getErrorMessage()}"
            )
        self.port = outcome[0]
        self.announce()

    def announce(self) -> None:
        secure = self.description.startswith(("tls:", "ssl:"))
        try:
            url = url_for(self.port, secure)
        except AttributeError:
            url = self.description
        self._log.info("signaling listening on {url}", url=url)
        if url.endswith("/signal"):
            page = url[: -len("signal")].replace("ws", "http", 1)
            self._log.info("demo page: open {page} in two tabs", page=page)

    def stopService(self) -> Deferred | None:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class MetricsListener(ListeningService):
    """
    The C{--metrics-port} listener.
    """

    def announce(self) -> None:
        address = self.port.getHost()
        host = getattr(address, "host", "localhost")
        port = getattr(address, "port", "")
        self._log.info(
            "signaling metrics on http://{host}:{port}/metrics", host=host, port=port
        )


class ReloadOnHangup(Service):
    """
    C{SIGHUP} re-reads the C{tls:PORT} certificate (certbot renews it in
    place); open connections keep theirs. Without one it only logs, rather
    than let the signal's default action end the server on a
    C{systemctl reload}.
    """

    _log = Logger()

    def __init__(self, reactor: Any, tls: tlsconfig.ReloadableTLS | None) -> None:
        self.reactor = reactor
        self.tls = tls
        self._previous: Any = None

    def startService(self) -> None:
        Service.startService(self)
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, signum, frame) -> None:
        # A signal handler may run between any two bytecodes: reload from
        # the reactor's own thread.
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        if self.tls is None:
            self._log.info("SIGHUP: no tls:PORT certificate to reload")
            return
        self.tls.reload()

    def stopService(self) -> None:
        Service.stopService(self)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None


def _sweeper(hub: Hub):
    """
    The cleanup timer's call: a failing sweep is logged, and the timer keeps
    running (a L{TimerService} stops at the first exception it sees).
    """

    def sweep() -> None:
        try:
            hub.sweep()
        except Exception:
            _log.failure("the cleanup sweep failed")

    return sweep


class SignalingService(MultiService):
    """
    The top of the service tree; it gives twistd's application the log
    observer of C{--log-format json} (twistd reads it from there).
    """

    log_observer: Any = None

    def setServiceParent(self, parent: Any) -> None:
        MultiService.setServiceParent(self, parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)


def make_service(options: Options, reactor: Any) -> MultiService:
    """
    Build the service tree for C{options} on C{reactor}.
    """
    logs.set_level(options["log-level"])
    adopted = workers.worker_ports(os.environ)
    route = workers.worker_route_of(os.environ, reactor)
    if options["workers"] > 1 and adopted is None:
        return _workers_parent(options, reactor)
    address = options.get("redis-address")
    if address is not None:
        # Only with --redis: the cluster extra (txredisapi) is optional.
        from .cluster.bus import BusSettings, RedisBus
        from .cluster.link import ClusterHub, ClusterLink
        from .cluster.users import ClusterDirectory
    hub = (Hub if address is None else ClusterHub)(
        clock=reactor,
        limits=HubLimits(
            max_peers_per_room=options["max-peers-per-room"],
            max_rooms_per_peer=options["max-rooms-per-peer"],
            stale_timeout=options["stale-timeout"],
            empty_room_ttl=options["empty-room-ttl"],
            metadata=MetadataLimits(
                max_size=options["max-metadata-size"],
                max_depth=options["max-metadata-depth"],
                max_elements=options["max-metadata-values"],
            ),
        ),
    )
    settings = WebSocketSettings(
        max_message_size=options["max-message-size"],
        ping_interval=options["ping-interval"],
        ping_timeout=options["ping-timeout"],
        allowed_origins=tuple(options["allowed-origins"]),
        max_send_buffer=options["max-send-buffer"],
        max_message_rate=options["max-message-rate"],
        max_message_fragments=options["max-fragments"],
        upgrade_timeout=options["upgrade-timeout"],
        fast_paths=not options["no-fast-paths"],
        trusted_hops=options["trust-forwarded"],
        closes_per_turn=options["closes-per-turn"],
    )
    directory_settings = dict(
        hold_seconds=options["directory-hold"],
        max_held=options["directory-max-held"],
        probe_seconds=options["directory-probe-timeout"],
    )
    link = None
    if address is None:
        directory = Directory(hub, **directory_settings)
    else:
        # Holds of offline userIds are kept by Redis, for the cluster.
        bus_settings = BusSettings(
            hold_seconds=options["directory-hold"],
            max_held=options["directory-max-held"],
        )
        link = ClusterLink(
            hub, RedisBus(address, options["node-id"], reactor, bus_settings)
        )
        directory = ClusterDirectory(hub, **directory_settings, link=link)
    root_dialect = options["root-dialect"]
    auth = options.get("auth-policy", AuthPolicy())
    verifier = options.get("token-verifier")
    key_set = None
    if options.get("jwt-jwks-url"):
        key_set = JWKSKeys(
            options["jwt-jwks-url"],
            reactor,
            treq_fetch(reactor),
            audience=options["jwt-audience"],
            issuer=options["jwt-issuer"],
            min_interval=options["jwt-jwks-min-interval"],
            max_age=options["jwt-jwks-max-age"],
        )
        verifier = key_set
        auth = attrs.evolve(auth, verifier=key_set)
    session_store = None
    if link is not None:
        from .cluster.sessions import ClusterSessionStore

        # A resume may land on any node: the node holding the session
        # hands it over.
        session_store = ClusterSessionStore(link, MemorySessionStore(ids=hub.ids))
    limiter = AddressLimiter(
        reactor,
        AddressLimits(
            max_connections=options["max-connections-per-address"],
            max_new_per_second=options["max-new-connections-per-address"],
        ),
    )
    peerjs = None
    if options.get("peerjs-settings") is not None:
        peerjs = PeerJSRealm(hub, options["peerjs-settings"])
        if link is not None:
            from .cluster.peerjs import PeerJSCluster

            peerjs.cluster = PeerJSCluster(link, receiver=peerjs)
        peerjs_timer = TimerService(
            options["peerjs-settings"].sweep_interval, _sweeper(peerjs)
        )
        peerjs_timer.clock = reactor
        peerjs_timer.setName("peerjs")
    site = SignalingSite(
        hub,
        settings,
        verifier=verifier,
        directory=directory,
        root_dialect=None if root_dialect == "none" else root_dialect,
        limiter=limiter,
        api_token=options.get("api-token"),
        max_rooms_page=options["max-rooms-page"],
        auth=auth,
        ice_servers=options.get("ice-servers", IceServers()),
        resume=ResumeSettings(
            grace=options["resume-grace"],
            max_messages=options["resume-max-messages"],
            max_bytes=options["resume-max-bytes"],
        ),
        session_store=session_store,
        worker_route=route,
        peerjs=peerjs,
        ywebrtc_settings=options.get("y-webrtc-settings"),
    )
    web = GuardedSite(
        site.resource(),
        HTTPLimits(
            request_timeout=options["request-timeout"],
            max_body=options["max-request-body"],
            max_socketio_body=options["max-message-size"],
            trusted_hops=options["trust-forwarded"],
            access_log=bool(options["access-log"]),
        ),
        limiter,
        reactor,
        # Upgrades straight to Autobahn; --no-fast-paths routes them all
        # through the web app as before.
        upgrades=site.upgrades if settings.fast_paths else None,
    )
    top = SignalingService()
    if options["log-format"] == "json":
        top.log_observer = logs.json_observer()
    top.hub = hub  # type: ignore[attr-defined]
    cleanup = TimerService(options["cleanup-interval"], _sweeper(hub))
    cleanup.clock = reactor
    cleanup.setName("cleanup")
    cleanup.setServiceParent(top)
    if peerjs is not None:
        peerjs_timer.setServiceParent(top)
    if key_set is not None:
        JWKSRefresher(key_set).setServiceParent(top)
    tls = None
    if any(_TLS_SHORTHAND.match(description) for description in options["ports"]):
        tls = tls_for(options)
    top.tls = tls  # type: ignore[attr-defined]
    listeners = top
    if link is not None:
        listeners = ClusterService(link)
        listeners.setServiceParent(top)
    if adopted is not None:
        for fd, family in adopted:
            workers.AdoptedPortService(reactor, fd, family, web).setServiceParent(
                listeners
            )
        if route is not None:
            from twisted.web.server import Site

            # The other workers' passed-on polls: limits were applied where
            # the request arrived.
            workers.LocalSocketService(
                reactor, route.socket_path(), Site(site.resource())
            ).setServiceParent(listeners)
            if options["metrics-port"]:
                # The parent holds --metrics-port and asks each worker here.
                metrics = MetricsService(
                    reactor,
                    hub,
                    link.bus if link is not None else None,
                    options["relay-time-sample"],
                )
                metrics.setServiceParent(top)
                workers.LocalSocketService(
                    reactor,
                    workers.metrics_socket_path(route.directory, route.index),
                    metrics.worker_site(),
                ).setServiceParent(top)
        top.parent_watch = workers.ParentWatch(reactor, _stop(reactor))  # type: ignore[attr-defined]
        _drain(reactor, hub, options, top, listeners)
        return top
    for description in options["ports"]:
        listener = ListeningService(
            endpoint_for(reactor, description, options, tls), web, description
        )
        listener.setServiceParent(listeners)
    if options["metrics-port"]:
        metrics = MetricsService(
            reactor,
            hub,
            link.bus if link is not None else None,
            options["relay-time-sample"],
        )
        metrics.setServiceParent(top)
        MetricsListener(
            endpoint_for(reactor, options["metrics-port"], options),
            metrics.site(),
            options["metrics-port"],
        ).setServiceParent(top)
    _drain(reactor, hub, options, top, listeners)
    return top


def _drain(
    reactor: Any, hub: Hub, options: Options, top: MultiService, listeners: Any
) -> None:
    """
    The drain, after the listeners in C{top}, so that it is stopped (and
    begins) first; a cluster's link waits for it.
    """
    drain = DrainService(reactor, hub, options["drain-timeout"])
    drain.setServiceParent(top)
    if isinstance(listeners, ClusterService):
        listeners.drain = drain


def _stop(reactor: Any):
    def stop() -> None:
        if reactor.running:
            reactor.stop()

    return stop


def _workers_parent(options: Options, reactor: Any) -> MultiService:
    """
    The service tree of C{--workers N}'s parent: the ports and the workers,
    no hub.
    """
    top = SignalingService()
    if options["log-format"] == "json":
        top.log_observer = logs.json_observer()
    top.hub = Hub(clock=reactor)  # type: ignore[attr-defined]
    top.tls = None  # type: ignore[attr-defined]
    if options.get("redis-address") is None and workers.redis_server_binary() is None:
        raise SystemExit(
            "twistd signaling: --workers needs a Redis: install redis-server, or give --redis"
        )
    try:
        import signaling.cluster  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            f"twistd signaling: --workers needs the cluster extra (pip install 'signaling[cluster]'): {error}"
        )
    for description in options["ports"]:
        if _TLS_SHORTHAND.match(description) or description.startswith(
            ("ssl:", "tls:", "unix:")
        ):
            raise SystemExit(
                f"twistd signaling: --workers takes tcp ports only, not {description!r}"
            )
    parent = workers.WorkersService(
        reactor,
        [
            (description, endpoint_for(reactor, description, options))
            for description in options["ports"]
        ],
        workers.child_arguments(getattr(options, "argv", [])),
        options["workers"],
        options["redis"],
        options["node-id"] or default_node_id(),
        describe_port=lambda port: url_for(port, False),
        stop_timeout=options["drain-timeout"] + workers.STOP_MARGIN,
    )
    parent.setServiceParent(top)
    if options["metrics-port"]:
        MetricsListener(
            endpoint_for(reactor, options["metrics-port"], options),
            WorkersMetricsResource(reactor, parent.metrics_sockets).site(),
            options["metrics-port"],
        ).setServiceParent(top)
    return top


class ClusterService(MultiService):
    """
    Joins the cluster, then listens: a peer must not connect before this
    node has read the cluster's rooms and can reach the other nodes.
    """

    _log = Logger()

    def __init__(self, link: Any) -> None:
        """
        :param link: The node's L{signaling.cluster.link.ClusterLink}.
        """
        super().__init__()
        self.link = link
        #: The node's L{DrainService}, which the link outlasts.
        self.drain: DrainService | None = None

    def privilegedStartService(self) -> None:
        # The ports are opened once the bus is up, in startService.
        Service.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        bus = self.link.bus
        self._log.info(
            "joining the cluster at {address} as node {node}",
            address=bus.address.describe(),
            node=bus.node_id,
        )
        started = self.link.start()
        started.addCallbacks(self._joined, self._refused)

    def _joined(self, _) -> None:
        if not self.running:
            return
        self._log.info("joined the cluster as node {node}", node=self.link.bus.node_id)
        for service in self:
            service.privilegedStartService()
            service.startService()

    def _refused(self, failure) -> None:
        from twisted.internet import reactor

        self._log.error(
            "cannot join the cluster: {error}", error=failure.getErrorMessage()
        )
        reactor.stop()

    def stopService(self):
        # Stop listening, then leave the cluster once the drain is over: the
        # other nodes reap this one at once and announce its peers gone.
        # Until then the peers still here relay across nodes, and sessions
        # told to reconnect are handed over to the nodes they resume on.
        stopped = MultiService.stopService(self)
        if self.drain is not None:
            stopped.addBoth(lambda _: self.drain.drained())
        stopped.addBoth(lambda _: self.link.stop())
        return stopped


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    top = make_service(options, reactor)
    if not options["no-fast-paths"]:
        # Only in the twistd process, whose reactor this is.
        fastpath.slice_large_batches(reactor)
    # Only in the twistd process: tests that build services share their
    # interpreter's collector with everything else.
    CollectionPolicy(
        reactor,
        top.hub.peer_count,
        min_growth=options["gc-memory-growth"] * 1024 * 1024,
    ).setServiceParent(top)
    ReloadOnHangup(reactor, top.tls).setServiceParent(top)
    # Last, so that it is stopped first: STOPPING=1 as the drain begins.
    SystemdNotifier(reactor, os.environ).setServiceParent(top)
    return top
