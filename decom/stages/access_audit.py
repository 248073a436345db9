"""Access audit stage: who can reach which documents, which accounts are a risk, then the lock-down.

Steps: `analyse` (read users, groups, memberships, rules, folders and documents from the source;
export users and effective permissions), `directory` (only with an `ldap` table: each login's
status in the directory), `findings` (account and document findings, exported), then the
lock-down steps of `decom.stages.lockdown`. Every step reads what earlier steps wrote to the
state folder, never memory, so a run resumed after a crash gives the same files.

Exports (CSV and Parquet) go to `<state>/stages/<stage>/exports/`: users, permissions, findings.
The analysis itself is in `access_analysis.py`; the directory client in `decom/remote/ldap.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from decom.engine import StageContext, StagePlan, Step
from decom.errors import UserError
from decom.fileio import atomic_path, write_table
from decom.findings import Finding, count_by_severity, findings_table, sort_findings
from decom.remote.ldap import DirectoryConfig, DirectoryStatus, check_logins
from decom.stages import lockdown
from decom.stages.access_analysis import (
    EVERYONE_SCHEMA,
    PERMISSIONS_SCHEMA,
    USERS_SCHEMA,
    AccessModel,
    account_findings,
    count_by_kind,
    everyone_findings,
    risk_lines,
)

EXPORT_NAMES = ("users", "permissions", "findings")
DIRECTORY_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("login", pa.string()), ("is_active", pa.bool_()), ("status", pa.string()),
    ("reason", pa.string()), ("dn", pa.string()),
])
_SOURCE_ENTITIES = ("users", "groups", "memberships", "permissions", "folders")


# -- reading the source -----------------------------------------------------------------------------

def freeze_point(ctx: StageContext) -> tuple[datetime, str]:
    """The moment dormancy is measured from: the inventory's freeze_at in the plan, else now."""
    for stage in ctx.plan.spec.stages:
        freeze_at = getattr(stage, "freeze_at", None) if stage.kind == "inventory" else None
        if isinstance(freeze_at, datetime):
            return freeze_at.astimezone(UTC), f"freeze_at of stage {stage.name!r}"
    return datetime.now(UTC), "time the audit ran"


def _rows(ctx: StageContext, entity: str) -> list[dict[str, Any]]:
    if entity not in ctx.adapter.entities():
        return []
    return [row for batch in ctx.adapter.read(entity) for row in batch.to_pylist()]


def _documents(ctx: StageContext) -> Iterator[dict[str, Any]]:
    if "documents" not in ctx.adapter.entities():
        return
    for batch in ctx.adapter.read("documents"):
        yield from batch.select(["document_id", "folder_id", "title"]).to_pylist()


def build_model(ctx: StageContext) -> AccessModel:
    if "users" not in ctx.adapter.entities():
        raise UserError(f"stage {ctx.stage_name}: the source gives no users (check its mapping); "
                        "the access audit needs them")
    tables = {entity: _rows(ctx, entity) for entity in _SOURCE_ENTITIES}
    return AccessModel(tables["users"], tables["groups"], tables["memberships"], tables["permissions"],
                       tables["folders"])


def directory_config(ctx: StageContext) -> DirectoryConfig | None:
    """The plan's ldap table with the bind password resolved; None when the stage has no ldap table."""
    ldap = ctx.stage_spec.ldap
    if ldap is None:
        return None
    password = ctx.plan.secret(ldap.bind_password, ldap.bind_password_file, "ldap.bind_password")
    return DirectoryConfig(url=ldap.url, base_dn=ldap.base_dn, bind_dn=ldap.bind_dn, bind_password=password,
                           login_attribute=ldap.login_attribute, user_filter=ldap.user_filter,
                           start_tls=ldap.start_tls, ca_file=ctx.plan.resolve(ldap.ca_file) if ldap.ca_file else None,
                           timeout_seconds=ldap.timeout_seconds)


def _directory_rows(users: Sequence[Mapping[str, Any]], statuses: list[DirectoryStatus]) -> list[dict[str, Any]]:
    return [{"user_id": str(u["user_id"]), "login": s.login, "is_active": bool(u["is_active"]), "status": s.status,
             "reason": s.reason, "dn": s.dn} for u, s in zip(users, statuses, strict=True)]


