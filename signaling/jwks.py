"""
Keys from a JSON Web Key Set URL (C{--jwt-jwks-url}): fetched without
blocking the reactor, cached, fetched again when a token names a key id the
cache lacks (at most once per L{JWKSKeys.min_interval}), and every
L{JWKSKeys.max_age} seconds.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jwt
import orjson
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .auth import InvalidToken, TokenVerifier, UnknownKey, UnusableKey
from .logs import Logger

#: Seconds between two fetches that unknown key ids may cause.
MIN_INTERVAL = 10.0
#: Seconds after which the set is fetched again anyway.
MAX_AGE = 300.0
#: The largest key set document read.
MAX_SIZE = 256 * 1024


def verifiers_of(document: bytes) -> dict[str | None, TokenVerifier]:
    """
    The verifiers of a JWKS document's signing keys, by key id, each pinned
    to its key type's algorithm. Symmetric (C{oct}) keys are left out: a
    published key set must never be usable as an HMAC secret.

    :raises ValueError: It is not a key set.
    """
    body = orjson.loads(document)
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise ValueError("not a JSON Web Key Set")
    verifiers: dict[str | None, TokenVerifier] = {}
    for data in body["keys"]:
        if not isinstance(data, dict) or data.get("kty") == "oct":
            continue
        if data.get("use", "sig") != "sig":
            continue
        try:
            verifier = TokenVerifier.for_key(jwt.PyJWK(data).key)
        except (jwt.PyJWKError, UnusableKey, ValueError, TypeError):
            continue
        verifiers[data.get("kid")] = verifier
    return verifiers


class JWKSKeys:
    """
    The verifier of tokens signed with any key of one key set; it stands
    where a L{TokenVerifier} does.

    :ivar fetch: Fetches a URL without blocking: a L{Deferred} of its body.
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        clock: IReactorTime,
        fetch: Callable[[str], Deferred],
        audience: str | None = None,
        issuer: str | None = None,
        min_interval: float = MIN_INTERVAL,
        max_age: float = MAX_AGE,
    ) -> None:
        self.url = url
        self.clock = clock
        self.fetch = fetch
        self.audience = audience
        self.issuer = issuer
        self.min_interval = min_interval
        self.max_age = max_age
        self.keys: dict[str | None, TokenVerifier] = {}
        self.fetches = 0
        self._last_fetch: float | None = None
        self._pending: Deferred | None = None
        self._waiting: list[Deferred] = []

    def refresh(self, force: bool = False) -> Deferred:
        """
        Fetch the key set again, sharing a fetch in progress. Unless
        C{force}d (the fetches at start and every L{max_age}), at most one
        fetch per L{min_interval}: tokens with made-up key ids cannot make
        us hammer the key server.

        :return: Fires with L{None} once the fetch (if any) is over; never
            fails.
        """
        waiter: Deferred = Deferred()
        if self._pending is not None:
            self._waiting.append(waiter)
            return waiter
        now = self.clock.seconds()
        if not force:
            if (
                self._last_fetch is not None
                and now - self._last_fetch < self.min_interval
            ):
                return succeed(None)
            self._last_fetch = now
        self.fetches += 1
        self._waiting.append(waiter)
        self._pending = self.fetch(self.url)
        self._pending.addCallbacks(self._fetched, self._failed)
        self._pending.addBoth(self._done)
        return waiter

    def _fetched(self, body: bytes) -> None:
        try:
            if len(body) > MAX_SIZE:
                raise ValueError(f"over {MAX_SIZE} bytes")
            keys = verifiers_of(body)
        except ValueError as error:
            self._log.warn(
                "the JWKS at {url} is unusable: {error}", url=self.url, error=str(error)
            )
            return
        self.keys = {
            kid: TokenVerifier(
                key=verifier.key,
                algorithms=verifier.algorithms,
                audience=self.audience,
                issuer=self.issuer,
            )
            for kid, verifier in keys.items()
        }
        self._log.info("fetched {count} keys from the JWKS", count=len(self.keys))

    def _failed(self, failure) -> None:
        self._log.warn(
            "cannot fetch the JWKS at {url}: {error}",
            url=self.url,
            error=failure.getErrorMessage(),
        )

    def _done(self, _: Any) -> None:
        self._pending = None
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def verify(self, token: object, now: float) -> Mapping[str, Any]:
        """
        As L{TokenVerifier.verify}, with the key the token's C{kid} names.

        :raises UnknownKey: The cached set has no such key; a L{refresh}
            is started (if none was recently) that may bring it, and
            L{UnknownKey.refreshed} fires when it is over.
        """
        if not isinstance(token, str) or not token:
            raise InvalidToken("the token must be a non-empty string")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as error:
            raise InvalidToken(f"invalid token: {error}")
        verifier = self.keys.get(kid)
        if verifier is None:
            if kid is None and len(self.keys) == 1:
                verifier = next(iter(self.keys.values()))
            else:
                unknown = UnknownKey("the token's key is not in the key set")
                unknown.refreshed = self.refresh()
                raise unknown
        return verifier.verify(token, now)


class JWKSRefresher(Service):
    """
    Fetches the key set at startup and every C{max_age} seconds.
    """

    def __init__(self, keys: JWKSKeys) -> None:
        self.keys = keys
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._tick()

    def _tick(self) -> None:
        self.keys.refresh(force=True)
        self._call = self.keys.clock.callLater(self.keys.max_age, self._tick)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def treq_fetch(reactor: Any, timeout: float = 10) -> Callable[[str], Deferred]:
    """
    A fetcher with treq on C{reactor}: the body of a 200 answer, else a
    failure.
    """
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool)

    def fetch(url: str) -> Deferred:
        def check(response):
            if response.code != 200:
                raise ValueError(f"HTTP {response.code}")
            return treq.content(response)

        return treq.get(url, agent=agent, timeout=timeout).addCallback(check)

    return fetch
