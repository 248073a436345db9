"""The dry-run report as Markdown and JSON: what each stage would do, counts, estimates, blockers, risks."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from decom.engine import StagePlan


def report_data(header: dict[str, Any], stages: list[StagePlan]) -> dict[str, Any]:
    blockers = [f"{s.stage}: {b}" for s in stages for b in s.blockers]
    return {"plan": header, "stages": [asdict(s) for s in stages], "blockers": blockers,
            "risks": [f"{s.stage}: {r}" for s in stages for r in s.risks],
            "decisions": [f"{s.stage}: {d}" for s in stages for d in s.decisions],
            "ready": not blockers}


def _value(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def render_markdown(data: dict[str, Any]) -> str:
    header = data["plan"]
    lines = [f"# Decommission plan: {header['name']}", ""]
    for label, key in (("Owner", "owner"), ("Ticket", "ticket"), ("Plan file", "file"),
                       ("Plan SHA-256", "sha256"), ("Source", "source"), ("Generated", "generated_at")):
        if header.get(key):
            lines.append(f"- **{label}:** {header[key]}")
    lines += ["", "This is a dry run: nothing was changed anywhere.", ""]
    verdict = "Ready to run." if data["ready"] else f"**Not ready: {len(data['blockers'])} blocker(s).**"
    lines += ["## Verdict", "", verdict, ""]
    for title, key in (("Blockers", "blockers"), ("Risks", "risks"), ("Decisions open for the plan owner",
                                                                      "decisions")):
        lines += [f"## {title}", ""]
        lines += [f"- {item}" for item in data[key]] or ["- none"]
        lines.append("")
    lines += ["## Stages", ""]
    for number, stage in enumerate(data["stages"], start=1):
        state = "" if stage["available"] else " — not available yet"
        lines += [f"### {number}. {stage['stage']} ({stage['kind']}){state}", "", stage["summary"], ""]
        if stage["actions"]:
            lines += ["What `decom run` would do:", ""] + [f"- {a}" for a in stage["actions"]] + [""]
        if stage["counts"]:
            lines += ["| what | count |", "|---|---:|"]
            lines += [f"| {k} | {_value(v)} |" for k, v in stage["counts"].items()] + [""]
        if stage["estimates"]:
            lines += ["Estimates:", ""] + [f"- {k}: {_value(v)}" for k, v in stage["estimates"].items()] + [""]
        for title, key in (("Blockers", "blockers"), ("Risks", "risks")):
            if stage[key]:
                lines += [f"{title}:", ""] + [f"- {x}" for x in stage[key]] + [""]
    return "\n".join(lines)
