"""The inventory's dry run: counts and sizes asked of the database, and an estimate with its basis."""

from __future__ import annotations

import math

from decom.adapter import Capability
from decom.engine import StageContext, StagePlan
from decom.errors import UserError


def plan_inventory(ctx: StageContext) -> StagePlan:
    from decom.stages.inventory import hash_speed_bytes_per_second

    spec = ctx.stage_spec
    adapter = ctx.adapter
    result = StagePlan(ctx.stage_name, "inventory", True,
                       f"inventory of {adapter.describe()}")
    entities = adapter.entities()
    for entity in entities:
        result.counts[entity] = adapter.count(entity)
    result.actions.append(f"record the freeze point ({spec.freeze_at.isoformat() if spec.freeze_at else 'at run time'}"
                          "; and the highest audit event id)")
    result.actions.append(f"export {len(entities)} entities to Parquet under {ctx.stage_dir}")
    missing = [e for e in ("documents", "versions", "users", "permissions") if e not in entities]
    if missing:
        result.risks.append(f"the source mapping gives no {', '.join(missing)}: the inventory cannot cover them")
    if "versions" in entities:
        recorded = int(adapter.aggregate("versions", "size_bytes", "sum") or 0)
        files = result.counts["versions"]
        result.counts["content_bytes_recorded"] = recorded
        if spec.hash_content:
            speed = hash_speed_bytes_per_second()
            steps = math.ceil(files / spec.batch_files) if files else 0
            result.actions.append(f"read and SHA-256 {files} content objects ({recorded:,} bytes recorded) "
                                  f"in {steps} checkpointed steps of up to {spec.batch_files}")
            result.estimates["hash_seconds"] = round(recorded / speed, 1)
            result.estimates["basis"] = (f"SHA-256 measured on this machine at {speed / 1e6:.0f} MB/s; "
                                         "reading from the content store may be slower")
        else:
            result.decisions.append("hash_content is off: backup and final checks will have no inventory "
                                    "hashes to compare against")
        if Capability.CONTENT_FILES in adapter.capabilities:
            root = ctx.plan.source_config().content_root
            if root is None or not root.is_dir():
                result.blockers.append(f"content root {root} is not a folder: no content can be read")
            else:
                result.actions.append(f"look for files under {root} that no record references")
    if "events" in entities and spec.freeze_at:
        result.counts["events_total"] = result.counts.get("events", 0)
    if not entities:
        raise UserError("the source adapter provides no entities: check its mapping")
    return result
