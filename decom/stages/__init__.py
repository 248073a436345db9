"""The six stages of a decommission, one module each, in the order a plan runs them.

inventory, access_audit, backup, handover, shutdown, final_checks: the module decom.stages.<kind>
implements each kind; which kinds this version has is decom.plan.AVAILABLE_STAGE_KINDS, checked by
the engine. `module(kind)` imports only that one, so a run of one stage does not pay for loading
the others (SSH, LDAP, reports: ~0.25 s of start-up).
"""

from __future__ import annotations

import importlib
from types import ModuleType


def module(kind: str) -> ModuleType:
    """The module implementing an available stage kind, imported on first use."""
    return importlib.import_module(f"decom.stages.{kind}")
