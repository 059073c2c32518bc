"""The JWT HMAC secret: from ``JWT_SECRET``, or generated once and kept.

The original server generated a fresh secret on every start when
``JWT_SECRET`` was unset, logging every user out at each restart.  dkserver
writes the generated secret beside the database (mode 0600) and reads it back;
on PostgreSQL without a secret file it keeps it in the database instead
(dkserver.cluster.secret), so every node sharing the database has it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

from twisted.logger import Logger

#: Below this, startup stops: a guessable HMAC key forges any user's token.
MIN_SECRET_BYTES = 16
#: RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
RECOMMENDED_SECRET_BYTES = 32

_log = Logger()


class SecretError(ValueError):
    """The secret cannot be used; the message is one line for the operator."""


def load_or_create_secret(
    env_value: str | None, secret_path: str
) -> tuple[bytes, list[str]]:
    """Return the HMAC secret and warnings for the operator.

    ``env_value`` is ``JWT_SECRET``; empty counts as unset, as with Go's
    ``os.Getenv``.  Its bytes are used as-is (the original does
    ``[]byte(JWT_SECRET)``); ``surrogateescape`` gives back the exact
    environment bytes even when they are not UTF-8.
    """
    warnings: list[str] = []
    if env_value:
        secret = env_value.encode("utf-8", "surrogateescape")
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretError(
                f"JWT_SECRET is {len(secret)} bytes long; at least "
                f"{MIN_SECRET_BYTES} are required ({RECOMMENDED_SECRET_BYTES} or "
                "more recommended), or unset it to use a generated secret"
            )
        if len(secret) < RECOMMENDED_SECRET_BYTES:
            warnings.append(
                f"JWT_SECRET is only {len(secret)} bytes long; RFC 7518 section 3.2 "
                f"asks for at least {RECOMMENDED_SECRET_BYTES} bytes for HS256"
            )
        return secret, warnings

    try:
        return _read_secret_file(secret_path), warnings
    except FileNotFoundError:
        pass
    return _create_secret_file(secret_path), warnings


def _read_secret_file(path: str) -> bytes:
    """Read a secret file, refusing one that others could read or that is damaged.

    Like ssh with a private key, a group- or world-accessible file stops
    startup rather than being silently trusted: anyone who read it can forge
    tokens for every user.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SecretError(f"cannot read the JWT secret file {path}: {e.strerror or e}")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SecretError(f"the JWT secret file {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise SecretError(
                f"the JWT secret file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        text = f.read(1024)
    secret = parse_generated_secret(text)
    if secret is None:
        raise SecretError(
            f"the JWT secret file {path} does not hold "
            f"{RECOMMENDED_SECRET_BYTES * 2} hex digits; delete it to generate "
            "a new secret (this logs every user out) or set JWT_SECRET"
        )
    return secret


def generate_secret() -> bytes:
    return secrets.token_bytes(RECOMMENDED_SECRET_BYTES)


def parse_generated_secret(text: bytes | str) -> bytes | None:
    """A secret as dkserver stores one it generated (hex), or None if damaged."""
    try:
        if isinstance(text, bytes):
            text = text.decode("ascii")
        secret = bytes.fromhex(text.strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return secret if len(secret) == RECOMMENDED_SECRET_BYTES else None


def _create_secret_file(path: str) -> bytes:
    """Generate a secret and publish it atomically with mode 0600.

    The file is written under a temporary name and then hard-linked into
    place, which fails if the name exists: if two processes race, both end
    up using the winner's secret instead of one silently replacing the other.
    """
    secret = generate_secret()
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # independent of the umask
            os.write(fd, secret.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret_file(path)
        except OSError:
            # A filesystem without hard links: a plain atomic rename.
            os.replace(tmp, path)
    except OSError as e:
        raise SecretError(f"cannot write the JWT secret file {path}: {e.strerror or e}")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_directory(directory)
    _log.info("generated a new JWT secret in {path}", path=path)
    return secret


def _fsync_directory(directory: str) -> None:
    # Makes the new directory entry durable; best effort, not all systems allow it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- rotation ------------------------------------------------------------------
#
# A rotation makes a new secret current and keeps the old one, with the end
# of its grace, where the previous secrets live: in the file ``<secret
# file>.previous`` beside the secret file (one ``<hex> <unix seconds>`` per
# line), or in the ``jwt_secret_previous`` row (dkserver.cluster.secret).
# The secret file itself keeps its format, so an older dkserver can still
# read it.

#: Previous secrets: (secret, Unix seconds until which it still verifies).
Previous = list[tuple[bytes, float]]


def previous_path(secret_path: str) -> str:
    return secret_path + ".previous"


def format_previous(previous: Previous) -> str:
    return "".join(f"{secret.hex()} {until:.3f}\n" for secret, until in previous)


def parse_previous(text: str, where: str) -> Previous:
    previous: Previous = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        secret = parse_generated_secret(parts[0]) if len(parts) == 2 else None
        try:
            until = float(parts[1]) if secret is not None else None
        except ValueError:
            until = None
        if secret is None or until is None:
            raise SecretError(
                f"{where} is damaged (expected lines of <64 hex digits> <unix "
                "time>); delete it to end the grace of the previous secrets"
            )
        previous.append((secret, until))
    return previous


def read_previous_file(secret_path: str) -> Previous:
    """The previous secrets kept beside ``secret_path``; none if no file."""
    path = previous_path(secret_path)
    try:
        with open(path, encoding="ascii") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise SecretError(
                    f"the JWT secret file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
                )
            text = f.read(64 * 1024)
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise SecretError(f"cannot read the JWT secret file {path}: {e}")
    return parse_previous(text, f"the JWT secret file {path}")


def still_valid(previous: Previous, now: float) -> Previous:
    return [(secret, until) for secret, until in previous if until > now]


def load_keys(
    env_value: str | None, secret_path: str
) -> tuple[bytes, Previous, list[str]]:
    """The current secret, the previous ones still in their grace (none
    with ``JWT_SECRET``, which the operator rotates by changing it), and
    warnings."""
    secret, warnings = load_or_create_secret(env_value, secret_path)
    previous = [] if env_value else read_previous_file(secret_path)
    return secret, previous, warnings


def rotate_secret_file(secret_path: str, grace: float, now: float) -> bytes:
    """Make a new secret current in ``secret_path``; the old one verifies
    for ``grace`` seconds more.  Returns the new secret.

    The previous file is written first: a crash between the two steps
    leaves the old secret current and also listed as previous, harmless.
    """
    current = _read_secret_file(secret_path)
    previous = still_valid(read_previous_file(secret_path), now)
    previous = [(s, u) for s, u in previous if s != current]
    if grace > 0:
        previous.insert(0, (current, now + grace))
    new = generate_secret()
    _replace_file(previous_path(secret_path), format_previous(previous).encode())
    _replace_file(secret_path, new.hex().encode("ascii") + b"\n")
    return new


def _replace_file(path: str, data: bytes) -> None:
    tmp = f"{path}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise SecretError(f"cannot write the JWT secret file {path}: {e.strerror or e}")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))
