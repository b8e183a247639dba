"""
Where the Redis server is: C{--redis URL} parsed into a Twisted client
endpoint and the connection settings txredisapi needs.
"""

from __future__ import annotations

import urllib.parse

import attrs
from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS

#: The port of C{redis://host} and C{rediss://host} when none is given.
DEFAULT_PORT = 6379
#: Seconds a connection attempt to Redis may take.
CONNECT_TIMEOUT = 5.0


class InvalidRedisURL(ValueError):
    """
    A C{--redis} URL that cannot be used; the message says why, in one line.
    """


@attrs.frozen
class RedisAddress:
    """
    One Redis server.

    :ivar scheme: C{"redis"}, C{"rediss"} (TLS) or C{"unix"}.
    :ivar host: The host name, or the socket's path for C{"unix"}.
    :ivar port: The TCP port; 0 for C{"unix"}.
    :ivar db: The database number, selected on every connection.
    :ivar username: For Redis 6 ACLs, or L{None}.
    :ivar password: Sent with C{AUTH}, or L{None}.
    :ivar ca_certs: For C{"rediss"}: a PEM file of the certificate
        authority to trust instead of the system's (a private CA).
    """

    scheme: str
    host: str
    port: int = 0
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    ca_certs: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def endpoint(self, reactor) -> IStreamClientEndpoint:
        """
        A client endpoint that reaches this server.
        """
        if self.scheme == "unix":
            return UNIXClientEndpoint(reactor, self.host, timeout=CONNECT_TIMEOUT)
        endpoint = HostnameEndpoint(
            reactor, self.host, self.port, timeout=CONNECT_TIMEOUT
        )
        if self.tls:
            trust = None
            if self.ca_certs is not None:
                with open(self.ca_certs, "rb") as pem:
                    trust = Certificate.loadPEM(pem.read())
            endpoint = wrapClientTLS(
                optionsForClientTLS(self.host, trustRoot=trust), endpoint
            )
        return endpoint

    def describe(self) -> str:
        """
        The address without its password, for logs.
        """
        if self.scheme == "unix":
            return f"unix://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse C{redis://[[user]:password@]host[:port][/db]},
    C{rediss://...[?ssl_ca_certs=/path/ca.pem]} (TLS, the server's
    certificate checked against the system's authorities or that file's) or
    C{unix://path[?db=N]} (C{unix:///run/redis.sock} or
    C{unix:/run/redis.sock}; a password as C{?password=...}).

    :raises InvalidRedisURL: The URL is none of these.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    query = urllib.parse.parse_qs(parts.query)
    if scheme == "unix":
        path = parts.netloc + parts.path
        if not path.startswith("/"):
            raise InvalidRedisURL(f"{url!r}: unix:// needs an absolute socket path")
        return RedisAddress(
            "unix",
            path,
            db=_db(url, (query.get("db") or ["0"])[0]),
            password=(query.get("password") or [None])[0],
        )
    if scheme not in ("redis", "rediss"):
        raise InvalidRedisURL(f"{url!r}: use redis://, rediss:// or unix://")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidRedisURL(f"{url!r}: the port is not a number") from None
    if not host:
        raise InvalidRedisURL(f"{url!r}: no host")
    db = parts.path.lstrip("/") or (query.get("db") or ["0"])[0]
    return RedisAddress(
        scheme,
        host,
        port or DEFAULT_PORT,
        _db(url, db),
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password else None,
        ca_certs=(query.get("ssl_ca_certs") or [None])[0]
        if scheme == "rediss"
        else None,
    )


def _db(url: str, text: str) -> int:
    if not text.isdigit():
        raise InvalidRedisURL(f"{url!r}: the database must be a number, not {text!r}")
    return int(text)
