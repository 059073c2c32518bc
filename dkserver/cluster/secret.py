"""The JWT secret kept in the database, so the nodes of a cluster need no
shared setting: a token one node issues verifies on every other.

Used on PostgreSQL when neither ``JWT_SECRET`` nor ``DK_JWT_SECRET_FILE`` is
set (`Config.secret_in_database`).  The first node to start stores a
generated secret in ``server_settings``; every later one, and every one
starting at the same moment, reads that one back (see
dkserver.store.settings).  It is stored as the secret file holds it: 64 hex
digits.  Anyone who can read the table can forge tokens, as with the file;
the database's own access control guards it.
"""

from __future__ import annotations

from twisted.logger import Logger

from dkserver.auth.secret import (
    Previous,
    SecretError,
    format_previous,
    generate_secret,
    parse_generated_secret,
    parse_previous,
    still_valid,
)
from dkserver.store.accounts import SECRET_VERSION, bump_txn
from dkserver.store.database import Txn
from dkserver.store.settings import SettingsStore, get_or_create_txn

#: Its ``server_settings`` name.
SETTING = "jwt_secret"
#: The previous secrets, as ``<secret file>.previous`` holds them.
PREVIOUS_SETTING = "jwt_secret_previous"

_log = Logger()


async def database_secret(settings: SettingsStore) -> bytes:
    """The cluster's secret, generated and stored if this node is the first."""
    candidate = generate_secret().hex()
    return _checked(await settings.get_or_create(SETTING, candidate), candidate)


def preflight_secret_txn(txn: Txn) -> None:
    """Blocking, before the reactor runs (`preflight_database`'s check): the
    secret exists and is usable, or startup stops with one line."""
    candidate = generate_secret().hex()
    _checked(get_or_create_txn(txn, SETTING, candidate), candidate)


def _checked(stored: str, candidate: str) -> bytes:
    secret = parse_generated_secret(stored)
    if secret is None:
        raise SecretError(
            f"the {SETTING} row of server_settings does not hold 64 hex digits; "
            "delete the row to generate a new secret (this logs every user "
            "out) or set JWT_SECRET"
        )
    if stored == candidate:
        _log.info("generated a new JWT secret in the database (server_settings)")
    return secret


async def database_keys(settings: SettingsStore) -> tuple[bytes, Previous]:
    """The current secret and the previous ones (still in their grace or
    not: the token issuer checks the deadline)."""
    current = await database_secret(settings)
    text = await settings.get(PREVIOUS_SETTING)
    return current, parse_previous(text or "", f"the {PREVIOUS_SETTING} row")


def rotate_secret_txn(txn: Txn, grace: float, now: float) -> bytes:
    """Make a new secret current in the database; the old one verifies for
    ``grace`` seconds more.  Every node reloads it at its next poll
    (``secret_version``)."""
    candidate = generate_secret().hex()
    current = _checked(get_or_create_txn(txn, SETTING, candidate), candidate)
    txn.execute("SELECT value FROM server_settings WHERE name = ?", (PREVIOUS_SETTING,))
    row = txn.fetchone()
    previous = still_valid(
        parse_previous(row[0] if row else "", f"the {PREVIOUS_SETTING} row"), now
    )
    if grace > 0:
        previous.insert(0, (current, now + grace))
    new = generate_secret()
    for name, value in (
        (SETTING, new.hex()),
        (PREVIOUS_SETTING, format_previous(previous)),
    ):
        txn.execute(
            "INSERT INTO server_settings (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
    bump_txn(txn, SECRET_VERSION)
    return new
