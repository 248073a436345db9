"""Final checks stage: prove that the old system is gone, and look at what happened after the freeze.

One step, `checks`, which runs every check of the plan (decom/stages/final_probes.py) — each pass,
fail or unknown, with its evidence — and the activity analysis (decom/stages/activity.py) of the
source's audit events and of log files fetched over SSH, after the inventory's freeze point. It writes
`checks.json` and `checks.parquet` (one row per check) and `findings.parquet`/`findings.csv`, then
fails (exit 2) if any check failed or could not say, unless the plan accepts it: an [[accept]] of this
stage whose `match` is part of the check's line "<id>: <summary>". The step writes its results before
it fails, and a rerun checks everything again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from decom.engine import StageContext, StagePlan, Step
from decom.errors import UserError
from decom.fileio import atomic_path, write_json, write_table
from decom.findings import Finding, count_by_severity, findings_table, sort_findings
from decom.remote.ldap import check_logins
from decom.remote.ssh import RemoteError, connect
from decom.remote.targets import host_address, ssh_target
from decom.stages import activity
from decom.stages import final_probes as probes
from decom.stages.final_probes import FAIL, PASS, UNKNOWN, Check

CHECKS_SCHEMA = pa.schema([("id", pa.string()), ("kind", pa.string()), ("host", pa.string()),
                           ("status", pa.string()), ("summary", pa.string()), ("evidence", pa.string()),
                           ("accepted_by", pa.string())])


def freeze_point(ctx: StageContext) -> tuple[datetime | None, int | None, str]:
    """(freeze time, highest event id at the freeze, where they come from); (None, None, why) when unknown."""
    if ctx.stage_spec.freeze_at is not None:
        return ctx.stage_spec.freeze_at.astimezone(UTC), None, f"freeze_at of stage {ctx.stage_name!r}"
    for stage in ctx.plan.spec.stages:
        summary = ctx.state_dir / "stages" / stage.name / "summary.json"
        if stage.kind == "inventory" and summary.exists():
            freeze = json.loads(summary.read_text(encoding="utf-8"))["freeze"]
            return (datetime.fromisoformat(freeze["freeze_at"]).astimezone(UTC), freeze.get("max_event_id"),
                    f"the freeze point of stage {stage.name!r} ({summary.relative_to(ctx.state_dir)})")
    return None, None, "no inventory summary in the state folder (run the inventory, or set freeze_at)"


def _listed(ctx: StageContext) -> list[str]:
    """One line per check the stage will make (for the dry run and the step's inputs)."""
    spec = ctx.stage_spec
    lines = []
    for host in spec.hosts:
        lines += [f"port:{host.name}:{port} closed" for port in host.closed_ports]
        lines += [f"http:{host.name}:{url} silent" for url in host.http]
        lines += [f"process:{host.name}:{pattern} gone (pgrep -f over SSH)" for pattern in host.processes]
        lines += [f"timer:{host.name}:{timer} inactive" for timer in host.timers]
        lines += [f"job:{host.name}:{job.file or 'crontab of ' + str(job.user)}:{job.pattern} gone"
                  for job in host.jobs]
        lines += [f"key_file:{host.name}:{path} gone" for path in host.key_files]
        lines += [f"logs:{host.name}:{log.path} ({log.format}) after the freeze" for log in host.logs]
    lines += [f"db_login:{entry.name} fails" for entry in spec.db_logins]
    lines += [f"ssh_refused:{entry.host}:{entry.user} refused" for entry in spec.refused_ssh]
    if spec.users_inactive:
        lines.append("users: every legacy account inactive" + (f" except {', '.join(spec.keep_logins)}"
                                                                if spec.keep_logins else ""))
    if spec.ldap is not None:
        lines.append(f"ldap:{spec.ldap.url}: listed logins absent or locked")
    if spec.activity_after_freeze:
        lines.append("activity:source: the source's audit events after the freeze")
    return lines


def plan(ctx: StageContext) -> StagePlan:
    lines = _listed(ctx)
    result = StagePlan(ctx.stage_name, "final_checks", True, f"{len(lines)} final check(s), run after the shutdown",
                       actions=[f"check {line}" for line in lines])
    _at, _max_id, basis = freeze_point(ctx)
    result.decisions.append(f"activity after the freeze is measured from {basis}")
    result.decisions.append("nothing is connected to or changed by the dry run: the checks prove a state that "
                            "only exists after the shutdown")
    result.counts = {"checks": len(lines), "hosts": len(ctx.stage_spec.hosts)}
    return result


# -- the step --------------------------------------------------------------------------------------------

class _Run:
    def __init__(self, ctx: StageContext) -> None:
        self.ctx, self.spec = ctx, ctx.stage_spec
        self.checks: list[Check] = []
        self.findings: list[Finding] = []
        self.freeze, self.max_event_id, self.freeze_basis = freeze_point(ctx)
        self._users: list[dict[str, Any]] | None = None

    def users(self) -> list[dict[str, Any]]:
        if self._users is None:
            self._users = [row for batch in self.ctx.adapter.read("users") for row in batch.to_pylist()]
        return self._users

    def activity_check(self, check_id: str, host: str, source: str, found: list[Finding]) -> None:
        self.findings += found
        significant = [f for f in found if f.severity in activity.SIGNIFICANT]
        if significant:
            self.checks.append(Check(check_id, "activity", host, FAIL,
                                     f"{len(significant)} finding(s) after the freeze in {source}: "
                                     + "; ".join(f.message for f in significant[:3]),
                                     {"findings": len(found), "by_kind": _by_kind(found)}))
        else:
            self.checks.append(Check(check_id, "activity", host, PASS, f"no access after the freeze in {source}",
                                     {"findings": len(found)}))

    def host(self, host: Any) -> None:
        spec = self.spec
        address = host_address(host, spec, self.ctx.plan.resolve)
        self.checks += [probes.tcp_closed(host.name, address, port, spec.timeout_seconds)
                        for port in host.closed_ports]
        self.checks += [probes.http_silent(host.name, url, spec.timeout_seconds) for url in host.http]
        if not host.needs_ssh():
            return
        try:
            executor = connect(ssh_target(host, spec, self.ctx.plan.resolve), read_only=True)
        except (RemoteError, UserError) as exc:
            for line in _listed_for(host):
                self.checks.append(Check(line, line.split(":", 1)[0], host.name, UNKNOWN,
                                         f"cannot log in to check: {exc}", {"error": str(exc)}))
            return
        timeout = spec.command_timeout
        with executor:
            self.checks += [probes.processes_gone(executor, p, timeout) for p in host.processes]
            self.checks += [probes.timer_inactive(executor, t, timeout) for t in host.timers]
            self.checks += [probes.jobs_gone(executor, j.file, j.user, j.pattern, timeout) for j in host.jobs]
            self.checks += [probes.key_file_gone(executor, path, timeout) for path in host.key_files]
            for log in host.logs:
                self.log(executor, host.name, log)

    def log(self, executor: Any, host: str, log: Any) -> None:
        check_id = f"logs:{host}:{log.path}"
        if self.freeze is None:
            self.checks.append(Check(check_id, "activity", host, UNKNOWN, f"no freeze point: {self.freeze_basis}"))
            return
        text, why = probes.fetch_log(executor, log.path, log.max_mb, self.spec.command_timeout)
        if text is None:
            self.checks.append(Check(check_id, "activity", host, UNKNOWN, why))
            return
        where = {"host": host, "file": log.path}
        spec = self.spec
        if log.format == "combined":
            patterns = activity.Patterns(spec.login_pattern, spec.download_pattern, spec.admin_pattern,
                                         spec.permission_pattern)
            items = list(activity.from_access_log(text, patterns, where))
        else:
            items = list(activity.from_auth_log(text, self.freeze, where))
        found = activity.findings(items, freeze=self.freeze, source=f"{host}:{log.path}",
                                  allowed_networks=spec.allowed_networks,
                                  bulk_per_minute=spec.bulk_downloads_per_minute)
        self.activity_check(check_id, host, f"{host}:{log.path}", found)

    def source_checks(self) -> None:
        spec = self.spec
        if spec.users_inactive:
            self.guarded("users", "users", self.users_check)
        if spec.ldap is not None:
            self.guarded(f"ldap:{spec.ldap.url}", "ldap", self.ldap_check)
        if spec.activity_after_freeze:
            self.guarded("activity:source", "activity", self.events_check)

    def guarded(self, check_id: str, kind: str, check: Any) -> None:
        try:
            check()
        except UserError as exc:  # the source or the directory cannot be read: the check cannot say
            self.checks.append(Check(check_id, kind, "", UNKNOWN, str(exc), {"error": str(exc)}))

    def users_check(self) -> None:
        keep = set(self.spec.keep_logins)
        active = sorted(str(u["login"]) for u in self.users() if u["is_active"] and u["login"] not in keep)
        kept = sorted(str(u["login"]) for u in self.users() if u["is_active"] and u["login"] in keep)
        if active:
            self.checks.append(Check("users", "users", "", FAIL, f"{len(active)} legacy account(s) still active: "
                                     f"{', '.join(active[:10])}{' …' if len(active) > 10 else ''}",
                                     {"active": active[:200], "kept": kept}))
        else:
            self.checks.append(Check("users", "users", "", PASS, "every legacy account is inactive"
                                     + (f" except the kept {', '.join(kept)}" if kept else ""), {"kept": kept}))

    def ldap_check(self) -> None:
        from decom.stages.access_audit import directory_config

        ldap = self.spec.ldap
        keep = set(self.spec.keep_logins)
        legacy = [str(u["login"]) for u in self.users() if u["login"] not in keep] if ldap.legacy_users else []
        logins = list(dict.fromkeys([*ldap.logins, *legacy]))
        config = directory_config(self.ctx)
        assert config is not None
        statuses = check_logins(config, logins)
        present = [s.login for s in statuses if s.status == "present"]
        evidence = {"present": present, "disabled": {s.login: s.reason for s in statuses if s.status == "disabled"},
                    "missing": [s.login for s in statuses if s.status == "missing"]}
        status = FAIL if present else PASS
        summary = (f"{len(present)} login(s) still enabled in the directory: {', '.join(present[:10])}" if present
                   else f"all {len(logins)} login(s) are absent from the directory or locked there")
        self.checks.append(Check(f"ldap:{ldap.url}", "ldap", "", status, summary, evidence))

    def events_check(self) -> None:
        if self.freeze is None:
            self.checks.append(Check("activity:source", "activity", "", UNKNOWN,
                                     f"no freeze point: {self.freeze_basis}"))
            return
        if "events" not in self.ctx.adapter.entities():
            self.checks.append(Check("activity:source", "activity", "", UNKNOWN, "the source keeps no audit events"))
            return
        freeze, max_id = self.freeze, self.max_event_id
        rows = [row for batch in self.ctx.adapter.read("events") for row in batch.to_pylist()
                if (row["occurred_at"] is not None and _utc(row["occurred_at"]) > freeze)
                or (max_id is not None and row["event_id"] is not None and row["event_id"] > max_id)]
        by_id = {str(u["user_id"]): u for u in self.users()}
        items = list(activity.from_events(rows, by_id))
        found = activity.findings(items, freeze=datetime.min.replace(tzinfo=UTC), source="the source's audit events",
                                  allowed_networks=self.spec.allowed_networks,
                                  bulk_per_minute=self.spec.bulk_downloads_per_minute)
        self.activity_check("activity:source", "", "the source's audit events", found)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _by_kind(found: list[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for finding in found:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    return counts


def _listed_for(host: Any) -> list[str]:
    ids = [f"process:{host.name}:{p}" for p in host.processes] + [f"timer:{host.name}:{t}" for t in host.timers]
    ids += [f"job:{host.name}:{j.file or 'crontab of ' + str(j.user)}:{j.pattern}" for j in host.jobs]
    ids += [f"key_file:{host.name}:{path}" for path in host.key_files]
    return ids + [f"logs:{host.name}:{log.path}" for log in host.logs]


def _accept(ctx: StageContext, checks: list[Check]) -> None:
    for check in checks:
        if check.status == PASS:
            continue
        for accepted in ctx.plan.spec.accept:
            if accepted.stage == ctx.stage_name and accepted.match in check.line:
                check.accepted_by = f"{accepted.by}: {accepted.reason}"
                ctx.record("final_check_accepted", check=check.id, status=check.status, accepted_by=accepted.by,
                           reason=accepted.reason)
                break


def _write(ctx: StageContext, run: _Run) -> Path:
    rows = [{"id": c.id, "kind": c.kind, "host": c.host, "status": c.status, "summary": c.summary,
             "evidence": json.dumps(c.evidence, ensure_ascii=False, sort_keys=True, default=str),
             "accepted_by": c.accepted_by} for c in run.checks]
    write_table(ctx.stage_dir / "checks.parquet", pa.Table.from_pylist(rows, schema=CHECKS_SCHEMA))
    findings = sort_findings(run.findings)
    table = findings_table(findings)
    with atomic_path(ctx.stage_dir / "findings.csv") as tmp:
        pacsv.write_csv(table, tmp)
    write_table(ctx.stage_dir / "findings.parquet", table)
    counts = {status: sum(1 for c in run.checks if c.status == status) for status in (PASS, FAIL, UNKNOWN)}
    path = ctx.stage_dir / "checks.json"
    write_json(path, {"stage": ctx.stage_name, "checked_at": datetime.now(UTC).isoformat(),
                      "freeze_at": run.freeze.isoformat() if run.freeze else None, "freeze_basis": run.freeze_basis,
                      "counts": counts, "findings_by_severity": count_by_severity(findings),
                      "checks": [{**c.__dict__} for c in run.checks],
                      "findings": [f.as_row() for f in findings]}, lambda: ctx.crashpoint("inside"))
    return path


def _checks(ctx: StageContext) -> dict[str, Any]:
    run = _Run(ctx)
    for host in ctx.stage_spec.hosts:
        run.host(host)
    for entry in ctx.stage_spec.db_logins:
        url = ctx.plan.secret(entry.url, entry.url_file, f"db_logins {entry.name} url")
        run.checks.append(probes.db_login_fails(entry.name, str(url), ctx.stage_spec.timeout_seconds))
    hosts = {h.name: h for h in ctx.stage_spec.hosts}
    for entry in ctx.stage_spec.refused_ssh:
        target = ssh_target(hosts[entry.host], ctx.stage_spec, ctx.plan.resolve, user=entry.user,
                            key_file=entry.key_file)
        run.checks.append(probes.ssh_refused(replace(target, sudo=False)))  # authentication only
    run.source_checks()
    _accept(ctx, run.checks)
    for check in run.checks:
        ctx.record("final_check", id=check.id, status=check.status, summary=check.summary,
                   accepted_by=check.accepted_by)
    path = _write(ctx, run)
    open_ = [c for c in run.checks if c.status != PASS and c.accepted_by is None]
    if open_:
        shown = "; ".join(f"{c.line} [{c.status}]" for c in open_[:5])
        raise UserError(f"stage {ctx.stage_name}: {len(open_)} of {len(run.checks)} check(s) did not pass: {shown}"
                        f"{' …' if len(open_) > 5 else ''} (details: {path}; a known exception can be accepted "
                        "with [[accept]])")
    return {"file": str(path.relative_to(ctx.state_dir)), "checks": len(run.checks),
            "passed": sum(1 for c in run.checks if c.status == PASS),
            "accepted": sum(1 for c in run.checks if c.accepted_by), "findings": len(run.findings)}


def run(ctx: StageContext) -> Iterator[Step]:
    lines = _listed(ctx)
    yield Step("checks", f"run {len(lines)} final check(s) and analyse activity after the freeze", _checks,
               {"checks": lines})
