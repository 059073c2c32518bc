"""``python -m bench.frames`` runs both readers over the same frames and
prints a row per frame kind; bad arguments are a one-line error, exit 2."""

from __future__ import annotations

from tests.bench.runmodule import run_module


def _run(*args: str):
    return run_module("bench.frames", *args)


def test_it_reads_every_frame_with_both_readers_and_prints_the_ratio():
    done = _run("--frames", "200", "--rounds", "1", "--size", "300")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split() == ["frame", "autobahn", "µs", "whole", "µs", "ratio"]
    assert rows[1].startswith("text frame, 300 B")
    assert rows[2].startswith("pong, 8 B")
    for row in rows[1:]:
        autobahn, whole, ratio = (float(x) for x in row.split()[-3:])
        assert autobahn > 0 and whole > 0
        assert abs(ratio - whole / autobahn) < 0.01


def test_bad_arguments_are_refused():
    done = _run("--size", "70000")
    assert done.returncode == 2
    assert "--size" in done.stderr.splitlines()[-1]
