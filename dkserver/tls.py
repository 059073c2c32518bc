"""TLS settings, certificate reloading, and a self-signed development
certificate on first start.

A new user gets HTTPS with no manual step: when neither the certificate nor
the key exists, one is generated for ``localhost`` and its fingerprint logged
so a client can pin it.  When only one of the two exists, that is an operator
mistake and startup stops instead of overwriting anything.

Every context, the generated certificate's and an operator's alike, allows
TLS 1.2 and 1.3 only, ECDHE key exchange with AEAD ciphers only (forward
secrecy; no static-RSA key exchange, no CBC), no compression and no
renegotiation.  :class:`ServerTLS` hands each new connection the current
context; :meth:`ServerTLS.reload` swaps in a new one (SIGHUP, or a file
change seen by :meth:`ServerTLS.poll`) only once the new pair loads and the
key matches, so open connections keep theirs and a half-written renewal
never breaks the listener.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from dkserver.config import ConfigError

log = Logger()

DEV_CERT_DAYS = 397

#: TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher,
#: for ECDSA and RSA certificates.  TLS 1.3 suites are all (EC)DHE + AEAD
#: and are configured apart from this list by OpenSSL (its defaults kept).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1"

#: A certificate served with less time left than this is logged as a warning.
EXPIRY_WARNING = datetime.timedelta(days=14)

#: Key exchange groups: OpenSSL 3's default list without its finite-field
#: groups (ffdhe2048, ...), which TLS 1.3 would otherwise accept: elliptic
#: curve (EC)DHE only, as for TLS 1.2.
GROUPS = b"X25519:P-256:X448:P-521:P-384"

#: Options on every context beyond Twisted's (which already sets
#: OP_NO_COMPRESSION and OP_CIPHER_SERVER_PREFERENCE): no renegotiation.
EXTRA_OPTIONS = SSL.OP_NO_RENEGOTIATION


def generate_self_signed(cert_path: str, key_path: str) -> None:
    """Write a P-256 key (mode 0600) and a certificate for localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DEV_CERT_DAYS))
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
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_path, key_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def fingerprint(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _file_stamp(path: str) -> tuple | None:
    """What changes when a file is rewritten or replaced (None: missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class LoadedCertificate:
    """A certificate and key that loaded and match, as one context."""

    context: SSL.Context
    fingerprint: str
    not_after: datetime.datetime
    subject: str
    #: The files' stamps when they were read.
    stamps: tuple


def load_certificate(cert_path: str, key_path: str) -> LoadedCertificate:
    """Read the pair into a hardened context; ConfigError names what is wrong."""
    stamps = (_file_stamp(cert_path), _file_stamp(key_path))
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        chain = x509.load_pem_x509_certificates(cert_pem)
    except (OSError, ValueError) as e:
        raise ConfigError(
            "cert", f"cannot read a PEM certificate from {cert_path}: {e}"
        )
    try:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError("key", f"cannot read a PEM private key from {key_path}: {e}")
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
    )
    try:
        context = options.getContext()
    except Exception as e:  # OpenSSL.SSL.Error for a key that does not match
        raise ConfigError("key", f"{key_path} does not match {cert_path}: {e}")
    context.set_options(EXTRA_OPTIONS)
    _set_groups(context)
    leaf = chain[0]
    return LoadedCertificate(
        context=context,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_after=leaf.not_valid_after_utc,
        subject=leaf.subject.rfc4514_string(),
        stamps=stamps,
    )


def _set_groups(context: SSL.Context) -> None:
    """Restrict key exchange to GROUPS.  pyOpenSSL has no public call for
    it, so through its bindings (checked by
    tests/unit/test_library_internals.py); a context without it is refused
    rather than served with finite-field groups."""
    from OpenSSL._util import lib

    if not lib.SSL_CTX_set1_curves_list(context._context, GROUPS):
        raise ConfigError("cert", "OpenSSL refused the key exchange groups")


def prepare_certificate(cert_path: str, key_path: str) -> LoadedCertificate:
    """The pair to serve at startup, generating a development one if both
    files are missing."""
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if not have_cert and not have_key:
        generate_self_signed(cert_path, key_path)
        with open(cert_path, "rb") as f:
            fp = fingerprint(f.read())
        log.warn(
            "generated a self-signed development certificate at {cert_path} "
            "(SHA-256 {fingerprint}); use a real certificate in production",
            cert_path=cert_path,
            fingerprint=fp,
        )
    elif not have_cert:
        raise ConfigError("cert", f"{cert_path} does not exist (but the key does)")
    elif not have_key:
        raise ConfigError("key", f"{key_path} does not exist (but the cert does)")
    return load_certificate(cert_path, key_path)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The HTTPS listener's TLS: each new connection gets the current context.

    A connection keeps the context it started with, so replacing the
    context (a renewed certificate) leaves open WebSockets alone.
    """

    log = Logger()

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        on_loaded: Callable[[LoadedCertificate, bool], None] | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        """``on_loaded(pair, reloaded)`` runs for the first pair and every
        reloaded one, ``on_refused()`` for a replacement that did not load."""
        self.cert_path = cert_path
        self.key_path = key_path
        self._on_loaded = on_loaded
        self._on_refused = on_refused
        self.current = prepare_certificate(cert_path, key_path)
        #: The stamps of the last pair tried (loaded or refused), so a bad
        #: pair is reported once, not on every poll.
        self._tried = self.current.stamps
        #: The stamps seen by the previous poll: a change is acted on once
        #: the files stayed the same for one poll (a renewal writes the
        #: certificate and the key one after the other).
        self._seen = self.current.stamps
        self._announce(self.current, reloaded=False)

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self.current.context, None)

    def _announce(self, loaded: LoadedCertificate, reloaded: bool) -> None:
        verb = "reloaded" if reloaded else "serving"
        self.log.info(
            "TLS: {verb} certificate {subject} (SHA-256 {fingerprint}),"
            " valid until {not_after}",
            verb=verb,
            subject=loaded.subject,
            fingerprint=loaded.fingerprint,
            not_after=loaded.not_after.isoformat(),
        )
        left = loaded.not_after - datetime.datetime.now(datetime.UTC)
        if left <= datetime.timedelta(0):
            self.log.error(
                "TLS: certificate {fingerprint} expired on {not_after}",
                fingerprint=loaded.fingerprint,
                not_after=loaded.not_after.isoformat(),
            )
        elif left < EXPIRY_WARNING:
            self.log.warn(
                "TLS: certificate {fingerprint} expires in {days} days",
                fingerprint=loaded.fingerprint,
                days=left.days,
            )
        if self._on_loaded is not None:
            self._on_loaded(loaded, reloaded)

    def reload(self) -> bool:
        """Load the files again; True if the new pair is now served.  A pair
        that does not load or match is logged and the old one kept."""
        try:
            loaded = load_certificate(self.cert_path, self.key_path)
        except ConfigError as e:
            self._tried = (_file_stamp(self.cert_path), _file_stamp(self.key_path))
            self.log.error(
                "TLS: not reloading the certificate ({error}); still serving"
                " SHA-256 {fingerprint}",
                error=str(e),
                fingerprint=self.current.fingerprint,
            )
            if self._on_refused is not None:
                self._on_refused()
            return False
        self._tried = loaded.stamps
        self.current = loaded
        self._announce(loaded, reloaded=True)
        return True

    def poll(self) -> None:
        """Reload when the files changed and have stayed so since the last
        poll (run every few seconds from a timer)."""
        stamps = (_file_stamp(self.cert_path), _file_stamp(self.key_path))
        settled, self._seen = stamps == self._seen, stamps
        if settled and stamps != self._tried:
            self.reload()


def load_context_factory(cert_path: str, key_path: str) -> ServerTLS:
    """The HTTPS listener's TLS (kept for callers of the old name)."""
    return ServerTLS(cert_path, key_path)