def _findings(users: Sequence[Mapping[str, Any]], everyone: Sequence[Mapping[str, Any]],
              directory: Sequence[Mapping[str, Any]] | None, ctx: StageContext, as_of: datetime) -> list[Finding]:
    spec = ctx.stage_spec
    by_login = None if directory is None else {str(row["login"]): row for row in directory}
    found = account_findings(users, as_of=as_of, dormant_days=spec.dormant_days,
                             patterns=spec.shared_account_patterns, directory=by_login,
                             directory_url=spec.ldap.url if spec.ldap else None)
    return sort_findings([*found, *everyone_findings(everyone)])


# -- the dry run ---------------------------------------------------------------------------------------

def plan(ctx: StageContext) -> StagePlan:
    spec = ctx.stage_spec
    as_of, basis = freeze_point(ctx)
    model = build_model(ctx)
    for _ in model.effective(_documents(ctx)):
        pass
    users = model.user_rows()
    result = StagePlan(ctx.stage_name, "access_audit", True, f"access audit of {ctx.adapter.describe()}")
    directory: list[dict[str, Any]] | None = None
    ldap = spec.ldap
    if ldap is not None:
        try:
            config = directory_config(ctx)
            if config is not None:
                directory = _directory_rows(users, check_logins(config, [u["login"] for u in users]))
        except UserError as exc:
            result.blockers.append(f"directory check: {exc}")
    findings = _findings(users, model.everyone, directory, ctx, as_of)
    by_kind = count_by_kind(findings)
    result.findings = findings
    result.risks = risk_lines(findings)
    result.charts = {"findings by kind": {kind: float(n) for kind, n in by_kind.items() if n}}
    result.counts = {
        "users": len(users), "active": sum(1 for u in users if u["is_active"]),
        "disabled": sum(1 for u in users if not u["is_active"]), "admins": sum(1 for u in users if u["is_admin"]),
        "documents": model.documents, "permission_rules": model.rules,
        "effective_permission_rows": model.permission_rows, "documents_open_to_everyone": len(model.everyone),
    }
    if directory is not None:
        for status in ("present", "disabled", "missing"):
            result.counts[f"directory_{status}"] = sum(1 for row in directory if row["status"] == status)
    exports = ctx.stage_dir / "exports"
    result.actions.append(f"export users, effective permissions and findings (CSV and Parquet) to {exports}")
    if ldap is not None:
        result.actions.append(f"check {len(users)} logins against the directory {ldap.url} "
                              f"({ldap.login_attribute} under {ldap.base_dn})")
    cutoff = as_of - timedelta(days=spec.dormant_days)
    result.actions.append(f"judge accounts as of {as_of.isoformat()} ({basis}): dormant when active with no "
                          f"login since {cutoff.isoformat()} ({spec.dormant_days} days)")
    if not spec.shared_account_patterns:
        result.decisions.append("no shared_account_patterns: shared accounts are not looked for")
    if ldap is None:
        result.decisions.append("no ldap table: departed and directory-disabled accounts are not looked for")
    if users and not any(u["last_login_known"] for u in users):
        result.risks.append("the source keeps no last login: dormant and never-used accounts cannot be found")
    try:
        actions = lockdown.describe(ctx, users, findings)
        result.blockers.extend(lockdown.blockers(ctx))
    except UserError as exc:
        result.blockers.append(str(exc))
    else:
        if directory is None and ldap is not None and {"departed", "directory_disabled"} & set(spec.lockdown.disable):
            actions.append("(accounts the directory would select are not listed: the directory did not answer)")
        result.actions.extend(actions)
    return result


# -- the steps -----------------------------------------------------------------------------------------

def exports_dir(ctx: StageContext) -> Path:
    return ctx.stage_dir / "exports"


def _relative(ctx: StageContext, path: Path) -> str:
    return str(path.relative_to(ctx.state_dir))


def write_export(ctx: StageContext, name: str, table: pa.Table) -> Path:
    """<name>.csv then <name>.parquet, each atomically; returns the Parquet path (written last)."""
    target = exports_dir(ctx) / f"{name}.parquet"
    with atomic_path(target.with_suffix(".csv")) as tmp:
        pacsv.write_csv(table, tmp)
        ctx.crashpoint("inside")
    write_table(target, table, lambda: ctx.crashpoint("inside"))
    return target


