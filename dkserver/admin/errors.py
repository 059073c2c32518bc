"""What an admin command stops on: one line for the operator and an exit code."""

from __future__ import annotations


class AdminError(Exception):
    """The command cannot run as asked; nothing was changed.  Exit code 2."""

    exit_code = 2


class CopyFailed(AdminError):
    """The copy stopped part way; what was committed stays, a rerun resumes."""

    exit_code = 1


class VerificationFailed(AdminError):
    """Source and target differ after the copy."""

    exit_code = 1
