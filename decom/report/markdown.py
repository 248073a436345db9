"""The dry-run report's data (also written as JSON) and its Markdown rendering.

`report_data` is the one source of every export: the HTML (decom.report.html), the Markdown here
and the JSON file show the same header, verdict, blockers, findings by severity, open decisions
and stages. Findings tables are capped at FINDINGS_TABLE_LIMIT rows per severity; the JSON holds all.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from decom.engine import StagePlan
from decom.findings import SEVERITIES, count_by_severity
from decom.report.charts import chart_rows, chart_value, format_value, label

FINDINGS_TABLE_LIMIT = 200
HEADER_FIELDS = (("Owner", "owner"), ("Ticket", "ticket"), ("Plan file", "file"), ("Plan SHA-256", "sha256"),
                 ("Source", "source"), ("Generated", "generated_at"))
MORE_NOTE = "see the exports: plan-report.json lists every finding with its evidence"


def report_data(header: dict[str, Any], stages: list[StagePlan]) -> dict[str, Any]:
    """Everything the report shows, JSON-able: header, stages, blockers, risks, decisions, findings, charts."""
    blockers = [f"{s.stage}: {b}" for s in stages for b in s.blockers]
    order = {s.stage: index for index, s in enumerate(stages)}
    findings = [{"stage": s.stage, **asdict(f)} for s in stages for f in s.findings]
    findings.sort(key=lambda f: (SEVERITIES.index(f["severity"]), order[f["stage"]], f["kind"], f["subject"]))
    stage_dicts = []
    for stage in stages:
        item = asdict(stage)
        item["finding_counts"] = count_by_severity(stage.findings)
        stage_dicts.append(item)
    return {"plan": header, "stages": stage_dicts, "blockers": blockers,
            "accepted": [f"{s.stage}: {a}" for s in stages for a in s.accepted],
            "risks": [f"{s.stage}: {r}" for s in stages for r in s.risks],
            "decisions": [f"{s.stage}: {d}" for s in stages for d in s.decisions],
            "ready": not blockers,
            "findings": findings,
            "finding_counts": count_by_severity(s_f for s in stages for s_f in s.findings),
            "charts": {s.stage: {title: dict(values) for title, values in s.charts.items()} for s in stages}}


def split_estimates(estimates: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A stage's estimates as (values, bases): 'basis' and '<name>_basis' keys say how a value was found."""
    values = {k: v for k, v in estimates.items() if k != "basis" and not k.endswith("_basis")}
    bases = [("" if k == "basis" else label(k.removesuffix("_basis")), str(v)) for k, v in estimates.items()
             if (k == "basis" or k.endswith("_basis")) and v]
    return values, bases


