"""Read a kosoku/Autobahn ``index.json`` and summarise it per section.

``python -m tests.conformance.report REPORT_DIR`` prints the Markdown table
used in docs/conformance.md.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

#: Verdicts that count as conformant, for both behavior and behaviorClose.
ACCEPTED = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED")


def load_index(report_dir: str) -> dict[str, dict]:
    """Case id -> index entry, for the one agent in the report."""
    with open(os.path.join(report_dir, "index.json")) as f:
        index = json.load(f)
    cases: dict[str, dict] = {}
    for agent_cases in index.values():
        cases.update(agent_cases)
    return cases


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def section(case_id: str) -> int:
    return case_key(case_id)[0]


def verdict(entry: dict) -> str:
    """One verdict per case: FAILED unless both verdicts are accepted.

    A case whose behavior and behaviorClose are both accepted counts under
    the weaker of the two (INFORMATIONAL < NON-STRICT < OK).
    """
    verdicts = {entry["behavior"], entry.get("behaviorClose", "OK")}
    if not verdicts <= ACCEPTED:
        return "FAILED"
    for name in ("INFORMATIONAL", "NON-STRICT"):
        if name in verdicts:
            return name
    return "OK"


def failures(report_dir: str) -> list[str]:
    """One line per case that is not conformant, with the report's reasons."""
    lines = []
    for case_id, entry in sorted(
        load_index(report_dir).items(), key=lambda kv: case_key(kv[0])
    ):
        if verdict(entry) != "FAILED":
            continue
        detail: dict = {}
        path = os.path.join(report_dir, entry.get("reportfile", ""))
        if entry.get("reportfile") and os.path.exists(path):
            with open(path) as f:
                detail = json.load(f)
        lines.append(
            f"{case_id}: behavior={entry['behavior']} "
            f"behaviorClose={entry.get('behaviorClose')} "
            f"remoteCloseCode={entry.get('remoteCloseCode')} -- "
            f"{detail.get('result', '')} / {detail.get('resultClose', '')} "
            f"({detail.get('description', '')})"
        )
    return lines


def summary(cases: dict[str, dict]) -> dict[int, Counter]:
    per_section: dict[int, Counter] = {}
    for case_id, entry in cases.items():
        per_section.setdefault(section(case_id), Counter())[verdict(entry)] += 1
    return dict(sorted(per_section.items()))


def markdown_table(cases: dict[str, dict]) -> str:
    rows = ["| Section | Cases | " + " | ".join(COLUMNS) + " |"]
    rows.append("|---:|---:|" + "---:|" * len(COLUMNS))
    total: Counter = Counter()
    for sec, counts in summary(cases).items():
        total.update(counts)
        cells = " | ".join(str(counts[c]) for c in COLUMNS)
        rows.append(f"| {sec} | {sum(counts.values())} | {cells} |")
    cells = " | ".join(f"**{total[c]}**" for c in COLUMNS)
    rows.append(f"| **all** | **{sum(total.values())}** | {cells} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table(load_index(sys.argv[1])))
