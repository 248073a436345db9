"""The six stages of a decommission, one module each, in the order a plan runs them.

inventory, access_audit, backup, handover, shutdown, final_checks. MODULES names the module of
each kind this version implements; `module(kind)` imports only that one, so a run of one stage
does not pay for loading the others (SSH, LDAP, reports: ~0.25 s of start-up).
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES: dict[str, str] = {kind: f"decom.stages.{kind}" for kind in
                           ("inventory", "access_audit", "backup", "handover", "shutdown", "final_checks")}


def module(kind: str) -> ModuleType | None:
    """The module implementing a stage kind, imported on first use; None for an unknown kind."""
    name = MODULES.get(kind)
    return importlib.import_module(name) if name is not None else None
