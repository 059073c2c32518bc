"""``dkserver prune`` on each backend: exit codes, --dry-run, --json, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from dkserver.store import Store
from tests.store.test_store_retention import DAY, msg

COMMAND = [sys.executable, "-m", "dkserver.cli", "prune"]


def prune(*args: str, **env: str):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DK_")}
    environ.update(env)
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=120, env=environ
    )


async def _old_messages(db_path: str) -> None:
    """Three direct messages delivered 40 days ago, one today, one pending."""
    now = time.time_ns()
    store = await Store.open(db_path, reactor)
    try:
        for name in ("alice", "bob"):
            await store.users.create(name, name, "k")
        old = await store.messages.add_many([msg("bob", now - 41 * DAY)] * 3)
        await store.messages.mark_delivered(old, delivered_ns=now - 40 * DAY)
        new = await store.messages.add_many([msg("bob", now)] * 2)
        await store.messages.mark_delivered(new[:1], delivered_ns=now)
    finally:
        await store.close()


def _counts(sql, db_path):
    return (
        sql(db_path, "SELECT COUNT(*) FROM messages")[0][0],
        sql(db_path, "SELECT COUNT(*) FROM stats_daily")[0][0],
    )


@pytest_twisted.ensureDeferred
async def test_dry_run_changes_nothing_and_a_prune_deletes(db_path, sql):
    await _old_messages(db_path)

    dry = prune("--db", db_path, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert report["would_delete"]["delivered"] == 3
    assert report["would_delete"]["pending"] == 0
    assert _counts(sql, db_path) == (5, 0)  # nothing changed

    text = prune("--db", db_path, "--dry-run")
    assert text.returncode == 0 and "3 delivered direct messages" in text.stdout
    assert _counts(sql, db_path) == (5, 0)

    done = prune("--json", "--batch", "2", DK_DB=db_path)  # found via DK_DB
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dry_run"] is False
    assert report["deleted"] == {"messages": 3}
    assert report["batches"] >= 2 and report["busy"] is False
    assert _counts(sql, db_path)[0] == 2

    again = prune("--db", db_path)
    assert again.returncode == 0 and "nothing to delete" in again.stdout


@pytest_twisted.ensureDeferred
async def test_retention_settings_come_from_the_environment(db_path, sql):
    await _old_messages(db_path)
    off = prune("--db", db_path, "--json", DK_RETENTION_DAYS="off")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["deleted"] == {}
    assert json.loads(off.stdout)["cutoffs"]["delivered"] is None
    longer = prune("--db", db_path, "--json", DK_RETENTION_DAYS="45")
    assert json.loads(longer.stdout)["deleted"] == {}
    assert _counts(sql, db_path)[0] == 5


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--batch", "0"), {}, "--batch: must be at least 1"),
        (("--batch", "many"), {}, "is not a whole number"),
        (("--bogus",), {}, "unrecognized arguments: --bogus"),
        ((), {"DK_RETENTION_DAYS": "0.5"}, "DK_RETENTION_DAYS: must be at least 1"),
        ((), {"DK_STATS_ROLLUP_DAYS": "3"}, "DK_STATS_ROLLUP_DAYS: must be at least 7"),
        ((), {"DK_PENDING_MAX_DAYS": "soon"}, "DK_PENDING_MAX_DAYS: not a number"),
        ((), {"DK_PRUNE_BATCH": "-1"}, "DK_PRUNE_BATCH: must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, env, expected):
    db = tmp_path / "dk.db"
    result = prune("--db", str(db), *args, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_file_is_refused_not_created(tmp_path):
    db = tmp_path / "absent.db"
    result = prune("--db", str(db))
    assert result.returncode == 2
    assert result.stderr.strip() == f"prune: no database file at {db}"
    assert not db.exists()


@pytest.mark.sqlite_only
def test_a_newer_schema_is_refused(db_path, sql):
    sql(db_path, "PRAGMA user_version = 99")
    result = prune("--db", db_path, "--dry-run")
    assert result.returncode == 2
    assert "has schema version 99" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_names_the_options():
    result = subprocess.run(
        [*COMMAND, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in ("--dry-run", "--json", "--db", "--batch"):
        assert option in result.stdout
