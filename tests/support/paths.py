"""Where test data lives: a copy of ../shared/fixtures kept in the repo, so a
clone tests the same without the shared folder beside it."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
