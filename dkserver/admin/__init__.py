"""Operator commands that run beside the server, not in it (``dkserver port-db``).

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``
so the ``dkserver`` console command can mount it, and runs on its own with
``python -m dkserver.admin.<command>``.  These are short-lived blocking
programs: no reactor runs, so they may call SQLite and psycopg directly.
"""
