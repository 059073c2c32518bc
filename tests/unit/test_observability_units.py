"""The parts behind --log-format json and the new /metrics series, alone:
redaction, the JSON line, the reactor-thread histogram, the rate-limit
counts, the backlog gauge's arithmetic and the DK_LOG_FORMAT setting."""

from __future__ import annotations

import base64
import io
import json
import math
import os

import jwt
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from dkserver.config import ConfigError, from_sources
from dkserver.gauges import StoreGauges
from dkserver.logs import json_line, json_observer, log_target, redact_text
from dkserver.metrics import LatencyHistogram, Metrics
from dkserver.ratelimit import BucketRegistry
from dkserver.ws.hub import Hub
from tests.support.metrics import sample

TOKEN = jwt.encode({"sub": "alice", "exp": 2_000_000_000}, "s" * 32, algorithm="HS256")
KEY = base64.b64encode(os.urandom(32)).decode()
SIGNATURE = base64.b64encode(os.urandom(64)).decode()


def emitted(**fields) -> dict:
    """One event as a Logger builds it, through json_observer."""
    out = io.StringIO()
    publisher = LogPublisher(json_observer(out))
    log = Logger(namespace="dkserver.test", observer=publisher)
    fmt = fields.pop("fmt", "")
    level = fields.pop("_level", LogLevel.info)
    log.emit(level, fmt, **fields)
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    return json.loads(line)


def test_a_json_line_has_time_level_namespace_message_and_the_fields():
    event = emitted(
        fmt="user {user_id} connected from {client_ip}",
        user_id="alice",
        client_ip="127.0.0.1",
        count=3,
        audit=True,
        _level=LogLevel.warn,
    )
    assert event["message"] == "user alice connected from 127.0.0.1"
    assert event["level"] == "warn" and event["namespace"] == "dkserver.test"
    assert event["timestamp"].endswith("Z") and "T" in event["timestamp"]
    assert (event["user_id"], event["count"], event["audit"]) == ("alice", 3, True)
    assert not [k for k in event if k.startswith("log_")]


def test_sensitive_fields_are_redacted_in_the_fields_and_the_message():
    event = emitted(
        fmt="token {token} key {public_key} sig {signature} said {content}",
        token=TOKEN,
        public_key=KEY,
        signature=SIGNATURE,
        content="hello bob",
    )
    text = json.dumps(event)
    for secret in (TOKEN, KEY, SIGNATURE, "hello bob"):
        assert secret not in text
    assert event["token"] == event["public_key"] == "[redacted]"
    assert event["message"] == (
        "token [redacted] key [redacted] sig [redacted] said [redacted]"
    )


def test_jwts_and_key_like_base64_are_redacted_inside_any_string():
    event = emitted(fmt="bad {what}", what=f"Bearer {TOKEN} for {KEY}")
    assert TOKEN not in json.dumps(event) and KEY not in json.dumps(event)
    assert event["what"] == "Bearer [jwt] for [redacted]"
    cut = emitted(fmt="user {user_id!r}", user_id=TOKEN[: TOKEN.rindex(".")])
    assert cut["user_id"] == "[jwt]" and cut["message"] == "user '[jwt]'"
    # Paths, hex ids and host names are left alone.
    kept = "/tmp/pytest-of-root/pytest-12/test_json_log_never_shows_tokens0/dk.db"
    assert redact_text(kept) == kept
    assert redact_text("a" * 32 + "0123456789abcdef") == "a" * 32 + "0123456789abcdef"


def test_objects_are_written_as_their_type_never_their_repr():
    class Request:
        def __repr__(self) -> str:
            return f"<Request /ws?token={TOKEN}>"

    event = emitted(fmt="got {request}", request=Request(), raw=b"\x00" * 5)
    assert event["request"] == "<Request>" and event["raw"] == "<5 bytes>"
    assert event["message"] == "got <Request>"
    assert TOKEN not in json.dumps(event)


def test_a_format_our_plain_values_cannot_fill_gives_the_bare_format():
    class Request:
        uri = f"/ws?token={TOKEN}"

    event = emitted(fmt="request {request.uri} failed", request=Request())
    assert event["message"] == "request {request.uri} failed"
    assert TOKEN not in json.dumps(event)


