"""The ``dk`` exit statuses (the table in docs/client.md).

A module of its own, importing nothing, so the parser (:mod:`dkclient.cli`),
the commands (:mod:`dkclient.commands`) and the library's error classes share
one set of numbers without importing each other.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_INITIALISED = 3
EXIT_UNREACHABLE = 4
EXIT_AUTH = 5
EXIT_UNKNOWN_USER = 6
EXIT_MISSING_DEPENDENCY = 7
EXIT_KEY_CHANGED = 8
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
