"""The six stages of a decommission, one module each, in the order a plan runs them.

inventory, access_audit, backup, handover, shutdown, final_checks. REGISTRY lists the ones
this version implements; the others are known to the plan schema and reported "not available yet".
"""

from __future__ import annotations

from typing import Any

from decom.stages import access_audit, backup, final_checks, handover, inventory, shutdown

REGISTRY: dict[str, Any] = {"inventory": inventory, "access_audit": access_audit, "backup": backup,
                            "handover": handover, "shutdown": shutdown, "final_checks": final_checks}
