"""Retention and quota settings: defaults, 0/off, and bad values naming the key."""

from __future__ import annotations

import pytest

from dkserver.config import ConfigError, from_sources


def parse(**env: str):
    return from_sources({}, env)


def test_defaults():
    c = parse()
    assert (c.retention_days, c.pending_max_days, c.stats_rollup_days) == (30, 90, 30)
    assert (c.pending_quota_messages, c.pending_quota_bytes) == (10_000, 100 * 2**20)
    assert (c.prune_interval, c.prune_batch) == (300, 200)


@pytest.mark.parametrize("off", ["0", "off", "OFF", "none", "never"])
def test_off_means_keep_forever_or_no_limit(off):
    c = parse(
        DK_RETENTION_DAYS=off,
        DK_PENDING_MAX_DAYS=off,
        DK_STATS_ROLLUP_DAYS=off,
        DK_PENDING_QUOTA_MESSAGES=off,
        DK_PENDING_QUOTA_BYTES=off,
        DK_PRUNE_INTERVAL=off,
    )
    assert c.retention_days is c.pending_max_days is c.stats_rollup_days is None
    assert c.pending_quota_messages is c.pending_quota_bytes is None
    assert c.prune_interval is None


def test_values():
    c = parse(
        DK_RETENTION_DAYS="1.5",
        DK_PENDING_MAX_DAYS="7",
        DK_STATS_ROLLUP_DAYS="7",
        DK_PENDING_QUOTA_MESSAGES="5",
        DK_PENDING_QUOTA_BYTES="1024",
        DK_PRUNE_INTERVAL="0.5",
        DK_PRUNE_BATCH="10",
    )
    assert (c.retention_days, c.pending_max_days, c.stats_rollup_days) == (1.5, 7, 7)
    assert (c.pending_quota_messages, c.pending_quota_bytes) == (5, 1024)
    assert (c.prune_interval, c.prune_batch) == (0.5, 10)


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("DK_RETENTION_DAYS", "0.5", "at least 1 days"),
        ("DK_RETENTION_DAYS", "-3", "positive"),
        ("DK_PENDING_MAX_DAYS", "soon", "not a number"),
        ("DK_STATS_ROLLUP_DAYS", "6", "at least 7 days"),
        ("DK_PENDING_QUOTA_MESSAGES", "1.5", "not an integer"),
        ("DK_PENDING_QUOTA_BYTES", "-1", "at least 1"),
        ("DK_PRUNE_INTERVAL", "inf", "positive"),
        ("DK_PRUNE_BATCH", "0", "at least 1"),
        ("DK_PRUNE_BATCH", "off", "not an integer"),
    ],
)
def test_bad_values_name_the_key(key, value, text):
    with pytest.raises(ConfigError) as e:
        parse(**{key: value})
    assert e.value.key == key and text in str(e.value)
