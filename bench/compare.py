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


def _figures(results: dict) -> Iterator[_Figure]:
    """(name, higher is better, value) for each figure a run has."""
    for x in results.get("logins") or []:
        c = x["clients"]
        yield (
            f"logins/s, {c} clients",
            True,
            lambda r, c=c: _at(r, "logins", "clients", c, "logins_per_s"),
        )
        yield (
            f"server µs/login, {c} clients",
            False,
            lambda r, c=c: _at(r, "logins", "clients", c, "server_cpu_us_per_login"),
        )
        yield (
            f"db µs/login, {c} clients",
            False,
            lambda r, c=c: _at(r, "logins", "clients", c, "db_cpu_us_per_login"),
        )
    relay = (results.get("relay") or {}).get("dk") or []
    if relay:
        yield "relay msgs/s, best", True, _relay_best
    for x in relay:
        n = x["pairs"]
        yield (
            f"relay msgs/s, {n} pairs",
            True,
            lambda r, n=n: _relay(r, n, "msgs_per_s"),
        )
        yield (
            f"relay server µs/msg, {n} pairs",
            False,
            lambda r, n=n: _relay(r, n, "server_cpu_us_per_msg"),
        )
        yield (
            f"relay db µs/msg, {n} pairs",
            False,
            lambda r, n=n: _relay(r, n, "db_cpu_us_per_msg"),
        )
        yield f"relay p99 ms, {n} pairs", False, lambda r, n=n: _relay(r, n, "p99_ms")
        yield (
            f"relay p99 ms at half rate, {n} pairs",
            False,
            lambda r, n=n: _relay(r, n, "p99_ms", "dk_half_rate"),
        )
    for x in results.get("backlog") or []:
        m = x["messages"]
        yield (
            f"backlog {m} drain s",
            False,
            lambda r, m=m: _at(r, "backlog", "messages", m, "drain_s"),
        )
        yield (
            f"backlog {m} msgs/s",
            True,
            lambda r, m=m: _at(r, "backlog", "messages", m, "msgs_per_s"),
        )
        yield (
            f"backlog {m} db µs/msg",
            False,
            lambda r, m=m: _at(r, "backlog", "messages", m, "db_cpu_us_per_msg"),
        )


def _at(results: dict, scenario: str, key: str, value, field: str):
    for x in results.get(scenario) or []:
        if x[key] == value:
            return x.get(field)
    return None


def _relay(results: dict, pairs: int, field: str, kind: str = "dk"):
    for x in (results.get("relay") or {}).get(kind) or []:
        if x["pairs"] == pairs:
            return x.get(field)
    return None


def _relay_best(results: dict) -> float | None:
    rates = [x["msgs_per_s"] for x in (results.get("relay") or {}).get("dk") or []]
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
    ratio = (cmp.get("relay_postgresql_of_sqlite") or {}).get("of_medians")
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
            f"relay on {relay['postgresql']} / {relay['sqlite']}: "
            f"{relay['of_medians']} (medians), per round {relay['per_round']}"
        )
    for key, v in met.items():
        lines.append(
            f"target {key}: {v['value']} (wanted {v['target']}): "
            + ("met" if v["met"] else "NOT met")
        )
    return "\n".join(lines)
