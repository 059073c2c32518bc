"""``twistd dkserver``: command-line options and the service they build."""

from __future__ import annotations

import os
import sys

from twisted.python import usage

from dkserver import __version__
from dkserver.config import Config, ConfigError, from_sources


class Options(usage.Options):
    longdesc = (
        "The DistributedKnowledge messaging server: HTTPS (REST and the "
        "WebSocket) and a plain-HTTP redirect. Environment variables give the "
        "defaults; options override them."
    )
    optFlags = [
        [
            "proxy-protocol",
            None,
            "Expect a PROXY protocol v1/v2 header (from a TCP load balancer) on "
            "the HTTPS listener; only the balancer may reach it then "
            "[env DK_PROXY_PROTOCOL]",
        ],
    ]
    optParameters = [
        [
            "https",
            None,
            None,
            "HTTPS address: host:port, :port or an endpoint "
            "description [env SERVER_ADDR, default :443]",
        ],
        ["http", None, None, "Redirect address, or 'none' [default :80]"],
        [
            "db",
            None,
            None,
            "SQLite file or postgresql://user@host:port/dbname "
            "[env DK_DB, default dkserver.db]",
        ],
        [
            "redis",
            None,
            None,
            "redis://host:port/db: run as one node of a cluster (needs a "
            "PostgreSQL --db) [env DK_REDIS_URL]",
        ],
        [
            "node-id",
            None,
            None,
            "This node's name in the cluster [env DK_NODE_ID, default host:port]",
        ],
        ["cert", None, None, "PEM certificate (chain) [default certs/server.pem]"],
        ["key", None, None, "PEM private key [default certs/server.key]"],
        ["rate", None, None, "Messages per second per user [env MESSAGE_RATE_LIMIT]"],
        ["burst", None, None, "Message burst per user [env MESSAGE_BURST_LIMIT]"],
        [
            "login-rate",
            None,
            None,
            "Login requests per second per IP and per user [env LOGIN_RATE_LIMIT]",
        ],
        ["login-burst", None, None, "Login burst [env LOGIN_BURST_LIMIT]"],
        ["admins", None, None, "Comma-separated admin user ids [env DK_ADMIN_USERS]"],
        [
            "allowed-origins",
            None,
            None,
            "Comma-separated browser origins allowed on /ws [env DK_ALLOWED_ORIGINS]",
        ],
        [
            "sqlite-synchronous",
            None,
            None,
            "NORMAL or FULL [env DK_SQLITE_SYNCHRONOUS]",
        ],
        [
            "log-format",
            None,
            None,
            "text, or json: one JSON object per log event, to where twistd "
            "logs (stdout with -n, or --logfile) [env DK_LOG_FORMAT, "
            "default text]",
        ],
    ]

    def opt_version(self) -> None:
        """Show the versions of dkserver, Twisted and Autobahn and exit."""
        print(version_text())
        sys.exit(0)

    def postOptions(self) -> None:
        try:
            self.config = build_config(self)
        except ConfigError as e:
            raise usage.UsageError(str(e))


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"dkserver {__version__}"]
    for dist in ("Twisted", "autobahn"):
        try:
            lines.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            lines.append(f"{dist} (not installed)")
    return "\n".join(lines)


def build_config(options) -> Config:
    return from_sources(
        {
            "https": options["https"],
            "http": options["http"],
            "db": options["db"],
            "redis": options["redis"],
            "node_id": options["node-id"],
            "cert": options["cert"],
            "key": options["key"],
            "rate": options["rate"],
            "burst": options["burst"],
            "login_rate": options["login-rate"],
            "login_burst": options["login-burst"],
            "admins": options["admins"],
            "allowed_origins": options["allowed-origins"],
            "sqlite_synchronous": options["sqlite-synchronous"],
            "log_format": options["log-format"],
            # An unset flag is 0: leave it to the environment then.
            "proxy_protocol": True if options["proxy-protocol"] else None,
        },
        os.environ,
    )


def _twistd_options(options: Options):
    """twistd's own options (``--logfile``, ``-n``, ``--syslog``): the parent
    of ours under ``twistd dkserver``; from the command line under a ``.tac``
    (``twistd -ny dkserver.tac``), where nothing hands them to us."""
    parent = getattr(options, "parent", None)
    if parent is not None:
        return parent
    from twisted.scripts.twistd import ServerOptions

    try:
        found = ServerOptions()
        found.parseOptions(sys.argv[1:])
    except (usage.UsageError, SystemExit):
        return None
    return found


def _text_to_stdout(twistd_options) -> bool:
    """Whether twistd would write its text log to stdout (``-n`` without
    ``--logfile``, or ``--logfile -``) with its own observer: then
    dkserver's (dkserver.textlog) writes the same lines, for less CPU.
    A log file, ``--syslog`` and ``--logger`` stay twistd's."""
    if twistd_options is None:
        return False
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return False
    name = twistd_options.get("logfile") or ""
    return name == "-" or (bool(twistd_options.get("nodaemon")) and not name)


def makeService(options: Options):
    from twisted.internet import reactor

    from dkserver.cluster.secret import preflight_secret_txn
    from dkserver.service import DkService, tune_gc
    from dkserver.store import StoreError, preflight_database

    config = options.config
    try:
        preflight_database(
            config.database,
            config.db_connect_timeout,
            preflight_secret_txn if config.secret_in_database else None,
            waiting=lambda reason: sys.stderr.write(
                f"dkserver: PostgreSQL is not up yet ({reason}); waiting up to"
                f" {config.db_connect_timeout:g} s\n"
            ),
        )
    except (StoreError, ValueError, OSError) as e:
        sys.stderr.write(f"dkserver: DK_DB: {e}\n")
        sys.exit(1)
    observer = None
    if config.log_format == "json":
        twistd_options = _twistd_options(options)
        if twistd_options is not None and twistd_options.get("syslog"):
            sys.stderr.write(
                "dkserver: DK_LOG_FORMAT: json goes to stdout or --logfile, "
                "not --syslog\n"
            )
            sys.exit(1)
        from dkserver.logs import json_observer, log_target

        observer = json_observer(log_target(twistd_options))
    elif _text_to_stdout(_twistd_options(options)):
        from dkserver.textlog import text_observer

        observer = text_observer(sys.stdout)
    try:
        service = DkService(config, reactor)
        service.log_observer = observer
        service.install_signal_handlers()
        tune_gc()
        return service
    except (ConfigError, ValueError, OSError) as e:
        # twistd turns an exception here into a traceback; one line is clearer.
        sys.stderr.write(f"dkserver: {e}\n")
        sys.exit(1)