def test_a_field_named_like_a_key_of_ours_keeps_its_value_under_another_name():
    # (Logger.emit's own parameter is "level": an event dict as it arrives)
    event = json.loads(
        json_line(
            {
                "log_format": "{level} {namespace}",
                "log_level": LogLevel.info,
                "log_namespace": "dkserver.test",
                "log_time": 1.0,
                "level": "high",
                "namespace": "x",
            }
        )
    )
    assert event["message"] == "high x"
    assert event["level"] == "info"
    assert (event["level_"], event["namespace_"]) == ("high", "x")


def test_failures_are_written_with_their_traceback_redacted():
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        failure = Failure()
    line = json_line(
        {
            "log_format": "it failed",
            "log_failure": failure,
            "log_level": LogLevel.critical,
            "log_namespace": "x",
            "log_time": 0.0,
        }
    )
    event = json.loads(line)
    assert event["failure"]["type"] == "ValueError"
    assert "ValueError" in event["failure"]["traceback"]
    assert TOKEN not in line and "[jwt]" in event["failure"]["value"]
    assert event["timestamp"] == "1970-01-01T00:00:00.000000Z"


def test_legacy_events_are_formatted_too():
    line = json_line(
        {
            "message": ("Site starting on 8443",),
            "isError": 0,
            "system": "-",
            "log_legacy": None,
            "log_format": "{log_text}",
            "log_text": "Site starting on 8443",
            "log_level": LogLevel.info,
            "log_namespace": "log_legacy",
            "log_time": 1.0,
        }
    )
    assert json.loads(line)["message"] == "Site starting on 8443"


def test_log_target_is_where_twistd_would_write(tmp_path):
    import sys

    assert log_target({"nodaemon": True, "logfile": None}) is sys.stdout
    assert log_target({"nodaemon": True, "logfile": "-"}) is sys.stdout
    target = log_target({"nodaemon": False, "logfile": str(tmp_path / "dk.log")})
    try:
        target.write("x\n")
        target.flush()
        assert (tmp_path / "dk.log").read_text() == "x\n"
    finally:
        target.close()


def test_log_format_setting():
    assert from_sources({}, {}).log_format == "text"
    assert from_sources({}, {"DK_LOG_FORMAT": "JSON"}).log_format == "json"
    assert from_sources(
        {"log_format": "text"}, {"DK_LOG_FORMAT": "json"}
    ).log_format == ("text")
    with pytest.raises(ConfigError) as e:
        from_sources({}, {"DK_LOG_FORMAT": "xml"})
    assert e.value.key == "DK_LOG_FORMAT"


def test_latency_histogram_buckets_are_cumulative_and_parse():
    histogram = LatencyHistogram("t_seconds", "test", (0.01, 0.1, 1.0), ["kind"])
    child = histogram.labels("direct")
    for seconds in (0.005, 0.01, 0.05, 0.5, 5.0):
        child.observe(seconds)
    [family] = histogram.collect()
    samples = {
        (s.name, s.labels.get("le")): s.value
        for s in family.samples
        if s.labels["kind"] == "direct"
    }
    assert samples[("t_seconds_bucket", "0.01")] == 2  # le is inclusive
    assert samples[("t_seconds_bucket", "0.1")] == 3
    assert samples[("t_seconds_bucket", "1.0")] == 4
    assert samples[("t_seconds_bucket", "+Inf")] == 5
    assert samples[("t_seconds_count", None)] == 5
    assert math.isclose(samples[("t_seconds_sum", None)], 5.565)
    with pytest.raises(ValueError):
        histogram.labels()


class _DeliveryWriter:
    def __init__(self) -> None:
        self.marks: list[tuple] = []

    def mark_delivered(self, message_id, user_id) -> None:
        self.marks.append(("d", message_id, user_id))

    def record_broadcast_delivery(self, message_id, user_id) -> None:
        self.marks.append(("b", message_id, user_id))


class _NoSessions:
    def connection_count(self) -> int:
        return 0

    def online_users(self) -> list[str]:
        return []


