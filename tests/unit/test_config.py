"""Configuration: environment defaults, option overrides, one-line errors."""

from __future__ import annotations

import pytest
from twisted.python import usage

from dkserver.config import (
    ConfigError,
    endpoint_description,
    from_sources,
    state_directory,
)
from dkserver.tap import Options


def test_defaults_match_protocol():
    config = from_sources({}, {})
    assert config.https == ":443"
    assert config.http == ":80"
    assert config.message_rate == 5.0
    assert config.message_burst == 10
    assert config.jwt_secret is None
    assert config.jwt_secret_path == "dkserver.db.jwt-secret"


def test_environment_gives_defaults_and_options_override():
    env = {
        "SERVER_ADDR": ":8443",
        "MESSAGE_RATE_LIMIT": "2.5",
        "MESSAGE_BURST_LIMIT": "4",
        "LOGIN_RATE_LIMIT": "100",
        "LOGIN_BURST_LIMIT": "200",
        "JWT_SECRET": "s" * 32,
        "DK_ADMIN_USERS": "root, ops",
    }
    config = from_sources({"rate": "7"}, env)
    assert config.https == ":8443"
    assert config.message_rate == 7.0
    assert config.message_burst == 4
    assert (config.login_rate, config.login_burst) == (100.0, 200)
    assert config.jwt_secret == "s" * 32
    assert config.admin_users == frozenset({"root", "ops"})


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (":443", "tcp:port=443"),
        ("127.0.0.1:8443", "tcp:port=8443:interface=127.0.0.1"),
        ("[::1]:8443", r"tcp6:port=8443:interface=\:\:1"),
        ("tcp6:port=8443", "tcp6:port=8443"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_addresses(addr, expected):
    assert endpoint_description("https", addr) == expected


@pytest.mark.parametrize("addr", ["nonsense", "host:99999", "ssl:port=443", "1.2.3.4"])
def test_bad_addresses_are_config_errors(addr):
    with pytest.raises(ConfigError) as info:
        endpoint_description("https", addr)
    assert "https" in str(info.value)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"rate": "0"}, "MESSAGE_RATE_LIMIT"),
        ({"rate": "-1"}, "MESSAGE_RATE_LIMIT"),
        ({"rate": "nan"}, "MESSAGE_RATE_LIMIT"),
        ({"burst": "0"}, "MESSAGE_BURST_LIMIT"),
        ({"burst": "x"}, "MESSAGE_BURST_LIMIT"),
        ({"https": "bad"}, "https"),
        ({"http": "bad"}, "http"),
        ({"sqlite_synchronous": "off"}, "DK_SQLITE_SYNCHRONOUS"),
    ],
)
def test_invalid_settings_name_the_key(options, key):
    with pytest.raises(ConfigError) as info:
        from_sources(options, {})
    assert str(info.value).startswith(key)


def test_http_none_disables_redirect():
    assert from_sources({"http": "none"}, {}).http is None


def test_twistd_options_turn_errors_into_usage_errors():
    with pytest.raises(usage.UsageError, match="MESSAGE_RATE_LIMIT"):
        Options().parseOptions(["--rate", "0"])
    options = Options()
    options.parseOptions(
        ["--https", "127.0.0.1:8443", "--http", "none", "--db", "/tmp/x.db"]
    )
    assert options.config.https == "127.0.0.1:8443"
    assert options.config.http is None
    assert options.config.db_path == "/tmp/x.db"


def test_write_limits_and_operator_folders(tmp_path):
    config = from_sources({}, {})
    assert (config.write_rate, config.write_burst) == (1.0, 20)
    assert config.tracker_dir is None and config.app_dir is None
    env = {
        "DK_WRITE_RATE_LIMIT": "0.5",
        "DK_WRITE_BURST_LIMIT": "3",
        "DK_TRACKER_DIR": str(tmp_path),
        "DK_APP_DIR": str(tmp_path),
    }
    config = from_sources({}, env)
    assert (config.write_rate, config.write_burst) == (0.5, 3)
    assert config.tracker_dir == config.app_dir == str(tmp_path)


