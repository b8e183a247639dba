"""
Proof that a client holds the private key of the public key it registers.

The server sends a nonce; the client signs L{challenge_text} with its private
key. Ed25519 and ECDSA (P-256, P-384, P-521) keys are understood, given as
PEM, as base64 DER SubjectPublicKeyInfo, or base64 raw (32 bytes for Ed25519,
an uncompressed point for P-256 as WebCrypto exports it).
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    load_der_public_key,
    load_pem_public_key,
)

_HASHES = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class UnsupportedKey(ValueError):
    """
    The public key is not one this module can check signatures of.
    """


def challenge_text(user_id: str, nonce: str) -> bytes:
    """
    The bytes a client signs to prove it holds the key for C{user_id}.
    """
    return f"signaling-directory-register\n{user_id}\n{nonce}".encode("utf-8")


def _b64decode(text: str) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise UnsupportedKey("not base64") from None


def load_public_key(text: str) -> PublicKey:
    """
    :raises UnsupportedKey: C{text} is no Ed25519 or ECDSA public key.
    """
    try:
        if text.lstrip().startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode("utf-8"))
        else:
            data = _b64decode(text)
            if len(data) == 32:
                key = ed25519.Ed25519PublicKey.from_public_bytes(data)
            elif len(data) == 65 and data[0] == 4:
                key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
            else:
                key = load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UnsupportedKey("not a public key in a known format") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _HASHES:
        return key
    raise UnsupportedKey("only Ed25519 and ECDSA P-256/P-384/P-521 keys are supported")


def verify(key: PublicKey, signature: str, message: bytes) -> bool:
    """
    Whether C{signature} (base64) is C{key}'s signature of C{message}.

    ECDSA signatures may be DER or raw r||s, as WebCrypto makes them.
    """
    try:
        raw = _b64decode(signature)
    except UnsupportedKey:
        return False
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, message)
            return True
        size = (key.curve.key_size + 7) // 8
        if len(raw) == 2 * size:
            raw = encode_dss_signature(
                int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
            )
        key.verify(raw, message, ec.ECDSA(_HASHES[key.curve.name]()))
        return True
    except (InvalidSignature, ValueError):
        return False
