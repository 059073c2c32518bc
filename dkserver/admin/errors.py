"""What an admin command stops on: one line for the operator and an exit code.

Exit codes, for every ``dkserver`` admin command: 0 done; 2 nothing was done
because of what was asked or configured (bad arguments, an unknown user, a
missing database file, a database at another schema version); 1 the
operation was attempted and failed (PostgreSQL unreachable or failing, a
copy that does not verify, a full disk).
"""

from __future__ import annotations


class AdminError(Exception):
    """The command cannot run as asked; nothing was changed.  Exit code 2."""

    exit_code = 2


class OperationFailed(AdminError):
    """The command ran and failed (the database went away, a write failed).
    Exit code 1."""

    exit_code = 1


class CopyFailed(OperationFailed):
    """The copy stopped part way; what was committed stays, a rerun resumes."""


class VerificationFailed(OperationFailed):
    """Source and target differ after the copy."""