def test_confirmed_deliveries_observe_their_latency_never_below_zero():
    """A store time from another node's clock may be ahead of this one's."""
    metrics, writer = Metrics(), _DeliveryWriter()
    hub = Hub(
        None,
        writer,
        _NoSessions(),
        None,
        None,
        metrics,
        Clock(),
        lambda: 5_000_000_000,
        first_reads=None,
    )
    hub.confirm(
        [
            ("d", 1, "bob", 4_750_000_000),  # 0.25 s ago
            ("d", 2, "bob", None),  # no store time: not observed
            ("b", 3, "bob", 5_200_000_000),  # 0.2 s "in the future"
        ]
    )
    assert writer.marks == [("d", 1, "bob"), ("d", 2, "bob"), ("b", 3, "bob")]
    text = generate_latest(metrics.registry).decode()
    name = "dkserver_delivery_latency_seconds"
    assert sample(text, name + "_count", kind="direct") == 1
    assert math.isclose(sample(text, name + "_sum", kind="direct"), 0.25)
    assert sample(text, name + "_count", kind="broadcast") == 1
    assert sample(text, name + "_sum", kind="broadcast") == 0


def test_metrics_render_rate_limit_counts_from_the_registries():
    clock = Clock()
    registry = BucketRegistry(1.0, 2, clock, max_buckets=2)
    for key in ("a", "b", "c"):  # the third evicts the least recently used
        registry.try_take(key)
    assert registry.evictions == 1
    clock.advance(10)
    assert registry.refill_and_prune() == 2
    assert registry.pruned == 2
    metrics = Metrics("n1")
    metrics.track_rate_limits({"messages": registry})
    text = metrics.render().decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    evictions = "dkserver_rate_limit_evictions_total"
    assert values[(evictions, (("limit", "messages"), ("reason", "full")))] == 1
    assert values[(evictions, (("limit", "messages"), ("reason", "refilled")))] == 2
    assert values[("dkserver_rate_limit_buckets", (("limit", "messages"),))] == 0


class _Writer:
    direct_stored = 0
    direct_delivered = 0


class _Messages:
    def __init__(self) -> None:
        self.count = 0
        self.calls = 0

    async def pending_count(self) -> int:
        self.calls += 1
        return self.count


class _Engine:
    pending_recount_interval = 60.0


class _Store:
    def __init__(self) -> None:
        self.messages = _Messages()
        self.engine = _Engine()

    async def database_size(self) -> int:
        return 12345


def test_backlog_gauge_is_the_last_count_plus_the_writer_s_counts_since():
    store, writer, metrics = _Store(), _Writer(), Metrics("n1")
    gauges = StoreGauges(store, writer, metrics, Clock())
    assert math.isnan(gauges.pending())  # nothing counted yet
    writer.direct_stored = 4  # before the count: already in it
    store.messages.count = 4
    gauges.recount()
    assert gauges.pending() == 4
    writer.direct_stored += 3
    writer.direct_delivered += 5
    assert gauges.pending() == 2
    gauges.pending_removed(1)  # a retention job dropped an expired one
    assert gauges.pending() == 1
    store.messages.count = 10  # another node stored more
    gauges.recount()
    assert gauges.pending() == 10
    gauges.sample_size()
    text = metrics.render().decode()
    assert "dkserver_pending_messages 10.0" in text
    assert "dkserver_database_size_bytes 12345.0" in text
    names = [s.name for s in gauges.services()]
    assert names == ["metrics-database-size", "metrics-pending-recount"]
    store.engine.pending_recount_interval = None  # SQLite: counted at start only
    assert [s.name for s in gauges.services()] == ["metrics-database-size"]


def test_a_failed_size_reading_is_logged_and_keeps_the_last_value():
    from twisted.logger import capturedLogs

    store, metrics = _Store(), Metrics("n1")

    async def broken() -> int:
        raise RuntimeError("disk gone")

    store.database_size = broken
    gauges = StoreGauges(store, _Writer(), metrics, Clock())
    with capturedLogs() as events:
        gauges.sample_size()
    # no count yet (it failed at start, say): the size timer asks again
    assert store.messages.calls == 1 and gauges.pending() == 0
    [failed] = [e for e in events if e.get("log_failure") is not None]
    assert failed["what"] == "size"
    assert failed["log_failure"].check(RuntimeError)
