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
