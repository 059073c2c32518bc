"""The user cache after a restart: read in one query at start, so that the
clients reconnecting at once log in without a database trip each."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.support.client import Identity, login, register_and_login
from tests.support.db import recorded_interactions
from tests.support.server import start_server, stop_server

pytestmark = pytest.mark.both_backends


@pytest_twisted.ensureDeferred
async def test_a_restarted_server_reads_its_users_at_start(backend_config):
    config = backend_config()
    server = await start_server(config)
    idents = [Identity(f"cached{i}") for i in range(3)]
    try:
        for ident in idents:
            await register_and_login(server, ident)
    finally:
        await stop_server(server)

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        server = await start_server(config)
        await server.service._warming
    finally:
        globalLogPublisher.removeObserver(events.append)
    try:
        warmed = [
            e
            for e in events
            if e.get("log_format", "").startswith("read {count} users")
        ]
        assert [e["count"] for e in warmed] == [3]
        with recorded_interactions(server.service.store.reads) as looked_up:
            for ident in idents:  # the logins and token checks need no user read
                assert await login(server, ident)
        assert "_get_txn" not in looked_up and "_exists_txn" not in looked_up
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_a_read_discarded_by_an_account_change_is_tried_once_more(
    backend_config,
):
    server = await start_server(backend_config())
    try:
        await server.service._warming
        users = server.service.store.users
        answers: list = []

        async def warm():
            return answers.pop(0)

        users.warm = warm
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            answers[:] = [None, 3]
            await server.service._warm_users()
            answers[:] = [None, None]
            await server.service._warm_users()
        finally:
            globalLogPublisher.removeObserver(events.append)
        lines = [
            e["log_format"]
            for e in events
            if e.get("log_namespace") == "dkserver.service.DkService"
        ]
        assert lines == [
            "read {count} users into the cache in {seconds:.3f} s",
            "accounts changed while the users were read into the cache;"
            " each is read at its first login",
        ]
        assert answers == []
    finally:
        await stop_server(server)
