"""The only exceptions decom expects. Anything else is a bug and exits 1 with a --debug hint."""

from __future__ import annotations


class UserError(Exception):
    """Something the user must fix (plan, key, host, database, disk). The CLI prints one line, exit 2."""

    exit_code = 2


class IncompleteError(UserError):
    """The run stopped on purpose before the plan was done (a stage not available, a blocker). Exit 3."""

    exit_code = 3


class ArchiveIntegrityError(UserError):
    """An archive does not match its signed manifest: nothing unverified is used or restored. Exit 1."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """One line describing a library's exception for a UserError: the first non-blank line of its message
    (the driver's own message under SQLAlchemy's wrapper, which adds SQL and a help link), or the
    exception's type name when the message is empty."""
    inner = getattr(exc, "orig", None) or exc
    for line in str(inner).splitlines():
        if line.strip():
            return line.strip()
    return type(inner).__name__
