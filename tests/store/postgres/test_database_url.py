"""The ``Database`` setting: SQLite paths and PostgreSQL URLs."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from dkserver.store.url import DatabaseUrlError, parse_database_url

SECRET = "s3cr3t-pa55"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("dkserver.db", "dkserver.db"),
        ("/var/lib/dk/dk.db", "/var/lib/dk/dk.db"),
        ("./odd:name.db", "./odd:name.db"),
        (":memory:", ":memory:"),
        ("file:/tmp/dk.db?mode=rwc", "file:/tmp/dk.db?mode=rwc"),
        ("file:///tmp/dk.db", "file:///tmp/dk.db"),
        ("sqlite:///tmp/dk.db", "/tmp/dk.db"),
        ("sqlite://localhost/tmp/dk.db", "/tmp/dk.db"),
        ("sqlite:dk.db", "dk.db"),
        ("SQLite:///tmp/with%20space.db", "/tmp/with space.db"),
    ],
)
def test_paths_and_sqlite_urls_select_sqlite(text, path):
    url = parse_database_url(text)
    assert url.kind == "sqlite"
    assert not url.is_postgresql
    assert url.path == path
    assert url.conninfo == ""


def test_postgresql_url_gives_conninfo_and_parts():
    url = parse_database_url("postgresql://dk@db.example.org:6543/dkserver")
    assert url.kind == "postgresql"
    assert url.is_postgresql
    assert (url.user, url.host, url.port, url.dbname) == (
        "dk",
        "db.example.org",
        6543,
        "dkserver",
    )
    assert url.path is None
    assert conninfo_to_dict(url.conninfo) == {
        "dbname": "dkserver",
        "host": "db.example.org",
        "port": "6543",
        "user": "dk",
    }
    assert str(url) == "postgresql://dk@db.example.org:6543/dkserver"


def test_postgres_scheme_is_an_alias():
    a = parse_database_url("postgres://dk@localhost/dkserver")
    b = parse_database_url("postgresql://dk@localhost/dkserver")
    assert a == b
    assert a.port is None
    assert "port" not in conninfo_to_dict(a.conninfo)


def test_ipv6_host_and_defaults():
    url = parse_database_url("postgresql://[::1]:5433/dk")
    assert (url.host, url.port, url.user) == ("::1", 5433, None)
    assert str(url) == "postgresql://[::1]:5433/dk"


def test_unix_socket_host_in_query():
    url = parse_database_url("postgresql:///dk?host=/var/run/postgresql")
    assert url.host == "/var/run/postgresql"
    assert conninfo_to_dict(url.conninfo) == {
        "dbname": "dk",
        "host": "/var/run/postgresql",
    }


def test_query_options_pass_through_to_libpq():
    url = parse_database_url(
        "postgresql://dk@db:5432/dk?sslmode=verify-full&sslrootcert=/etc/ca.pem"
        "&connect_timeout=5&application_name=dk%20node%201"
    )
    assert url.options == (
        ("sslmode", "verify-full"),
        ("sslrootcert", "/etc/ca.pem"),
        ("connect_timeout", "5"),
        ("application_name", "dk node 1"),
    )
    info = conninfo_to_dict(url.conninfo)
    assert info["sslmode"] == "verify-full"
    assert info["sslrootcert"] == "/etc/ca.pem"
    assert info["connect_timeout"] == "5"
    assert info["application_name"] == "dk node 1"
    assert "sslmode=verify-full" in str(url)


def test_password_is_in_conninfo_only():
    url = parse_database_url(f"postgresql://dk:{SECRET}@db:5432/dk?sslmode=require")
    assert conninfo_to_dict(url.conninfo)["password"] == SECRET
    assert url.has_password
    for shown in (repr(url), str(url), url.redacted, f"{url}", f"{url!r}"):
        assert SECRET not in shown
    assert str(url) == "postgresql://dk:***@db:5432/dk?sslmode=require"


def test_password_in_query_is_redacted_too():
    url = parse_database_url(f"postgresql://dk@db/dk?password={SECRET}")
    assert conninfo_to_dict(url.conninfo)["password"] == SECRET
    assert SECRET not in repr(url)
    assert SECRET not in str(url)
    assert str(url) == "postgresql://dk:***@db/dk"


def test_awkward_characters_survive_conninfo_quoting():
    password = "a b'c\\d@e:f/g"
    url = parse_database_url(
        "postgresql://us%40er:" + "a%20b'c%5Cd%40e%3Af%2Fg" + "@db/my%20db"
    )
    assert conninfo_to_dict(url.conninfo) == {
        "dbname": "my db",
        "host": "db",
        "user": "us@er",
        "password": password,
    }
    assert password not in repr(url) and password not in str(url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("mysql://dk@db/dk", "unsupported database URL scheme 'mysql'"),
        ("redis://localhost:6379/0", "unsupported database URL scheme"),
        ("postgresql://dk@db:5432", "names no database"),
        ("postgresql://dk@db:5432/", "names no database"),
        ("postgresql://dk@db/a/b", "names no database"),
        ("postgresql:dk", "postgresql://user@host:port/dbname"),
        ("postgresql://dk@db:54x2/dk", "bad port"),
        ("postgresql://dk@db:0/dk", "bad port"),
        ("postgresql://dk@db:70000/dk", "bad port"),
        ("postgresql://dk@db:/dk", "empty port"),
        ("postgresql://dk@db/dk?sslmod=require", "unknown option 'sslmod'"),
        ("postgresql://dk@db/dk?sslmode=sometimes", "bad sslmode"),
        ("postgresql://dk@db/dk?sslmode=require&sslmode=disable", "twice"),
        ("postgresql://dk@db/dk?connect_timeout=soon", "must be a number"),
        ("postgresql://dk@db/dk?port=99999", "bad port"),
        ("postgresql://dk@db/dk?sslmode", "malformed query"),
        ("postgresql://dk@a,b/dk", "several hosts"),
        ("postgresql://dk@db/dk#frag", "fragment"),
        ("sqlite://otherhost/tmp/dk.db", "names a file on this machine"),
        ("sqlite:///", "names no file"),
        ("sqlite:", "names no file"),
        ("sqlite:///tmp/dk.db?mode=ro", "take no options"),
    ],
)
def test_bad_settings_say_what_is_wrong(text, expected):
    with pytest.raises(DatabaseUrlError, match=expected.replace("?", r"\?")):
        parse_database_url(text)


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://dk:{SECRET}@db:99999/dk",
        f"postgresql://dk:{SECRET}@db/",
        f"postgresql://dk:{SECRET}@db/dk?sslmode=bogus",
        f"postgresql://dk:{SECRET}@db/dk?nope=1",
    ],
)
def test_errors_never_echo_the_password(text):
    with pytest.raises(DatabaseUrlError) as info:
        parse_database_url(text)
    assert SECRET not in str(info.value)


def test_conninfo_connects_to_the_private_server(pg_server):
    """The password (random, with awkward characters allowed) reaches libpq
    intact: a real connection over TCP with password authentication."""
    url = parse_database_url(pg_server.url("postgres"))
    if pg_server.password is not None:  # the private server always has one
        assert url.has_password
        assert pg_server.password not in str(url)
    with psycopg.connect(url.conninfo, connect_timeout=10) as conn:
        row = conn.execute("SELECT current_user, inet_server_addr()::text").fetchone()
    assert row[0] == pg_server.user
    assert row[1] in ("127.0.0.1/32", "127.0.0.1")
