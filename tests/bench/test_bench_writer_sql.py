"""``python -m bench.writer_sql`` runs the writer's transaction per variant
on real files and prints a row each; bad arguments are a one-line error,
exit 2."""

from __future__ import annotations

from bench import writer_sql
from tests.bench.runmodule import run_module


def _run(*args: str):
    return run_module("bench.writer_sql", *args)


def test_it_prints_every_variant():
    done = _run(
        "--messages", "300", "--batch", "64", "--sessions", "20", "--rounds", "1"
    )
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split() == ["variant", "wall", "µs/msg", "cpu", "µs/msg"]
    names = [" ".join(r.split()[:-2]) for r in rows[1:4]]
    assert names == list(writer_sql.VARIANTS)
    for row in rows[1:4]:
        assert all(float(x) > 0 for x in row.split()[-2:])
    assert rows[4].startswith("(batch 64, 20 sessions, 300 messages")


def test_each_variant_stores_every_message(tmp_path):
    """A variant that stored fewer messages than it submitted stops."""
    for name in writer_sql.VARIANTS:
        wall, cpu = writer_sql.run_variant(str(tmp_path), name, 130, 64, 7)
        assert wall > 0 and cpu > 0


def test_bad_arguments_are_refused():
    done = _run("--batch", "0")
    assert done.returncode == 2
    assert "--batch" in done.stderr.splitlines()[-1]
