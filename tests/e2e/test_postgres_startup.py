"""Starting on PostgreSQL: a wrong URL, an unreachable server, missing rights
or a damaged shared secret stop ``twistd`` with one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg import sql

from tests.support import postgres

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def run_twistd(tmp_path, db: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "dkserver",
            "--db",
            db,
            "--https",
            "127.0.0.1:0",
            "--http",
            "none",
        ],
        cwd=tmp_path,
        env={
            **os.environ,
            "DK_JWT_SECRET_FILE": str(tmp_path / "jwt-secret"),
            "DK_DB_CONNECT_TIMEOUT": "2",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_refusal(proc, *needles: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    # One line names the setting ("DK_DB: why"), from makeService
    # ("dkserver: ...") or as twistd prints an option error ("twistd: ...",
    # after its usage text).
    setting, *rest = needles
    (line,) = [line for line in output.splitlines() if f"{setting}: " in line]
    assert line.startswith("dkserver: ") or "twistd" in line.split(":")[0], line
    assert all(n in line for n in rest), line


def test_malformed_url_names_the_setting(tmp_path):
    proc = run_twistd(tmp_path, "postgresql://u@127.0.0.1:99999/db")
    assert_one_line_refusal(proc, "DK_DB")


def test_unreachable_server_names_the_setting(tmp_path):
    url = f"postgresql://dk@127.0.0.1:{postgres.free_port()}/dk"
    proc = run_twistd(tmp_path, url)
    assert_one_line_refusal(proc, "DK_DB", "cannot connect to PostgreSQL")


def test_url_without_a_secret_setting_starts_on_the_database_s_secret(tmp_path, pg_url):
    # No JWT_SECRET, no DK_JWT_SECRET_FILE: no longer a refusal, the secret
    # is kept in the database (tests/e2e/test_shared_secret.py runs nodes).
    # A damaged one stops startup with one line, before anything listens.
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO server_settings (name, value) VALUES ('jwt_secret', 'zz')"
        )
    proc = run_twistd(tmp_path, pg_url, {"DK_JWT_SECRET_FILE": ""})
    assert_one_line_refusal(proc, "DK_DB", "jwt_secret row of server_settings")
    assert "JWT_SECRET" in proc.stdout + proc.stderr


@pytest.fixture
def stranger(pg_server):
    """A role that may log in but has no rights on dkserver's tables."""
    if os.environ.get(postgres.ENV_URL):
        pytest.skip(f"creates a role; not on the {postgres.ENV_URL} server")
    name, password = f"dk_stranger_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with pg_server.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    yield name, password
    with pg_server.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_role_without_rights_on_the_tables_is_refused(tmp_path, stranger, pg_url):
    name, password = stranger
    _, _, rest = pg_url.partition("@")
    proc = run_twistd(tmp_path, f"postgresql://{name}:{password}@{rest}")
    assert_one_line_refusal(proc, "DK_DB", "lacks rights")
    assert password not in proc.stdout + proc.stderr
