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

from dkserver.auth.secret import SecretError, generate_secret, parse_generated_secret
from dkserver.store.database import Txn
from dkserver.store.settings import SettingsStore, get_or_create_txn

#: Its ``server_settings`` name.
SETTING = "jwt_secret"

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
