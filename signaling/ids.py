"""
Peer identifiers.

Every dialect's original server had its own shape of peer id: an opaque token,
a ULID, eight hex characters. The hub asks an L{IdSource} for the shape the
dialect wants and checks uniqueness itself, so the shapes stay in one place and
tests can inject a deterministic source of randomness and time.
"""

from __future__ import annotations

import base64
import enum
import os
from typing import Callable

import attrs

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every pair of Crockford characters, by the 10 bits they encode.
_CROCKFORD_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]


class IdShape(enum.Enum):
    """
    The shapes of peer id a dialect may ask for.
    """

    #: 120 random bits in lower-case base32 (24 characters); the default.
    TOKEN = "token"
    #: A ULID: 48-bit millisecond timestamp and 80 random bits, Crockford base32.
    ULID = "ulid"
    #: 8 lower-case hex characters (32 random bits; the hub enforces uniqueness).
    HEX8 = "hex8"


def encode_ulid(milliseconds: int, randomness: bytes) -> str:
    """
    Encode a ULID.

    :param milliseconds: Unix time in milliseconds (48 bits).
    :param randomness: 10 random bytes.
    """
    # 130 bits, two characters (10 bits) at a time: the time (2 zero bits
    # and 48) in five pairs, then each half of the randomness in four. Ints
    # of at most 48 bits, not one of 128, are shifted: a third faster.
    time = milliseconds & 0xFFFFFFFFFFFF
    high = int.from_bytes(randomness[:5], "big")
    low = int.from_bytes(randomness[5:], "big")
    p = _CROCKFORD_PAIRS
    return "".join(
        (
            p[time >> 40],
            p[(time >> 30) & 0x3FF],
            p[(time >> 20) & 0x3FF],
            p[(time >> 10) & 0x3FF],
            p[time & 0x3FF],
            p[high >> 30],
            p[(high >> 20) & 0x3FF],
            p[(high >> 10) & 0x3FF],
            p[high & 0x3FF],
            p[low >> 30],
            p[(low >> 20) & 0x3FF],
            p[(low >> 10) & 0x3FF],
            p[low & 0x3FF],
        )
    )


@attrs.define
class IdSource:
    """
    Makes peer ids of every shape from an injected source of random bytes.

    :ivar random_bytes: Returns that many unpredictable bytes.
    """

    random_bytes: Callable[[int], bytes] = os.urandom

    def new_id(self, shape: IdShape, now: float) -> str:
        """
        Make one id of C{shape}.

        :param now: The current time in seconds since the epoch (ULIDs carry it).
        """
        if shape is IdShape.TOKEN:
            return base64.b32encode(self.random_bytes(15)).decode("ascii").lower()
        if shape is IdShape.ULID:
            return encode_ulid(int(now * 1000), self.random_bytes(10))
        return self.random_bytes(4).hex()
