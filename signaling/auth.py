"""
JSON Web Tokens: who a client says it is, checked against a configured key.

A L{TokenVerifier} holds an HS256 secret or an RS256/ES256/EdDSA public key,
the algorithm pinned by the key's type. Time claims are checked against a
time the caller passes in (the hub's clock), not the wall clock, so tests
control it. An L{AuthPolicy} says what every dialect does with a token
(C{--auth off|optional|required}); an L{Identity} is what a valid token
proves: a user id, when that proof ends, and the rooms it grants.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, ed448, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

#: Seconds of clock skew allowed for C{exp}, C{nbf} and C{iat}.
LEEWAY = 30

#: The values of C{--auth}.
AUTH_MODES = ("off", "optional", "required")


class InvalidToken(Exception):
    """
    A token is malformed, wrongly signed, expired or not yet valid.
    """


class MissingToken(InvalidToken):
    """
    A token is required and the client presented none.
    """


class UnknownKey(InvalidToken):
    """
    A token names a key id that a key set (C{--jwt-jwks-url}) lacks.

    :ivar refreshed: A L{Deferred} that fires once the key set has been
        fetched again (or was fetched too recently to be).
    """

    refreshed: Any = None


class UnusableKey(ValueError):
    """
    A configured key cannot be used.
    """


#: The one algorithm of each elliptic curve, as RFC 7518 pairs them.
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


@attrs.frozen
class TokenVerifier:
    """
    Checks tokens signed with one key.

    :ivar key: The HS256 secret or the public key object.
    :ivar algorithms: The one algorithm the key is for: a token naming
        another (C{alg: HS256} with an RSA public key as its secret, or
        C{none}) is refused.
    :ivar audience: The C{aud} a token must name; L{None} checks none.
    :ivar issuer: The C{iss} a token must have; L{None} checks none.
    """

    key: Any
    algorithms: tuple[str, ...]
    audience: str | None = None
    issuer: str | None = None

    @classmethod
    def from_secret(cls, secret: str) -> "TokenVerifier":
        if not secret:
            raise UnusableKey("the JWT secret is empty")
        return cls(key=secret.encode("utf-8"), algorithms=("HS256",))

    @classmethod
    def from_public_key(cls, pem: bytes) -> "TokenVerifier":
        """
        :raises UnusableKey: C{pem} is not an RSA, EC or Ed25519/Ed448
            public key.
        """
        try:
            key = load_pem_public_key(pem)
        except (ValueError, TypeError) as error:
            raise UnusableKey(f"not a PEM public key: {error}")
        return cls.for_key(key)

    @classmethod
    def for_key(cls, key: Any) -> "TokenVerifier":
        """
        A verifier of C{key}, a public key object, pinned to the one
        algorithm its type signs with.

        :raises UnusableKey: It is not an RSA, EC or Ed25519/Ed448 public key.
        """
        if isinstance(key, rsa.RSAPublicKey):
            return cls(key=key, algorithms=("RS256",))
        if isinstance(key, ec.EllipticCurvePublicKey):
            return cls(
                key=key, algorithms=(_EC_ALGORITHMS.get(key.curve.name, "ES256"),)
            )
        if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            return cls(key=key, algorithms=("EdDSA",))
        raise UnusableKey(
            "the public key must be RSA (RS256), EC (ES256) or Ed25519 (EdDSA)"
        )

    def verify(self, token: object, now: float) -> Mapping[str, Any]:
        """
        Check C{token} and return its claims.

        :param now: The current time in seconds since the epoch.
        :raises InvalidToken: It is not a valid token for our key at C{now}.
        """
        if not isinstance(token, str) or not token:
            raise InvalidToken("the token must be a non-empty string")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.InvalidTokenError as error:
            raise InvalidToken(f"invalid token: {error}")
        if not isinstance(claims, dict):
            raise InvalidToken("invalid token: the claims must be an object")
        for claim in ("exp", "nbf", "iat"):
            value = claims.get(claim)
            if claim in claims and (
                not isinstance(value, (int, float)) or isinstance(value, bool)
            ):
                raise InvalidToken(f"invalid token: {claim!r} must be a number")
        if "exp" in claims and now > claims["exp"] + LEEWAY:
            raise InvalidToken("the token has expired")
        if "nbf" in claims and now < claims["nbf"] - LEEWAY:
            raise InvalidToken("the token is not valid yet")
        if "iat" in claims and now < claims["iat"] - LEEWAY:
            raise InvalidToken("the token was issued in the future")
        if self.audience is not None:
            audience = claims.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if self.audience not in audiences:
                raise InvalidToken("the token is not for this audience")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise InvalidToken("the token is not from the expected issuer")
        return claims


def unverified_claims(token: object) -> Mapping[str, Any]:
    """
    The claims of C{token} without checking anything, for servers run without
    a key; an unreadable token has none.
    """
    if not isinstance(token, str):
        return {}
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {}
    return claims if isinstance(claims, dict) else {}


def user_id_of(claims: Mapping[str, Any]) -> str | None:
    """
    The user a token names: its C{userId} claim, else C{sub}.
    """
    for claim in ("userId", "sub"):
        value = claims.get(claim)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def _room_grants(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    """
    The C{rooms} claim: exact room names, or prefixes ending in C{*}.

    :raises InvalidToken: It is there but not a list of strings.
    """
    if "rooms" not in claims:
        return None
    grants = claims["rooms"]
    if isinstance(grants, str):
        grants = [grants]
    if not isinstance(grants, list) or not all(
        isinstance(g, str) and g for g in grants
    ):
        raise InvalidToken("invalid token: 'rooms' must be a list of room names")
    return tuple(grants)


@attrs.frozen
class TokenLimits:
    """
    Limits a token sets for its holder instead of the server's (its
    C{limits} claim); L{None} keeps the server's. 0 is unlimited, as for
    the options.

    :ivar max_rooms_per_peer: C{maxRoomsPerPeer}, for C{--max-rooms-per-peer}.
    :ivar max_message_rate: C{maxMessageRate}, for C{--max-message-rate}
        (WebSocket dialects).
    """

    max_rooms_per_peer: int | None = None
    max_message_rate: float | None = None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> "TokenLimits":
        """
        :raises InvalidToken: C{limits} is there but not an object of
            numbers, 0 or more.
        """
        limits = claims.get("limits", {})
        if not isinstance(limits, dict):
            raise InvalidToken("invalid token: 'limits' must be an object")
        values = {}
        for claim, field, kind in (
            ("maxRoomsPerPeer", "max_rooms_per_peer", int),
            ("maxMessageRate", "max_message_rate", float),
        ):
            value = limits.get(claim)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value < 0
            ):
                raise InvalidToken(
                    f"invalid token: limits.{claim} must be a number, 0 or more"
                )
            values[field] = kind(value)
        return cls(**values)


@attrs.frozen
class Identity:
    """
    What a valid token proved.

    :ivar user_id: Its C{userId}, else C{sub}.
    :ivar expires: When it stops being accepted (C{exp} plus L{LEEWAY});
        L{None} when it has no C{exp}.
    :ivar room_grants: The rooms it may join (exact names, or prefixes
        ending in C{*}); L{None} when the token does not limit them.
    :ivar limits: The limits it sets for its holder.
    """

    user_id: str
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    expires: float | None = None
    room_grants: tuple[str, ...] | None = None
    limits: TokenLimits = TokenLimits()

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> "Identity":
        """
        :raises InvalidToken: The claims name no user or grant no readable
            rooms.
        """
        user_id = user_id_of(claims)
        if user_id is None:
            raise InvalidToken("the token names no user")
        expires = claims["exp"] + LEEWAY if "exp" in claims else None
        return cls(
            user_id=user_id,
            claims=claims,
            expires=expires,
            room_grants=_room_grants(claims),
            limits=TokenLimits.from_claims(claims),
        )


@attrs.frozen
class AuthPolicy:
    """
    What every dialect does with tokens.

    :ivar mode: C{off}: the WebSocket dialects ignore tokens (the Socket.IO
        dialect checks one when a key is configured); C{optional}: a token,
        when presented, must be valid; C{required}: no valid token, no
        connection.
    :ivar verifier: Checks tokens; L{None} when no key is configured (only
        with C{off}).
    :ivar message_deadline: Seconds a client that presents its token in a
        message (native C{auth}) has to do so under C{required}.
    """

    mode: str = "off"
    verifier: TokenVerifier | None = None
    message_deadline: float = 10.0

    @property
    def checks_tokens(self) -> bool:
        """
        Whether the WebSocket dialects read and check tokens.
        """
        return self.mode != "off" and self.verifier is not None

    @property
    def required(self) -> bool:
        return self.mode == "required"

    def identify(self, token: object, now: float) -> Identity | None:
        """
        Who C{token} proves a client is.

        :param token: The token presented, or L{None}.
        :return: L{None} when no token was presented and none is required.
        :raises MissingToken: None was presented and one is required.
        :raises InvalidToken: It is not valid at C{now}.
        """
        if token is None or token == "":
            if self.required:
                raise MissingToken("a token is required")
            return None
        if self.verifier is None:
            raise InvalidToken("no key to check tokens with")
        return Identity.from_claims(self.verifier.verify(token, now))

    def identify_later(self, token: object, clock: Any) -> Any:
        """
        As L{identify}, but a token whose key a key set lacks is checked
        again once the set has been fetched again.

        :param clock: An C{IReactorTime}.
        :return: A L{Deferred} of the L{Identity} or L{None}.
        """
        from twisted.internet.defer import fail, succeed

        try:
            return succeed(self.identify(token, clock.seconds()))
        except UnknownKey as unknown:
            if unknown.refreshed is None:
                return fail(unknown)
            return unknown.refreshed.addCallback(
                lambda _: self.identify(token, clock.seconds())
            )
        except InvalidToken:
            return fail()


def bearer_token(authorization: str | None) -> str | None:
    """
    The token of an C{Authorization: Bearer} header, or L{None}.
    """
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def presented_token(params: Mapping[str, str], authorization: str | None) -> str | None:
    """
    The token a request presents: C{?token=}, else C{Authorization: Bearer}.
    """
    token = params.get("token")
    if token:
        return token
    return bearer_token(authorization)
