"""The storage layer's own errors, so callers never see a driver exception."""

from __future__ import annotations


class StoreError(Exception):
    """A storage operation failed in a way the caller should report or stop on."""


class UserExists(StoreError):
    """Registration named a user id that is already taken (HTTP 409)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} already exists")
        self.user_id = user_id


class DatabaseUnusable(StoreError, ValueError):
    """The file is not a database this dkserver can use (corrupt, newer schema).

    Also a `ValueError`, so startup code that reports bad configuration
    reports this the same way, in one line.
    """


class IntegrityError(StoreError):
    """A statement violated a constraint (unknown user, duplicate key), on
    whichever backend runs."""


class NulNotStorable(StoreError):
    """Text with a U+0000 character, which PostgreSQL cannot store."""

    def __init__(self) -> None:
        super().__init__("text with a NUL character cannot be stored on PostgreSQL")


#: Why the database cannot be written, as `StoreUnavailable.cause` names it
#: (in the writer's warning and docs/operating/storage-faults.md).
UNAVAILABLE = "database unavailable"
DISK_FULL = "disk full"
READ_ONLY = "read-only"
LOCKED = "locked"
PERMISSION_DENIED = "permission denied"
IO_ERROR = "I/O error"


class StoreUnavailable(StoreError):
    """The database cannot be reached or written: down, restarting, the
    connection broke, the disk is full, the file or database is read-only,
    another process holds the lock, the role lost its rights.  Retrying
    later may work; REST answers 503 and a sender is told to resend.  The
    failed operation stored nothing, except when the connection broke
    during ``COMMIT``, whose outcome the client cannot know
    (:attr:`in_doubt`).  :attr:`cause` is one of the names above."""

    def __init__(
        self, reason: str, *, in_doubt: bool = False, cause: str = UNAVAILABLE
    ) -> None:
        doubt = " (during COMMIT: outcome unknown)" if in_doubt else ""
        prefix = cause if cause == UNAVAILABLE else f"database not writable ({cause})"
        super().__init__(f"{prefix}: {reason}{doubt}")
        self.in_doubt = in_doubt
        self.cause = cause
