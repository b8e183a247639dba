"""
JSON Web Tokens: who a client says it is, checked against a configured key.

A L{TokenVerifier} holds an HS256 secret or an RS256/ES256 public key. Expiry
is checked against a time the caller passes in (the hub's clock), not the
wall clock, so tests control it.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

#: Seconds of clock skew allowed for C{exp} and C{nbf}.
LEEWAY = 30


class InvalidToken(Exception):
    """
    A token is malformed, wrongly signed, expired or not yet valid.
    """


class UnusableKey(ValueError):
    """
    A configured key cannot be used.
    """


@attrs.frozen
class TokenVerifier:
    """
    Checks tokens signed with one key.

    :ivar key: The HS256 secret or the public key object.
    :ivar algorithms: The one algorithm the key is for.
    """

    key: Any
    algorithms: tuple[str, ...]

    @classmethod
    def from_secret(cls, secret: str) -> "TokenVerifier":
        if not secret:
            raise UnusableKey("the JWT secret is empty")
        return cls(key=secret.encode("utf-8"), algorithms=("HS256",))

    @classmethod
    def from_public_key(cls, pem: bytes) -> "TokenVerifier":
        """
        :raises UnusableKey: C{pem} is not an RSA or P-256 EC public key.
        """
        try:
            key = load_pem_public_key(pem)
        except (ValueError, TypeError) as error:
            raise UnusableKey(f"not a PEM public key: {error}")
        if isinstance(key, rsa.RSAPublicKey):
            return cls(key=key, algorithms=("RS256",))
        if isinstance(key, ec.EllipticCurvePublicKey):
            return cls(key=key, algorithms=("ES256",))
        raise UnusableKey("the public key must be RSA (RS256) or EC (ES256)")

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
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.InvalidTokenError as error:
            raise InvalidToken(f"invalid token: {error}")
        for claim in ("exp", "nbf"):
            if claim in claims and not isinstance(claims[claim], (int, float)):
                raise InvalidToken(f"invalid token: {claim!r} must be a number")
        if "exp" in claims and now > claims["exp"] + LEEWAY:
            raise InvalidToken("the token has expired")
        if "nbf" in claims and now < claims["nbf"] - LEEWAY:
            raise InvalidToken("the token is not valid yet")
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
