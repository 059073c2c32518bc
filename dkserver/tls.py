"""TLS settings, and a self-signed development certificate on first start.

A new user gets HTTPS with no manual step: when neither the certificate nor
the key exists, one is generated for ``localhost`` and its fingerprint logged
so a client can pin it.  When only one of the two exists, that is an operator
mistake and startup stops instead of overwriting anything.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.logger import Logger

from dkserver.config import ConfigError

log = Logger()

DEV_CERT_DAYS = 397


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


def load_context_factory(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Certificate options for the HTTPS site: TLS 1.2 or newer only."""
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
    )
    try:
        options.getContext()
    except Exception as e:  # OpenSSL.SSL.Error for a key that does not match
        raise ConfigError("key", f"{key_path} does not match {cert_path}: {e}")
    return options
