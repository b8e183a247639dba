"""
Where the C{tls:PORT} shorthand's certificate comes from, and its reload.

The look-up order (L{find_certificate}) is the one the systemd unit and
docs/deploy.rst use; a self-signed certificate (L{make_self_signed}) is for
development only, on loopback or with C{--dev-tls}. L{ReloadableTLS} is the
context factory of every C{tls:PORT} listener: C{SIGHUP} re-reads its files,
and a bad new certificate keeps the old one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Mapping

from OpenSSL import SSL
from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, KeyPair
from zope.interface import implementer

from .logs import Logger

#: Searched after C{$CREDENTIALS_DIRECTORY}, where docs/deploy.rst puts them.
DEFAULT_DIRECTORY = "/etc/signaling/tls"
#: File pairs looked for in each directory, in this order: the unit's
#: credential names, then certbot's.
PAIRS = (("cert.pem", "key.pem"), ("fullchain.pem", "privkey.pem"))

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class TLSError(Exception):
    """
    A certificate or key that cannot be used; the message is one line.
    """


def search_directories(
    environ: Mapping[str, str], default: str = DEFAULT_DIRECTORY
) -> list[str]:
    """
    The directories L{find_certificate} looks in, in order.
    """
    directories = []
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        directories.append(credentials)
    directories.append(default)
    return directories


def find_certificate(directories: list[str]) -> tuple[str, str] | None:
    """
    The first certificate and key pair found in C{directories}, or L{None}.
    """
    for directory in directories:
        for cert_name, key_name in PAIRS:
            cert_path = os.path.join(directory, cert_name)
            key_path = os.path.join(directory, key_name)
            if os.path.isfile(cert_path) and os.path.isfile(key_path):
                return cert_path, key_path
    return None


def is_loopback(interface: str) -> bool:
    """
    Whether a listener on C{interface} is reachable from this host only.
    """
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def load_options(cert_path: str, key_path: str | None) -> CertificateOptions:
    """
    Server options for the PEM certificate (and chain) at C{cert_path} and
    the key at C{key_path} (or in C{cert_path} when L{None}).

    :raises TLSError: A file is unreadable, or the key does not match.
    """
    try:
        cert_pem = Path(cert_path).read_bytes()
        key_pem = Path(key_path).read_bytes() if key_path else cert_pem
        blocks = _PEM_CERTIFICATE.findall(cert_pem)
        if not blocks:
            raise TLSError(f"no certificate in {cert_path}")
        chain = [Certificate.loadPEM(block) for block in blocks]
        key = KeyPair.load(key_pem, FILETYPE_PEM)
        options = CertificateOptions(
            privateKey=key.original,
            certificate=chain[0].original,
            extraCertChain=[certificate.original for certificate in chain[1:]],
        )
        # Builds the context now, which checks that key and certificate
        # belong together.
        options.getContext()
        return options
    except TLSError:
        raise
    except OSError as error:
        raise TLSError(f"{error.strerror}: {error.filename}")
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise TLSError(" ".join(reason.split()))


def fingerprint(options: CertificateOptions) -> str:
    """
    The SHA-256 fingerprint of C{options}' certificate, as C{AA:BB:...}.
    """
    return options.certificate.digest("sha256").decode("ascii")


def make_self_signed(directory: str) -> tuple[str, str]:
    """
    Write a self-signed certificate for C{localhost}, C{127.0.0.1} and
    C{::1} to C{directory}; returns the paths of certificate and key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "self-signed-cert.pem")
    key_path = os.path.join(directory, "self-signed-key.pem")
    with open(cert_path, "wb") as cert_file:
        cert_file.write(certificate.public_bytes(serialization.Encoding.PEM))
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    The context factory of C{tls:PORT} listeners; L{reload} swaps the
    certificate for new connections, and open ones keep theirs.
    """

    _log = Logger()

    def __init__(self, cert_path: str, key_path: str | None) -> None:
        """
        :raises TLSError: The certificate cannot be used.
        """
        self.cert_path = cert_path
        self.key_path = key_path
        self.options = load_options(cert_path, key_path)

    def reload(self) -> bool:
        """
        Re-read the certificate and key; on any error keep the current ones
        and log one line.
        """
        try:
            options = load_options(self.cert_path, self.key_path)
        except TLSError as error:
            self._log.error(
                "TLS certificate not reloaded, keeping the old one: {error}",
                error=str(error),
            )
            return False
        self.options = options
        self._log.info(
            "TLS certificate reloaded from {path}, SHA-256 {fingerprint}",
            path=self.cert_path,
            fingerprint=fingerprint(options),
        )
        return True

    def getContext(self) -> SSL.Context:
        return self.options.getContext()

    def serverConnectionForTLS(self, protocol) -> SSL.Connection:
        return self.options.serverConnectionForTLS(protocol)
