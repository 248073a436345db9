"""The only exceptions decom expects. Anything else is a bug and exits 1 with a --debug hint."""

from __future__ import annotations


class UserError(Exception):
    """Something the user must fix (plan, key, host, database, disk). The CLI prints one line, exit 2."""

    exit_code = 2


class IncompleteError(UserError):
    """The run stopped on purpose before the plan was done (a stage not available, a blocker). Exit 3."""

    exit_code = 3