@pytest.mark.parametrize("key", ["DK_TRACKER_DIR", "DK_APP_DIR"])
def test_missing_operator_folder_is_a_config_error(tmp_path, key):
    with pytest.raises(ConfigError, match=f"^{key}: .* is not an existing directory"):
        from_sources({}, {key: str(tmp_path / "nope")})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=key):
        from_sources({}, {key: str(tmp_path / "file")})


@pytest.mark.parametrize(
    ("key", "raw"), [("DK_WRITE_RATE_LIMIT", "0"), ("DK_WRITE_BURST_LIMIT", "x")]
)
def test_bad_write_limits_are_config_errors(key, raw):
    with pytest.raises(ConfigError, match=key):
        from_sources({}, {key: raw})


def test_missing_operator_folder_stops_twistd_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("DK_APP_DIR", str(tmp_path / "nope"))
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions([])
    assert str(info.value).startswith("DK_APP_DIR: ")
    assert "\n" not in str(info.value)


def test_database_url_is_parsed_once_with_pool_settings():
    config = from_sources(
        {"db": "postgresql://dk:pw@db.example:5433/dk"},
        {
            "DK_JWT_SECRET_FILE": "/etc/dk/jwt",
            "DK_DB_POOL_SIZE": "3",
            "DK_DB_STATEMENT_TIMEOUT": "2.5",
            "DK_DB_CONNECT_TIMEOUT": "4",
        },
    )
    assert config.database.is_postgresql
    assert (config.database.host, config.database.port) == ("db.example", 5433)
    assert (config.db_pool_size, config.db_statement_timeout) == (3, 2.5)
    assert config.db_connect_timeout == 4.0
    assert config.jwt_secret_path == "/etc/dk/jwt"
    assert "pw" not in repr(config)


def test_sqlite_keeps_its_secret_beside_the_file():
    config = from_sources({"db": "sqlite:///var/lib/dk.db"}, {})
    assert not config.database.is_postgresql
    assert config.database.path == "/var/lib/dk.db"
    assert config.jwt_secret_path == "/var/lib/dk.db.jwt-secret"


@pytest.mark.parametrize(
    ("options", "environ", "key"),
    [
        ({"db": "mysql://x/y"}, {}, "DK_DB"),
        ({}, {"DK_DB_POOL_SIZE": "0"}, "DK_DB_POOL_SIZE"),
        ({}, {"DK_DB_STATEMENT_TIMEOUT": "soon"}, "DK_DB_STATEMENT_TIMEOUT"),
        ({}, {"DK_DB_CONNECT_TIMEOUT": "-1"}, "DK_DB_CONNECT_TIMEOUT"),
    ],
)
def test_bad_database_settings_name_the_key(options, environ, key):
    with pytest.raises(ConfigError) as e:
        from_sources(options, environ)
    assert e.value.key == key


def test_jwt_secret_alone_is_enough_on_postgresql():
    config = from_sources({"db": "postgresql://u@h/db"}, {"JWT_SECRET": "x" * 32})
    assert config.jwt_secret_path == ""
    assert not config.secret_in_database


def test_postgresql_without_a_secret_setting_keeps_it_in_the_database():
    config = from_sources(
        {"db": "postgresql://u@h/db"}, {"XDG_CACHE_HOME": "/home/dk/.cache"}
    )
    assert config.secret_in_database
    assert config.jwt_secret_path == ""
    # the client build goes to the cache directory, never the working directory
    assert config.client_path == "/home/dk/.cache/dkserver/dk.pyz"


def test_postgresql_secret_file_still_holds_the_secret_and_places_the_build():
    config = from_sources(
        {"db": "postgresql://u@h/db"}, {"DK_JWT_SECRET_FILE": "/etc/dk/jwt"}
    )
    assert not config.secret_in_database
    assert config.client_path == "/etc/dk/dk.pyz"


def test_sqlite_never_keeps_its_secret_in_the_database():
    config = from_sources({"db": "/var/lib/dk.db"}, {"XDG_CACHE_HOME": "/c"})
    assert not config.secret_in_database
    assert config.client_path == "/var/lib/dk.pyz"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"CACHE_DIRECTORY": "/var/cache/dkserver:/x", "HOME": "/h"},
            "/var/cache/dkserver",
        ),
        (
            {"STATE_DIRECTORY": "/var/lib/dkserver", "XDG_CACHE_HOME": "/c"},
            "/var/lib/dkserver",
        ),
        ({"XDG_CACHE_HOME": "/c", "HOME": "/h"}, "/c/dkserver"),
        # relative values are not directories the specifications allow
        (
            {"XDG_CACHE_HOME": "cache", "STATE_DIRECTORY": "s", "HOME": "/h"},
            "/h/.cache/dkserver",
        ),
    ],
)
def test_state_directory_follows_systemd_then_xdg(environ, expected):
    assert state_directory(environ) == expected