def findings_by_severity(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The report's findings grouped by severity, most severe first, only severities that have some."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for finding in data["findings"]:
        groups.setdefault(finding["severity"], []).append(finding)
    return {severity: groups[severity] for severity in SEVERITIES if severity in groups}


def verdict(data: dict[str, Any]) -> str:
    count = len(data["blockers"])
    if data["ready"]:
        return "Ready to run: no blockers."
    return f"Not ready: {count} blocker{'s' if count != 1 else ''}."


# -- Markdown -------------------------------------------------------------------------------------

_CODE_SPAN = re.compile(r"(`[^`\n]*`)")


def md(text: Any, *, cell: bool = False) -> str:
    """Text from the data as inert Markdown: no HTML, no broken tables; `code spans` are kept."""
    parts = _CODE_SPAN.split(" ".join(str(text).splitlines()))
    out = []
    for index, part in enumerate(parts):
        if index % 2 == 0:  # outside code spans
            part = part.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>")
        if cell:
            part = part.replace("|", "\\|")
        out.append(part)
    return "".join(out)


def _bullets(items: list[str]) -> list[str]:
    return [f"- {md(item)}" for item in items] or ["- none"]


def _findings_markdown(data: dict[str, Any]) -> list[str]:
    counts = data["finding_counts"]
    lines = ["| severity | findings |", "|---|---:|"]
    lines += [f"| {severity} | {counts.get(severity, 0):,} |" for severity in SEVERITIES]
    lines.append(f"| **total** | **{sum(counts.values()):,}** |")
    lines.append("")
    for severity, items in findings_by_severity(data).items():
        lines += [f"### {severity.capitalize()} ({len(items):,})", "",
                  "| stage | kind | subject | message |", "|---|---|---|---|"]
        lines += [f"| {md(f['stage'], cell=True)} | {md(f['kind'], cell=True)} | {md(f['subject'], cell=True)} "
                  f"| {md(f['message'], cell=True)} |" for f in items[:FINDINGS_TABLE_LIMIT]]
        if len(items) > FINDINGS_TABLE_LIMIT:
            lines += ["", f"… and {len(items) - FINDINGS_TABLE_LIMIT:,} more — {MORE_NOTE}."]
        lines.append("")
    return lines


def _stage_markdown(number: int, stage: dict[str, Any]) -> list[str]:
    state = "" if stage["available"] else " — NOT AVAILABLE YET"
    lines = [f"### {number}. {md(stage['stage'])} ({md(stage['kind'])}){state}", "", md(stage["summary"]), ""]
    if not stage["available"]:
        lines += ["This stage is not built in this version of decom: `decom run` stops before it.", ""]
    if stage["actions"]:
        lines += ["What `decom run` would do:", ""] + [f"- {md(a)}" for a in stage["actions"]] + [""]
    if stage["counts"]:
        lines += ["| what | count |", "|---|---:|"]
        lines += [f"| {md(label(k), cell=True)} | {md(format_value(k, v), cell=True)} |"
                  for k, v in stage["counts"].items()] + [""]
    estimates, bases = split_estimates(stage["estimates"])
    if estimates or bases:
        lines += ["Estimates:", ""] + [f"- {md(label(k))}: {md(format_value(k, v))}" for k, v in estimates.items()]
        lines += [f"- basis{f' of {md(name)}' if name else ''}: {md(text)}" for name, text in bases] + [""]
    for title, key in (("Blockers", "blockers"), ("Risks", "risks"), ("Decisions", "decisions")):
        if stage[key]:
            lines += [f"{title}:", ""] + [f"- {md(x)}" for x in stage[key]] + [""]
    found = {s: n for s, n in stage.get("finding_counts", {}).items() if n}
    if found:
        lines += ["Findings: " + ", ".join(f"{n:,} {s}" for s, n in found.items()) + " (listed under Risks)", ""]
    for title, values in stage["charts"].items():
        rows, _ = chart_rows(values)
        lines += [f"Chart: {md(title)}", "", "| | value |", "|---|---:|"]
        lines += [f"| {md(name, cell=True)} | {md(chart_value(title, v), cell=True)} |" for name, v in rows] + [""]
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    header = data["plan"]
    lines = [f"# Decommission plan: {md(header['name'])}", ""]
    for title, key in HEADER_FIELDS:
        if header.get(key):
            lines.append(f"- **{title}:** {md(header[key])}")
    if header.get("warnings"):
        lines += ["", "Plan warnings:", ""] + _bullets(header["warnings"])
    lines += ["", "This is a dry run: nothing was changed anywhere.", ""]
    lines += ["## Verdict", "", f"**{verdict(data)}**", ""]
    lines += ["## Blockers", ""] + _bullets(data["blockers"]) + [""]
    if data["accepted"]:
        lines += ["Accepted on the record by the plan ([[accept]]):", ""] + _bullets(data["accepted"]) + [""]
    lines += ["## Risks", ""]
    if data["risks"]:
        lines += ["Named by the stages:", ""] + _bullets(data["risks"]) + [""]
    lines += ["Findings by severity:", ""] + _findings_markdown(data)
    lines += ["## Decisions still open for the plan owner", ""] + _bullets(data["decisions"]) + [""]
    lines += ["## Stages", ""]
    for number, stage in enumerate(data["stages"], start=1):
        lines += _stage_markdown(number, stage)
    return "\n".join(lines)
