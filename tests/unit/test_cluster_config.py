"""``--redis`` and ``--node-id``: parsed once, refused with the setting named."""

from __future__ import annotations

import pytest

from dkserver.cluster.url import (
    RedisUrlError,
    default_node_id,
    parse_redis_url,
)
from dkserver.config import ConfigError, from_sources

PG = "postgresql://dk@127.0.0.1:5432/dk"
SECRET = {"JWT_SECRET": "s" * 32}


def test_without_redis_the_server_is_a_single_process():
    config = from_sources({}, {})
    assert config.redis is None
    assert config.node_id == default_node_id(":443")


def test_redis_url_and_node_id_from_environment_and_options():
    env = {**SECRET, "DK_DB": PG, "DK_REDIS_URL": "redis://:pw@10.0.0.5:6380/3"}
    config = from_sources({"node_id": "node-a"}, {**env, "DK_NODE_ID": "ignored"})
    assert (config.redis.host, config.redis.port, config.redis.db) == (
        "10.0.0.5",
        6380,
        3,
    )
    assert config.redis.password == "pw"
    assert "pw" not in repr(config) and "pw" not in config.redis.redacted
    assert config.node_id == "node-a"


def test_redis_with_a_sqlite_database_is_refused():
    with pytest.raises(ConfigError) as e:
        from_sources({"redis": "redis://127.0.0.1:6379"}, {})
    assert e.value.key == "DK_REDIS_URL"
    assert "PostgreSQL" in str(e.value)


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1:6379", "redis://"),
        ("rediss://127.0.0.1:6379", "TLS"),
        ("redis://", "host"),
        ("redis://h:99999", "port"),
        ("redis://h:6379/x", "number"),
        ("redis://h:6379/16", "range"),
        ("redis://h:6379/0?timeout=1", "options"),
    ],
)
def test_bad_redis_urls_say_why(url, says):
    with pytest.raises(RedisUrlError, match=says):
        parse_redis_url(url)
    with pytest.raises(ConfigError) as e:
        from_sources({"redis": url}, {**SECRET, "DK_DB": PG})
    assert e.value.key == "DK_REDIS_URL"


@pytest.mark.parametrize("node_id", ["", " ", "-a", "a b", "x" * 65, "é"])
def test_bad_node_ids_are_refused(node_id):
    if not node_id.strip():
        assert from_sources({"node_id": node_id}, {}).node_id  # unset: default
        return
    with pytest.raises(ConfigError) as e:
        from_sources({"node_id": node_id}, {})
    assert e.value.key == "DK_NODE_ID"


@pytest.mark.parametrize(
    "https, port",
    [
        (":443", "443"),
        ("127.0.0.1:8443", "8443"),
        ("[::1]:9443", "9443"),
        ("tcp:port=7443:interface=127.0.0.1", "7443"),
    ],
)
def test_default_node_id_is_stable_per_host_and_port(https, port):
    assert default_node_id(https) == default_node_id(https)
    assert default_node_id(https).endswith(":" + port)
