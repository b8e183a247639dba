"""
The Redis bus linking the hubs of several processes or hosts
(docs/scaling.rst). It is the foundation only: nothing in the hub or the
dialects uses it yet.
"""

from .address import InvalidRedisURL, RedisAddress, parse_redis_url
from .bus import BusSettings, RedisBus
from .results import (
    BusUnavailable,
    ClusterStats,
    DirectoryRefused,
    NodeDeath,
    Registered,
    Released,
    RemoteMember,
    UserBinding,
)
from .envelope import Envelope, InvalidEnvelope, decode_envelope, encode_envelope

__all__ = [
    "BusSettings",
    "BusUnavailable",
    "ClusterStats",
    "DirectoryRefused",
    "Envelope",
    "InvalidEnvelope",
    "InvalidRedisURL",
    "NodeDeath",
    "RedisAddress",
    "RedisBus",
    "Registered",
    "Released",
    "RemoteMember",
    "UserBinding",
    "decode_envelope",
    "encode_envelope",
    "parse_redis_url",
]