@pytest.mark.parametrize(
    ("environ", "argv", "expected"),
    [
        ({}, [], False),
        ({"DK_PROXY_PROTOCOL": "1"}, [], True),
        ({"DK_PROXY_PROTOCOL": "yes"}, [], True),
        ({"DK_PROXY_PROTOCOL": "off"}, [], False),
        ({"DK_PROXY_PROTOCOL": "0"}, ["--proxy-protocol"], True),
        ({}, ["--proxy-protocol"], True),
    ],
)
def test_proxy_protocol_from_environment_or_flag(monkeypatch, environ, argv, expected):
    monkeypatch.delenv("DK_PROXY_PROTOCOL", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    options = Options()
    options.parseOptions(argv)
    assert options.config.proxy_protocol is expected


def test_proxy_protocol_typo_is_a_one_line_usage_error(monkeypatch):
    monkeypatch.setenv("DK_PROXY_PROTOCOL", "maybe")
    with pytest.raises(usage.UsageError, match=r"^DK_PROXY_PROTOCOL: must be 1/"):
        Options().parseOptions([])


def test_tls_reload_interval_defaults_to_five_seconds_and_is_checked():
    assert from_sources({}, {}).tls_reload_interval == 5.0
    assert (
        from_sources({}, {"DK_TLS_RELOAD_INTERVAL": "0.5"}).tls_reload_interval == 0.5
    )
    for raw in ("0", "-1", "soon", "inf"):
        with pytest.raises(ConfigError, match="DK_TLS_RELOAD_INTERVAL"):
            from_sources({}, {"DK_TLS_RELOAD_INTERVAL": raw})


def test_account_settings_defaults_and_environment():
    config = from_sources({}, {})
    assert (config.registration, config.token_issuer, config.revocation_poll) == (
        "open",
        "dkserver",
        0.5,
    )
    config = from_sources(
        {},
        {
            "DK_REGISTRATION": "Invite",
            "DK_TOKEN_ISSUER": "dk.example.org",
            "DK_REVOCATION_POLL": "0.25",
        },
    )
    assert (config.registration, config.token_issuer, config.revocation_poll) == (
        "invite",
        "dk.example.org",
        0.25,
    )


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("DK_REGISTRATION", "sometimes", "must be open, closed or invite"),
        ("DK_REVOCATION_POLL", "0", "must be a positive number"),
        ("DK_REVOCATION_POLL", "120", "at most 60 seconds"),
        ("DK_TOKEN_ISSUER", "a\tb", "printable"),
    ],
)
def test_bad_account_settings_name_the_setting(key, value, why):
    with pytest.raises(ConfigError, match=why) as info:
        from_sources({}, {key: value})
    assert info.value.key == key


def test_public_read_limits_and_read_pool_size():
    config = from_sources({}, {})
    assert (config.public_read_rate, config.public_read_burst) == (10.0, 50)
    assert config.db_read_pool_size == 4
    config = from_sources(
        {},
        {
            "DK_PUBLIC_READ_RATE_LIMIT": "2.5",
            "DK_PUBLIC_READ_BURST_LIMIT": "7",
            "DK_DB_READ_POOL_SIZE": "2",
        },
    )
    assert (config.public_read_rate, config.public_read_burst) == (2.5, 7)
    assert config.db_read_pool_size == 2


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("DK_PUBLIC_READ_RATE_LIMIT", "0"),
        ("DK_PUBLIC_READ_RATE_LIMIT", "nan"),
        ("DK_PUBLIC_READ_BURST_LIMIT", "x"),
        ("DK_DB_READ_POOL_SIZE", "0"),
    ],
)
def test_bad_public_read_settings_are_config_errors(key, raw):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        from_sources({}, {key: raw})
