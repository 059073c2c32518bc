"""port-db's one-line report survives psycopg's rollback warnings, which
come from two loggers (a filter on "psycopg" does not see its children's)."""

from __future__ import annotations

import logging

from dkserver.admin.port_db import quiet_rollback_warnings


def test_rollback_warnings_of_both_psycopg_loggers_are_dropped(caplog):
    quiet_rollback_warnings()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("psycopg").warning(
            "error ignored in rollback on %s: %s", "<conn>", "closed"
        )
        logging.getLogger("psycopg.transaction").warning(
            "error ignored in rollback of %s: %s", "<tx>", "another command"
        )
        logging.getLogger("psycopg.transaction").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
