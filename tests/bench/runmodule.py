"""Running a bench module the way its README says: ``python -m bench.X``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_module(
    module: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from the checkout, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
