"""The decommission record as one self-contained HTML page: for auditors to read and print.

Same house style as the dry-run report (decom.report.html): inline CSS with a print stylesheet, no
script, no external font, image or link, every text from the record escaped. The page is a pure
function of record.json, its SHA-256 and record.sig, so `decom verify-record` can render it again and
notice an edited page.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from decom.findings import SEVERITIES
from decom.report.charts import human_bytes
from decom.report.html import CSS

LIST_LIMIT = 200  # rows of one table shown on the page; record.json holds them all

RECORD_CSS = """
pre { background: #f6f8fa; border: 1px solid var(--line); padding: .5em .7em; white-space: pre-wrap;
  overflow-wrap: anywhere; font-size: .85em; }
.hash { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; overflow-wrap: anywhere; }
table.steps td:first-child, table.runs td:first-child { white-space: nowrap; }
.status-done { color: var(--good); font-weight: 600; } .status-other { color: var(--bad); font-weight: 600; }
"""

SECTIONS = (("runs", "Runs"), ("stages", "Stages"), ("archives", "Archives"), ("handover", "Handover"),
            ("shutdown", "Shutdown"), ("final-checks", "Final checks"), ("findings", "Open findings"),
            ("accepted", "Accepted blockers"), ("journal", "Journal"), ("signature", "Signature"))


def _e(value: Any) -> str:
    return "—" if value is None or value == "" else escape(str(value))


def _status(value: Any) -> str:
    css = "status-done" if value == "done" else "status-other"
    return f'<span class="{css}">{_e(value)}</span>'


def _hash(value: Any, ident: str = "") -> str:
    attr = f' id="{ident}"' if ident else ""
    return f'<code class="hash"{attr}>{_e(value)}</code>'


def _table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    """rows hold HTML already escaped; cut to LIST_LIMIT rows with a note."""
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows[:LIST_LIMIT])
    more = (f'<p class="more">… and {len(rows) - LIST_LIMIT:,} more in record.json.</p>'
            if len(rows) > LIST_LIMIT else "")
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'


def _json(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True))}</pre>"


def _note(section: dict[str, Any]) -> str:
    return f'<p class="note section-note">{_e(section.get("note"))}</p>' if section.get("note") else ""


def _header(record: dict[str, Any]) -> str:
    plan, by = record["plan"], record.get("created_by") or {}
    fields = [("Owner", plan.get("owner")), ("Ticket", plan.get("ticket")), ("Description", plan.get("description")),
              ("Plan file", plan.get("file")), ("Plan SHA-256", plan.get("sha256")), ("Source", plan.get("source")),
              ("Record id", record.get("record_id")), ("Written at", record.get("created_at")),
              ("Written by", f"{by.get('operator')} on {by.get('host')}"),
              ("decom version", record.get("decom_version"))]
    rows = "".join(f"<dt>{escape(t)}</dt><dd>{_e(v)}</dd>" for t, v in fields if v)
    out = f'<header><h1>Decommission record: {_e(plan.get("name"))}</h1><dl class="header">{rows}</dl>'
    if plan.get("recorded_sha256") and plan.get("recorded_sha256") != plan.get("sha256"):
        out += (f'<p class="status-other">The plan file changed since its run began: the checkpoint store holds '
                f'{_hash(plan.get("recorded_sha256"))}.</p>')
    return out + "</header>"


def _summary(record: dict[str, Any]) -> str:
    stages = [s for s in record["stages"] if s["in_plan"]]
    done = sum(1 for s in stages if s["status"] == "done")
    archives = sum(1 for a in record["archives"]["stages"] if a.get("archive"))
    findings = sum(record["findings"]["counts"].values())
    journal = record["journal"]
    css = "ready" if done == len(stages) else "blocked"
    return (f'<section id="summary" class="verdict {css}">{done} of {len(stages)} stage(s) done in '
            f'{len(record["runs"])} run(s); {archives} archive(s); {findings:,} open finding(s).'
            f'<small>Journal: {journal["entries"]:,} entries, head {_hash(journal["head"])}</small></section>')


def _nav() -> str:
    return ('<nav aria-label="Contents"><strong>Contents</strong><ol>'
            + "".join(f'<li><a href="#{a}">{escape(t)}</a></li>' for a, t in SECTIONS) + "</ol></nav>")


def _runs(record: dict[str, Any]) -> str:
    rows = [[_hash(r["run_id"]), _status(r["status"]), _e(r["operator"]), _e(r["host"]), _e(r["started_at"]),
             _e(r["finished_at"]), _e(r.get("message"))] for r in record["runs"]]
    return _table(["run", "status", "operator", "host", "started", "finished", "message"], rows, "runs")


def _stages(record: dict[str, Any]) -> str:
    out = []
    for number, stage in enumerate(record["stages"], start=1):
        steps = stage["steps"]
        counts = {s: sum(1 for step in steps if step["status"] == s) for s in sorted({st["status"] for st in steps})}
        where = "" if stage["in_plan"] else " — no longer in the plan"
        out.append(f'<article class="stage" id="stage-{number}" data-stage="{escape(stage["name"])}">'
                   f'<h3>{number}. {_e(stage["name"])} <small>({_e(stage["kind"])}{where})</small> '
                   f'{_status(stage["status"])}</h3>'
                   f'<p>started {_e(stage["started_at"])}, finished {_e(stage["finished_at"])}; '
                   + (", ".join(f"{n:,} step(s) {escape(s)}" for s, n in counts.items()) or "no steps") + "</p>")
        rows = [[_e(s["id"]), _e(s["description"]), _status(s["status"]), _e(s["attempts"]), _e(s["started_at"]),
                 _e(s["finished_at"]), _e(s.get("error"))] for s in steps]
        if rows:
            out.append(_table(["step", "what", "status", "attempts", "started", "finished", "error"], rows, "steps"))
        out.append("</article>")
    return "".join(out)


def _archives(record: dict[str, Any]) -> str:
    section, out = record["archives"], [_note(record["archives"])]
    for item in section["stages"]:
        a = item.get("archive")
        if not a:
            continue
        size = escape(human_bytes(a["bytes"])) if isinstance(a.get("bytes"), int) else "—"
        fields = [("Archive id", _hash(a.get("archive_id"))), ("Manifest SHA-256", _hash(a.get("manifest_sha256"))),
                  ("Manifest on disk", _e(a.get("manifest_on_disk"))), ("Merkle root", _hash(a.get("merkle_root"))),
                  ("Signer", _hash(a.get("signer"))), ("Folder", _e(a.get("archive_dir"))),
                  ("Holds", f'{_e(a.get("files"))} file(s), {size}; {_e(a.get("versions"))} document version(s), '
                            f'{_e(a.get("missing"))} missing from the source')]
        out.append(f'<h3>Stage {_e(item["stage"])}</h3><dl class="header archive" '
                   f'data-archive-id="{escape(str(a.get("archive_id")))}">'
                   + "".join(f"<dt>{escape(t)}</dt><dd>{v}</dd>" for t, v in fields) + "</dl>")
    return "".join(out)


def _steps_outputs(item: dict[str, Any]) -> str:
    steps = item.get("steps") or []
    return (f"<h4>Steps of {_e(item['stage'])}</h4>" + _json(steps)) if steps else ""


def _handover(record: dict[str, Any]) -> str:
    section, out = record["handover"], [_note(record["handover"])]
    for item in section["stages"]:
        if item.get("handover_file"):
            out.append(f"<h4>{_e(item['stage'])}: handover file</h4>" + _json(item["handover_file"]))
        out.append(_steps_outputs(item))
    return "".join(out)


def _shutdown(record: dict[str, Any]) -> str:
    section = record["shutdown"]
    out = [_note(section), *(_steps_outputs(item) for item in section["stages"])]
    actions = section.get("journal_actions") or []
    if actions:
        rows = [[_e(a["seq"]), _e(a["time"]), _e(a["operator"]), _e(a["event"]),
                 escape(json.dumps(a.get("details"), ensure_ascii=False, sort_keys=True))] for a in actions]
        out.append("<h4>Shutdown actions in the journal</h4>"
                   + _table(["seq", "time", "operator", "event", "details"], rows, "actions"))
    return "".join(out)


def _final_checks(record: dict[str, Any]) -> str:
    section, out = record["final_checks"], [_note(record["final_checks"])]
    for item in section["stages"]:
        if item.get("checks") is not None:
            out.append(f"<h4>{_e(item['stage'])}: checks.json</h4>" + _json(item["checks"]))
    return "".join(out)


def _findings(record: dict[str, Any]) -> str:
    section = record["findings"]
    counts = section["counts"]
    out = [_note(section), '<table class="compact" id="finding-counts"><thead><tr><th>severity</th>'
           '<th class="num">findings</th></tr></thead><tbody>']
    out += [f'<tr data-severity="{s}"><td><span class="sev sev-{s}">{s}</span></td>'
            f'<td class="num">{counts.get(s, 0):,}</td></tr>' for s in SEVERITIES]
    out.append("</tbody></table>")
    if section["sources"]:
        out.append("<p>From " + "; ".join(f'{_e(s["file"])} ({_e(s["rows"])} rows, SHA-256 {_hash(s["sha256"])})'
                                          for s in section["sources"]) + ".</p>")
    rows = [[f'<span class="sev sev-{escape(f["severity"])}">{_e(f["severity"])}</span>', _e(f["stage"]),
             _e(f["kind"]), _e(f["subject"]), _e(f["message"])] for f in section["items"]]
    if rows:
        out.append(_table(["severity", "stage", "kind", "subject", "message"], rows, "findings"))
    return "".join(out)


def _accepted(record: dict[str, Any]) -> str:
    rows = [[_e(a["stage"]), _e(a.get("blocker") or f'containing "{a["match"]}"'), _e(a["by"]), _e(a["reason"]),
             _e(a["first_journaled_at"]), _e(len(a.get("runs") or []))] for a in record["accepted_blockers"]]
    return _table(["stage", "blocker", "accepted by", "reason", "first journaled", "runs"], rows)


def _journal(record: dict[str, Any]) -> str:
    journal = record["journal"]
    return (f'<dl class="header"><dt>File</dt><dd>{_e(journal["path"])}</dd><dt>Entries</dt>'
            f'<dd id="journal-entries">{journal["entries"]:,}</dd><dt>Head (SHA-256)</dt>'
            f'<dd>{_hash(journal["head"], "journal-head")}</dd></dl><p class="note">{_e(journal.get("note"))}.</p>')


def _signature(record: dict[str, Any], record_sha256: str, signature: dict[str, Any]) -> str:
    signer = record["signer"]
    return (f'<dl class="header"><dt>record.json SHA-256</dt><dd>{_hash(record_sha256, "record-sha256")}</dd>'
            f'<dt>Signed with</dt><dd>{_e(signature.get("alg"))} key {_hash(signer["fingerprint"], "signer")}</dd>'
            f'<dt>Signature</dt><dd>{_hash(signature.get("signature"))}</dd></dl>'
            "<p>This page shows record.json; record.sig signs record.json's exact bytes. To check both, and the "
            "journal against the recorded head:</p>"
            f"<pre>decom verify-record RECORD_FOLDER --signer-fingerprint {_e(signer['fingerprint'])}</pre>")


def render_record_html(record: dict[str, Any], *, record_sha256: str, signature: dict[str, Any]) -> str:
    """The record as one HTML document (str, UTF-8 when written)."""
    bodies = {"runs": _runs(record), "stages": _stages(record), "archives": _archives(record),
              "handover": _handover(record), "shutdown": _shutdown(record), "final-checks": _final_checks(record),
              "findings": _findings(record), "accepted": _accepted(record), "journal": _journal(record),
              "signature": _signature(record, record_sha256, signature)}
    body = [_header(record), _summary(record), _nav()]
    body += [f'<section id="{anchor}"><h2>{escape(title)}</h2>{bodies[anchor]}</section>' for anchor, title in SECTIONS]
    body.append(f'<footer class="note"><p>Decommission record {_e(record.get("record_id"))}, written by decom '
                f'{_e(record.get("decom_version"))} on {_e(record.get("created_at"))}.</p></footer>')
    title = escape(f"Decommission record: {record['plan'].get('name')}")
    return ("<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="color-scheme" content="light">\n'
            f"<title>{title}</title>\n<style>{CSS}{RECORD_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def rendering_differs(page: str, record: dict[str, Any], *, record_sha256: str,
                      signature: dict[str, Any]) -> bool | None:
    """Whether `page` differs from this version's rendering of the record; None when it cannot render it."""
    try:
        return page != render_record_html(record, record_sha256=record_sha256, signature=signature)
    except (KeyError, TypeError, AttributeError):  # a record of another format version
        return None
