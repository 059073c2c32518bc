"""What an operator reads: a real daemon's /metrics and its JSON log.

Both run ``twistd -n dkserver`` (tests/reliability/daemon.py) on each
backend, put real traffic through it (registrations, logins, a refused
token, live and offline direct messages, a broadcast), then read what the
operator would: the Prometheus text, parsed with prometheus_client's parser
and checked against the table in docs/analytics.md, and every line of the
JSON log, grepped for the secrets and content that went through.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.daemon import Daemon
from tests.support.client import Identity, get, login, post_json, register_and_login
from tests.support.metrics import sample
from tests.support.waiting import wait_for
from tests.support.ws import broadcast_frame, connect, direct_frame, upgrade_status

pytestmark = pytest.mark.both_backends

DELIVERY_COUNT = "dkserver_delivery_latency_seconds_count"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"

#: docs/analytics.md's "type" column -> the type the exposition declares.
_EXPOSED_TYPE = {
    "gauge": "gauge",
    "counter": "counter",
    "histogram": "histogram",
    "info (gauge `1`)": "gauge",
}


def documented_metrics() -> dict[str, str]:
    """name -> exposed type, from the /metrics table of docs/analytics.md."""
    text = DOCS.read_text()
    section = text[text.index("## `GET /metrics`") : text.index("## Several nodes")]
    found = {}
    for line in section.splitlines():
        m = re.match(r"^\| `([a-z_]+)` \| ([^|]+?) \|", line)
        if m:
            found[m.group(1)] = _EXPOSED_TYPE[m.group(2).strip()]
    return found


def families(text: str) -> dict[str, object]:
    """Exposed family name -> family (counters under their ``_total`` name)."""
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = family
    return out


async def scrape(handle) -> str:
    code, body = await get(handle, "/metrics")
    assert code == 200, body
    return body


async def traffic(handle):
    """Alice, bob (online) and carol (offline): a live direct message, two
    for carol that stay pending, and a broadcast.  Returns what went over
    the wire that must never be logged."""
    alice, bob, carol = Identity("alice"), Identity("bob"), Identity("carol")
    alice_token = await register_and_login(handle, alice)
    bob_token = await register_and_login(handle, bob)
    carol_token = await register_and_login(handle, carol)
    bob_ws = await connect(handle, bob_token)
    alice_ws = await connect(handle, alice_token)
    live = direct_frame(alice, "bob", "the live secret", bob.public_key_b64)
    alice_ws.send_json(live)
    got = await bob_ws.recv()
    assert got["from"] == "alice"
    offline = [
        direct_frame(alice, "carol", f"for carol {i}", carol.public_key_b64)
        for i in range(2)
    ]
    for frame in offline:
        alice_ws.send_json(frame)
    shout = broadcast_frame(alice, "broadcast words nobody may log")
    alice_ws.send_json(shout)
    got = await bob_ws.recv()
    assert got["content"] == shout["content"]
    # A spoofed sender (an audit event) and a refused token (another).
    alice_ws.send_json({**live, "from": "bob"})
    assert (await alice_ws.recv())["status"] == "error"
    forged = alice_token[:-4] + ("AAAA" if not alice_token.endswith("AAAA") else "BBBB")
    assert await upgrade_status(handle, forged) == 401
    # A failed login (audit): a wrong signature over a real challenge.
    code, body = await post_json(handle, "/auth/login", {"user_id": "alice"})
    assert code == 200, body
    challenge = body["challenge"]
    code, _ = await post_json(
        handle,
        "/auth/login?verify=true",
        {"user_id": "alice", "signature": bob.sign_b64(challenge.encode())},
    )
    assert code == 401
    # Secrets pasted into the user id field are logged by the failed login's
    # audit event (the id is what it names): a public key, a token cut to the
    # longest id there is.
    for pasted in (carol.public_key_b64, bob_token[:128]):
        code, body = await post_json(handle, "/auth/login", {"user_id": pasted})
        assert code == 200, body
        code, _ = await post_json(
            handle,
            "/auth/login?verify=true",
            {"user_id": pasted, "signature": bob.sign_b64(b"x")},
        )
        assert code == 401
    return {
        "carol": carol,
        "clients": (alice_ws, bob_ws),
        "secrets": [
            alice_token,
            bob_token,
            carol_token,
            forged,
            challenge,
            alice.public_key_b64,
            bob.public_key_b64,
            carol.public_key_b64,
            live["signature"],
            shout["signature"],
            *(f["signature"] for f in offline),
        ],
        "content": [
            live["content"],
            shout["content"],
            *(f["content"] for f in offline),
        ],
    }


def json_log_lines(daemon: Daemon) -> list[dict]:
    """Every line the daemon wrote, parsed (its stdout and stderr are one
    file; the ``=====`` run markers are the test's own)."""
    events = []
    for line in daemon.log_text().splitlines():
        if not line.strip() or line.startswith("===== run"):
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line in the log: {line!r}") from None
    return events


@pytest_twisted.ensureDeferred
async def test_json_log_has_every_event_as_an_object_and_no_secrets_or_content(
    tmp_path, db_target
):
    daemon = Daemon(tmp_path, db=db_target, extra_args=("--log-format", "json"))
    try:
        handle = await daemon.start()
        sent = await traffic(handle)
        for ws in sent["clients"]:
            ws.close()
        await daemon.stop()
    finally:
        daemon.kill_now()
    raw = daemon.log_text()
    for secret in sent["secrets"] + sent["content"]:
        assert secret not in raw, f"{secret[:12]}... is in the log"
        # The content is base64 ciphertext or plain text; neither may appear
        # in part either (a field truncated by a log call, say).
        assert secret[:24] not in raw, f"{secret[:12]}... is in the log"
    events = json_log_lines(daemon)
    assert len(events) > 10
    for event in events:
        assert {"timestamp", "level", "namespace", "message"} <= event.keys(), event
        moment = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        assert moment.utcoffset().total_seconds() == 0
        assert abs((datetime.now(UTC) - moment).total_seconds()) < 600
        assert not any(k.startswith("log_") for k in event), event
    messages = [e["message"] for e in events]
    assert any(m == "user alice connected from 127.0.0.1" for m in messages)
    connected = next(e for e in events if e["message"].startswith("user bob connected"))
    assert connected["user_id"] == "bob" and connected["level"] == "info"
    assert connected["namespace"].startswith("dkserver.ws."), connected
    audits = [e for e in events if e.get("audit") is True]
    kinds = " ".join(e["message"] for e in audits)
    assert "spoofed_sender" in kinds and "refused_upgrade (token)" in kinds, kinds
    assert "login_failed" in kinds, kinds
    assert all(e["level"] == "warn" for e in audits)
    assert any(e["message"] == "shutdown complete" for e in events)


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_json_log_goes_to_the_logfile_twistd_is_given(tmp_path, db_target):
    logfile = tmp_path / "dkserver.log"
    daemon = Daemon(
        tmp_path,
        db=db_target,
        twistd_args=("--logfile", str(logfile)),
        DK_LOG_FORMAT="json",
    )
    try:
        handle = await daemon.start()
        await register_and_login(handle, Identity("alice"))
        await daemon.stop()
    finally:
        daemon.kill_now()
    # stdout (the daemon's own log file here) has nothing but the run marker
    assert [line for line in daemon.log_text().splitlines() if line.strip()] == [
        "===== run 1 ====="
    ]
    events = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert any(e["message"].startswith("database ") for e in events)
    assert events[-1]["message"] == "Server Shut Down."


@pytest_twisted.ensureDeferred
async def test_metrics_of_a_daemon_after_traffic_match_the_documented_table(
    tmp_path, db_target, backend
):
    daemon = Daemon(tmp_path, db=db_target)
    try:
        handle = await daemon.start()
        sent = await traffic(handle)
        # bob proved he read both messages: their marks commit after the pong.
        text = ""

        async def settled() -> bool:
            nonlocal text
            text = await scrape(handle)
            direct = sample(
                text, "dkserver_delivery_latency_seconds_count", kind="direct"
            )
            return bool(direct) and sample(text, "dkserver_pending_messages") == 2

        await wait_for(settled, "delivery marks committed", timeout=15)
        exposed = families(text)
        documented = documented_metrics()
        assert len(documented) >= 20
        for name, kind in documented.items():
            assert name in exposed, f"{name} (documented) is not in the scrape"
            assert exposed[name].type == kind, (name, exposed[name].type, kind)
        # (prometheus_client adds a ``<counter>_created`` time to each counter)
        ours = {
            n
            for n in exposed
            if n.startswith("dkserver_") and not n.endswith("_created")
        }
        assert ours <= documented.keys(), ours - documented.keys()

        # Histograms observed the traffic.
        assert sample(text, "dkserver_commit_duration_seconds_count") >= 3
        assert sample(text, "dkserver_commit_duration_seconds_sum") > 0
        assert (
            sample(text, "dkserver_delivery_latency_seconds_count", kind="direct") >= 1
        )
        assert (
            sample(text, "dkserver_delivery_latency_seconds_count", kind="broadcast")
            >= 1
        )
        inf = sample(
            text, "dkserver_delivery_latency_seconds_bucket", kind="direct", le="+Inf"
        )
        assert inf == sample(
            text, "dkserver_delivery_latency_seconds_count", kind="direct"
        )
        assert sample(text, "dkserver_delivery_latency_seconds_sum", kind="direct") > 0
        # carol's two messages wait; bob's was delivered.
        assert sample(text, "dkserver_pending_messages") == 2
        assert sample(text, "dkserver_messages_total", kind="direct") == 3
        assert sample(text, "process_open_fds") > 0
        assert sample(text, "process_resident_memory_bytes") > 10e6
        assert sample(text, "dkserver_rate_limit_buckets", limit="messages") >= 1
        assert (
            sample(
                text,
                "dkserver_rate_limit_evictions_total",
                limit="messages",
                reason="full",
            )
            == 0
        )

        # The database size is the backend's own figure (read at start and
        # every 30 s: compared within what a few rows can add).
        size = sample(text, "dkserver_database_size_bytes")
        if backend == "postgresql":
            with psycopg.connect(db_target) as conn:
                actual = conn.execute(
                    "SELECT pg_database_size(current_database())"
                ).fetchone()[0]
            assert abs(size - actual) < 2 * 1024 * 1024, (size, actual)
        else:
            path = daemon.database.path
            main = os.path.getsize(path)
            wal = Path(f"{path}-wal")
            assert main <= size <= main + (wal.stat().st_size if wal.exists() else 0)
            assert size > 0

        # carol connects: her backlog is read, the gauge drops to 0, and the
        # delivery histogram counts the backlog too.
        before = sample(text, "dkserver_delivery_latency_seconds_count", kind="direct")
        carol = await connect(handle, await login(handle, sent["carol"]))
        # her two direct messages, then the broadcast
        assert [f["to"] for f in await carol.recv_all(3)] == [
            "carol",
            "carol",
            "broadcast",
        ]

        async def drained() -> bool:
            nonlocal text
            text = await scrape(handle)
            return sample(text, "dkserver_pending_messages") == 0

        await wait_for(drained, "carol's backlog marked", timeout=15)
        after = sample(text, "dkserver_delivery_latency_seconds_count", kind="direct")
        assert after >= before + 2
        for ws in (*sent["clients"], carol):
            ws.close()
        await daemon.stop()
    finally:
        daemon.kill_now()