def _analyse(ctx: StageContext) -> dict[str, Any]:
    as_of, basis = freeze_point(ctx)
    model = build_model(ctx)
    target = exports_dir(ctx) / "permissions.parquet"
    with ExitStack() as files:
        parquet_tmp = files.enter_context(atomic_path(target))
        csv_tmp = files.enter_context(atomic_path(target.with_suffix(".csv")))
        parquet = files.enter_context(pq.ParquetWriter(parquet_tmp, PERMISSIONS_SCHEMA, compression="zstd"))
        csv = files.enter_context(pacsv.CSVWriter(csv_tmp, PERMISSIONS_SCHEMA))
        total, bar_done = (ctx.adapter.count("documents") if "documents" in ctx.adapter.entities() else 0), 0
        with ctx.progress.bar(total, "effective permissions", unit="doc") as bar:
            for rows in model.effective(_documents(ctx)):
                batch = pa.RecordBatch.from_pylist(rows, schema=PERMISSIONS_SCHEMA)
                parquet.write_batch(batch)
                csv.write_batch(batch)
                bar.update(model.documents - bar_done)
                bar_done = model.documents
        parquet.close()
        csv.close()
        ctx.crashpoint("inside")
    write_table(ctx.stage_dir / "everyone.parquet", pa.Table.from_pylist(model.everyone, schema=EVERYONE_SCHEMA),
                lambda: ctx.crashpoint("inside"))
    users = model.user_rows()
    users_file = write_export(ctx, "users", pa.Table.from_pylist(users, schema=USERS_SCHEMA))
    return {"file": _relative(ctx, users_file), "as_of": as_of.isoformat(), "as_of_basis": basis,
            "users": len(users), "active": sum(1 for u in users if u["is_active"]),
            "admins": sum(1 for u in users if u["is_admin"]), "documents": model.documents,
            "permission_rules": model.rules, "permission_rows": model.permission_rows,
            "documents_open_to_everyone": len(model.everyone)}


def _users(ctx: StageContext) -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = pq.read_table(exports_dir(ctx) / "users.parquet").to_pylist()
    return users


def _directory(ctx: StageContext) -> dict[str, Any]:
    config = directory_config(ctx)
    if config is None:  # the plan lost its ldap table since the step was planned
        raise UserError(f"stage {ctx.stage_name}: no ldap table to check the directory with")
    users = _users(ctx)
    rows = _directory_rows(users, check_logins(config, [u["login"] for u in users]))
    path = ctx.stage_dir / "directory.parquet"
    write_table(path, pa.Table.from_pylist(rows, schema=DIRECTORY_SCHEMA), lambda: ctx.crashpoint("inside"))
    counts = {status: sum(1 for r in rows if r["status"] == status) for status in ("present", "disabled", "missing")}
    return {"file": _relative(ctx, path), "url": config.url, "checked": len(rows), **counts}


def _findings_step(ctx: StageContext) -> dict[str, Any]:
    directory = None
    if "directory" in ctx.outputs:
        directory = pq.read_table(ctx.state_dir / ctx.outputs["directory"]["file"]).to_pylist()
    everyone = pq.read_table(ctx.stage_dir / "everyone.parquet").to_pylist()
    as_of = datetime.fromisoformat(ctx.outputs["analyse"]["as_of"])
    findings = _findings(_users(ctx), everyone, directory, ctx, as_of)
    target = write_export(ctx, "findings", findings_table(findings))
    return {"file": _relative(ctx, target), "findings": len(findings),
            "by_severity": count_by_severity(findings),
            "by_kind": {kind: n for kind, n in count_by_kind(findings).items() if n}}


def read_findings(path: Path) -> list[Finding]:
    """Findings back from an export (evidence is stored as JSON text)."""
    return [Finding(row["severity"], row["kind"], row["subject"], row["message"], json.loads(row["evidence"]))
            for row in pq.read_table(path).to_pylist()]


def run(ctx: StageContext) -> Iterator[Step]:
    spec = ctx.stage_spec
    yield Step("analyse", "read accounts, groups and rights; export users and effective permissions", _analyse)
    if spec.ldap is not None:
        ldap = spec.ldap
        yield Step("directory", f"check every login against the directory {ldap.url}", _directory,
                   {"url": ldap.url, "base_dn": ldap.base_dn, "login_attribute": ldap.login_attribute,
                    "user_filter": ldap.user_filter})
    yield Step("findings", "find risky accounts and documents open to everyone; export the findings",
               _findings_step, {"dormant_days": spec.dormant_days,
                                "shared_account_patterns": list(spec.shared_account_patterns)})
    users = _users(ctx)
    findings = read_findings(ctx.state_dir / ctx.outputs["findings"]["file"])
    yield from lockdown.steps(ctx, users, findings)
