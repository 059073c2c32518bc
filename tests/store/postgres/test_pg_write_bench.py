"""bench/pg_write.py: every strategy commits the batch and names its ids in
row order (what the group writer needs), and the bench runs end to end."""

from __future__ import annotations

import json

import psycopg
import pytest

from bench import pg_write
from dkserver.store.url import parse_database_url


@pytest.mark.parametrize("strategy", sorted(pg_write.STRATEGIES))
def test_strategy_returns_one_id_per_row_in_row_order(pg_url, strategy):
    batch = pg_write.rows(pg_write.make_messages(57))
    with psycopg.connect(parse_database_url(pg_url).conninfo) as conn:
        conn.execute(
            "INSERT INTO users (user_id, username, public_key) VALUES"
            " ('alice', 'a', 'k'), ('bob', 'b', 'k')"
        )
        conn.commit()
        first = pg_write.STRATEGIES[strategy](conn, batch[:7])
        ids = pg_write.STRATEGIES[strategy](conn, batch[7:])
        conn.rollback()  # nothing to undo: each batch committed itself
        stored = conn.execute(
            "SELECT id, content, timestamp, received_ns FROM messages ORDER BY id"
        ).fetchall()
    assert first + ids == [r[0] for r in stored]
    assert len(set(first + ids)) == 57
    assert [(r[1], r[2], r[3]) for r in stored] == [(b[3], b[2], b[8]) for b in batch]


def test_bench_runs_in_a_scratch_schema_and_drops_it(pg_url, capsys):
    argv = ["--db", pg_url, "--sizes", "1,4", "--batches", "3", "--repeat", "1"]
    assert pg_write.main(argv) == 0
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("BENCH_JSON ")]
    result = json.loads(line.removeprefix("BENCH_JSON "))["pg_write"]
    for table in ("wall_us", "cpu_us"):
        assert set(result[table]) == {
            *(f"pg {s} sc={c}" for s in pg_write.STRATEGIES for c in ("on", "off")),
            "sqlite sync=FULL",
            "sqlite sync=NORMAL",
        }
        for cells in result[table].values():
            assert set(cells) == {"1", "4"}
            assert all(v > 0 for v in cells.values())  # a local server: CPU seen
    assert "| µs per message, wall | batch 1 | batch 4 |" in out
    with psycopg.connect(parse_database_url(pg_url).conninfo) as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dk_bench_%'"
        ).fetchall()
        assert schemas == []
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)


@pytest.mark.parametrize(
    "argv",
    [
        ["--db", "/tmp/not-postgres.db"],
        ["--db", "postgresql://dk@db/"],
        ["--sizes", "0"],
        ["--sizes", "ten"],
        ["--strategies", "magic"],
        ["--batches", "0"],
    ],
)
def test_bench_bad_arguments_exit_2(argv, capsys):
    assert pg_write.main(argv) == 2
    assert "pg_write:" in capsys.readouterr().err
