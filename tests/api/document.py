"""The OpenAPI document as the tests see it, and the paths not routed yet."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

#: Where the package keeps the document (served at GET /openapi.json).
DOCUMENT_PATH = Path(
    str(resources.files("dkserver.web").joinpath("pages", "openapi.json"))
)

#: Documented paths that no route serves yet: a branch adding an endpoint may
#: document it first and list it here, and the lead empties the set at merge.
#: A path listed here that the app does route fails the route test in
#: test_document.py, so the set cannot go stale.
NOT_YET_ROUTED: frozenset[str] = frozenset()

#: Methods werkzeug adds on its own (HEAD for every GET) or never routes.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}

_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def load() -> dict:
    return json.loads(DOCUMENT_PATH.read_text("utf-8"))


def openapi_path(rule: str) -> str:
    """``/auth/users/<string:user_id>`` -> ``/auth/users/{user_id}``."""
    return _RULE_ARGUMENT.sub(r"{\1}", rule)
