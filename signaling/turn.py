"""
Time-limited TURN credentials in coturn's REST API scheme
(C{use-auth-secret}): the username is C{expiry:userid}, the credential
base64(HMAC-SHA1(secret, username)); a TURN server that shares the secret
accepts them until C{expiry}, a Unix time, without asking us.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import attrs

#: The default lifetime of credentials: coturn's documentation's 24 h.
DEFAULT_TTL = 24 * 3600.0
#: Seconds before credentials expire at which a client is sent fresh ones.
REFRESH_MARGIN = 60.0


def credential_for(secret: bytes, username: str) -> str:
    """
    The password coturn expects for C{username} with C{static-auth-secret}.
    """
    digest = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@attrs.frozen
class IceServers:
    """
    The ICE servers clients are told of, with credentials for the TURN ones.

    :ivar secret: coturn's C{static-auth-secret}; L{None} for STUN only.
    :ivar turn_uris: C{turn:}/C{turns:} URIs (C{?transport=tcp} allowed).
    :ivar stun_uris: C{stun:} URIs, which need no credentials.
    :ivar ttl: Seconds the credentials handed out are valid.
    """

    secret: bytes | None = attrs.field(default=None, repr=False)
    turn_uris: tuple[str, ...] = ()
    stun_uris: tuple[str, ...] = ()
    ttl: float = DEFAULT_TTL

    @property
    def configured(self) -> bool:
        return bool(self.stun_uris or (self.turn_uris and self.secret))

    def refresh_in(self) -> float:
        """
        Seconds after handing out credentials at which to hand out fresh ones.
        """
        return max(self.ttl - REFRESH_MARGIN, self.ttl * 0.9)

    def for_user(self, user: str, now: float) -> list[dict[str, Any]]:
        """
        The C{iceServers} of an C{RTCConfiguration} for C{user} at C{now}.

        :param user: Who the credentials are for (coturn logs it): the
            verified user id, else the peer id.
        """
        servers: list[dict[str, Any]] = []
        if self.stun_uris:
            servers.append({"urls": list(self.stun_uris)})
        if self.turn_uris and self.secret:
            # A ':' in the user would be read as the end of the expiry.
            username = f"{int(now + self.ttl)}:{user.replace(':', '_')}"
            servers.append(
                {
                    "urls": list(self.turn_uris),
                    "username": username,
                    "credential": credential_for(self.secret, username),
                }
            )
        return servers
