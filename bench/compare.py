"""Backends side by side: the runs of one bench invocation, per figure.

Every round runs each backend once (``--repeat``); a figure's value for a
backend is the median over its rounds, and the ratio column compares each
backend with the first ``--db``.  Per-round ratios are kept too: the two runs
of a round are minutes apart, so they share most of the machine's noise.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator

#: The issue's target: relay on PostgreSQL at >= 0.7 of SQLite, same run.
RELAY_RATIO_TARGET = 0.7

_Figure = tuple[str, bool, Callable[[dict], float | None]]


#: Per scenario: where its runs are (scenario, and the relay's kind of run),
#: the field that tells its runs apart, how to name it, and the figures.
_FIGURES = (
    (
        ("logins", None),
        "clients",
        "{} clients",
        (
            ("logins/s", "logins_per_s", True),
            ("logins, of the ceiling's", "of_ceiling", True),
            ("server µs/login", "server_cpu_us_per_login", False),
            ("db µs/login", "db_cpu_us_per_login", False),
        ),
    ),
    (
        ("relay", "dk"),
        "pairs",
        "{} pairs",
        (
            ("relay msgs/s", "msgs_per_s", True),
            ("relay server µs/msg", "server_cpu_us_per_msg", False),
            ("relay db µs/msg", "db_cpu_us_per_msg", False),
            ("relay p99 ms", "p99_ms", False),
            ("relay msgs/s of the ceiling's", "fraction_of_ceiling", True),
        ),
    ),
    (
        ("relay", "dk_half_rate"),
        "pairs",
        "{} pairs",
        (
            ("relay p99 ms at half rate", "p99_ms", False),
            ("relay p99 at half rate of the ceiling's", "p99_of_ceiling", False),
        ),
    ),
    (
        ("reads", None),
        "readers",
        "{} readers",
        (
            ("relay p99 ms, no readers", "quiet_p99_ms", False),
            ("relay p99 ms, readers looping", "busy_p99_ms", False),
            ("relay max ms, readers looping", "busy_max_ms", False),
            ("public reads/s (any status)", "reads_per_s", True),
            ("/active-users 200s/s", "active_users_ok_per_s", True),
            (
                "/active-users server CPU ms/request",
                "active_users_server_cpu_ms",
                False,
            ),
            ("readers' own CPU, cores", "readers_cpu_cores", False),
        ),
    ),
    (
        ("backlog", None),
        "messages",
        "{} messages",
        (
            ("backlog drain s", "drain_s", False),
            ("backlog msgs/s", "msgs_per_s", True),
            ("backlog db µs/msg", "db_cpu_us_per_msg", False),
        ),
    ),
)


#: Figures only runs with the ceiling have.
_CEILING_RATIOS = ("fraction_of_ceiling", "p99_of_ceiling")


def _runs(results: dict, where: tuple[str, str | None]) -> list[dict]:
    scenario, kind = where
    found = results.get(scenario) or ([] if kind is None else {})
    return (found.get(kind) or []) if kind is not None else found


def _figures(results: dict) -> Iterator[_Figure]:
    """(name, higher is better, value) for each figure a run has."""
    if any(x.get("msgs_per_s") for x in _runs(results, ("relay", "dk"))):
        yield "relay msgs/s, best", True, _relay_best
    for where, key, label, figures in _FIGURES:
        for x in _runs(results, where):
            for name, field, higher in figures:
                if field in _CEILING_RATIOS and field not in x:
                    continue  # a run without the ceiling (--no-ceiling)

                def get(r, where=where, key=key, at=x[key], field=field):
                    for y in _runs(r, where):
                        if y[key] == at:
                            return y.get(field)
                    return None

                yield f"{name}, {label.format(x[key])}", higher, get


def _relay_best(results: dict) -> float | None:
    rates = [x["msgs_per_s"] for x in _runs(results, ("relay", "dk"))]
    rates = [r for r in rates if r]
    return max(rates) if rates else None


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def compare(runs: list[dict], meta: dict) -> dict:
    labels = list(dict.fromkeys(r["backend"] for r in runs))
    kinds = {r["backend"]: r["kind"] for r in runs}
    by_label = {label: [r for r in runs if r["backend"] == label] for label in labels}
    figures: dict[str, _Figure] = {}
    for r in runs:
        for fig in _figures(r["results"]):
            figures.setdefault(fig[0], fig)
    rows = []
    for name, higher, get in figures.values():
        values = {
            label: [get(r["results"]) for r in by_label[label]] for label in labels
        }
        if all(v is None for vs in values.values() for v in vs):
            continue  # e.g. db CPU when no backend has a server of its own here
        medians = {label: _median(vs) for label, vs in values.items()}
        base = medians[labels[0]]
        ratios = {
            label: round(m / base, 3) if m is not None and base else None
            for label, m in medians.items()
            if label != labels[0]
        }
        rows.append(
            {
                "figure": name,
                "higher_is_better": higher,
                "values": values,
                "median": medians,
                "ratio_to_first": ratios,
            }
        )
    out: dict = {"backends": labels, "kinds": kinds, "rows": rows}
    sqlite = next((x for x in labels if kinds[x] == "sqlite"), None)
    pg = next((x for x in labels if kinds[x] == "postgresql"), None)
    if sqlite and pg:
        # Round by round: each ratio compares two runs close in time.
        per_round = []
        for a, b in zip(by_label[sqlite], by_label[pg], strict=False):
            va, vb = _relay_best(a["results"]), _relay_best(b["results"])
            per_round.append(round(vb / va, 3) if va and vb else None)
        best = next((r for r in rows if r["figure"] == "relay msgs/s, best"), None)
        if best is not None:
            a, b = best["median"][sqlite], best["median"][pg]
            out["relay_postgresql_of_sqlite"] = {
                "sqlite": sqlite,
                "postgresql": pg,
                "of_medians": round(b / a, 3) if a and b else None,
                "per_round": per_round,
                "median_of_rounds": _median(per_round),
            }
    return out


def targets(cmp: dict) -> dict:
    """The relay target on the paired ratio: the median over rounds of
    PostgreSQL/SQLite within each round, whose two runs share the machine's
    load of those minutes (the ratio of the medians mixes rounds)."""
    ratio = (cmp.get("relay_postgresql_of_sqlite") or {}).get("median_of_rounds")
    if ratio is None:
        return {}
    return {
        "relay_postgresql_of_sqlite": {
            "value": ratio,
            "target": f">= {RELAY_RATIO_TARGET}",
            "met": ratio >= RELAY_RATIO_TARGET,
        }
    }


def render(cmp: dict, met: dict) -> str:
    from bench.runner import _table

    labels = cmp["backends"]
    header = ["figure (median of rounds)", *labels]
    header += [f"{x} / {labels[0]}" for x in labels[1:]]
    rows = []
    for r in cmp["rows"]:
        rows.append(
            [
                r["figure"],
                *(r["median"][x] for x in labels),
                *(r["ratio_to_first"].get(x) for x in labels[1:]),
            ]
        )
    lines = _table("backends side by side", header, rows)
    relay = cmp.get("relay_postgresql_of_sqlite")
    if relay:
        lines.append(
            f"relay msgs/s, best, {relay['postgresql']} / {relay['sqlite']}: "
            f"per round {relay['per_round']}, median {relay['median_of_rounds']}"
            f"; ratio of the medians {relay['of_medians']}"
        )
    for key, v in met.items():
        lines.append(
            f"target {key}: {v['value']} (wanted {v['target']}): "
            + ("met" if v["met"] else "NOT met")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.compare FILE``: the side-by-side table again, from
    the ``BENCH_JSON`` line of a saved run (e.g. docs/bench/*.txt)."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.compare FILE", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as f:
            line = next(x for x in f if x.startswith("BENCH_JSON "))
        results = json.loads(line.removeprefix("BENCH_JSON "))
        runs = results["runs"]
    except (OSError, StopIteration, ValueError, KeyError) as e:
        print(f"bench.compare: no bench run in {args[0]}: {e!r}", file=sys.stderr)
        return 2
    cmp = compare(runs, results["meta"])
    print(render(cmp, targets(cmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
