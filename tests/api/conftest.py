"""Unique test ids for schemathesis's generated tests.

schemathesis 4 names each generated test ``test_x[GET /path]``, but under
pytest 9.2 (structured node ids) they all get the function's node id,
``...::test_x``.  pytest-xdist keys its file scheduling by node id, so under
``-n`` the 30 operations collapsed into one and 29 silently never ran, and
no report could say which operation failed.  Each item gets the id its name
says, as any parametrized test has (test_schemathesis checks it)."""

from __future__ import annotations

import pytest
from schemathesis.pytest.plugin import SchemathesisFunction

#: The generated tests' node ids, before any ``-k`` deselection.
GENERATED_IDS = pytest.StashKey[list]()


def _set_node_id(item, nodeid: str) -> None:
    try:  # pytest >= 9.2 keeps the id structured, in ``_id``
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # earlier pytest: a string, in ``_nodeid``
        item._nodeid = nodeid
    else:
        item._id = coerce_node_id(nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    generated = config.stash.setdefault(GENERATED_IDS, [])
    for item in items:
        if isinstance(item, SchemathesisFunction):
            wanted = f"{item.parent.nodeid}::{item.name}"
            if item.nodeid != wanted:
                _set_node_id(item, wanted)
            generated.append(item.nodeid)
