"""The dry-run report as one self-contained HTML file for project managers.

Opens offline: inline CSS (with a print stylesheet), charts as inline SVG, no script, no external
font, image or link. Every text from the data is escaped: document titles and logins come from the
legacy system. Same content as the Markdown and JSON exports (decom.report.markdown.report_data).
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from decom.findings import SEVERITIES
from decom.report.charts import chartable_counts, format_value, label, svg_bar_chart
from decom.report.markdown import (
    FINDINGS_TABLE_LIMIT,
    HEADER_FIELDS,
    MORE_NOTE,
    findings_by_severity,
    split_estimates,
    verdict,
)

_CODE = re.compile(r"`([^`\n]+)`")

CSS = """
:root { --ink: #1d232a; --muted: #5b6570; --line: #d5dbe1; --bad: #a61b1b; --good: #1d6b35; --accent: #2f6ea5; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1100px; padding: 24px 28px 48px; color: var(--ink); background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Liberation Sans", Arial, sans-serif; }
h1 { font-size: 1.7em; margin: 0 0 .3em; } h2 { font-size: 1.3em; margin: 1.6em 0 .5em;
  border-bottom: 2px solid var(--line); padding-bottom: .2em; } h3 { font-size: 1.1em; margin: 1.2em 0 .4em; }
code { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: .92em;
  background: #f1f3f5; padding: 0 .25em; border-radius: 3px; }
.wrap, td, dd, li { overflow-wrap: anywhere; }
dl.header { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; margin: .8em 0; }
dl.header dt { font-weight: 600; color: var(--muted); } dl.header dd { margin: 0; }
.note { color: var(--muted); }
.verdict { border: 2px solid; border-radius: 6px; padding: .7em 1em; margin: 1em 0;
  font-size: 1.2em; font-weight: 700; }
.verdict.ready { color: var(--good); border-color: var(--good); background: #eef8f1; }
.verdict.blocked { color: var(--bad); border-color: var(--bad); background: #fbeeee; }
.verdict small { display: block; font-size: .72em; font-weight: 400; color: var(--ink); }
nav ol { margin: .3em 0; padding-left: 1.4em; columns: 2; } nav a { color: var(--accent); }
#blockers li { color: var(--bad); font-weight: 600; } .none { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; margin: .5em 0 1em; width: 100%; }
th, td { border: 1px solid var(--line); padding: .3em .55em; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } td.num, th.num { text-align: right; white-space: nowrap; }
table.compact { width: auto; min-width: 40%; }
.sev { display: inline-block; min-width: 5.5em; padding: 0 .4em; border-radius: 3px; font-weight: 600; }
.sev-critical { background: #7f1010; color: #fff; } .sev-high { background: #c0392b; color: #fff; }
.sev-medium { background: #e6a23c; color: #1d232a; } .sev-low { background: #dfe8f1; color: #1d232a; }
.sev-info { background: #eceff1; color: #1d232a; }
.more { font-style: italic; color: var(--muted); }
article.stage { border: 1px solid var(--line); border-radius: 6px; padding: .2em 1.1em 1em; margin: 1em 0; }
article.stage.unavailable { border: 2px dashed var(--bad); background: #fdf7f7; }
.badge { font-size: .75em; font-weight: 700; padding: .1em .5em; border-radius: 3px; vertical-align: middle; }
.badge.na { background: var(--bad); color: #fff; } .badge.ok { background: var(--good); color: #fff; }
.stage-body { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 0 1.5em; }
figure.chart { margin: .6em 0 1.2em; break-inside: avoid; }
figure.chart figcaption { font-weight: 600; margin-bottom: .3em; }
svg.bar-chart { max-width: 100%; height: auto; }
@media (max-width: 800px) { .stage-body { grid-template-columns: 1fr; } nav ol { columns: 1; } }
@media print {
  @page { size: A4; margin: 14mm 12mm; }
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav { display: none; }
  a { color: inherit; text-decoration: none; }
  h2, h3 { break-after: avoid; }
  tr, figure, .verdict, dl.header { break-inside: avoid; }
  thead { display: table-header-group; }
  article.stage { break-inside: auto; border-color: #999; }
  .verdict, .sev, .badge, svg { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  .stage-body { grid-template-columns: 1fr; }
}
"""


def text(value: Any) -> str:
    """Escaped text; `code spans` written by decom become <code> (after escaping, so data stays inert)."""
    return _CODE.sub(r"<code>\1</code>", escape(str(value)))


def _list(items: list[str], empty: str = "none") -> str:
    if not items:
        return f'<p class="none">{escape(empty)}</p>'
    return "<ul>" + "".join(f"<li>{text(item)}</li>" for item in items) + "</ul>"


def _header(data: dict[str, Any]) -> list[str]:
    header = data["plan"]
    rows = "".join(f"<dt>{escape(title)}</dt><dd>{text(header[key])}</dd>"
                   for title, key in HEADER_FIELDS if header.get(key))
    out = [f"<header><h1>Decommission plan: {escape(str(header['name']))}</h1>",
           f'<dl class="header">{rows}</dl>']
    if header.get("warnings"):
        out.append("<p><strong>Plan warnings:</strong></p>" + _list(header["warnings"]))
    out.append('<p class="note">This is a dry run (<code>decom plan</code>): nothing was changed anywhere.</p>'
               "</header>")
    return out


def _verdict(data: dict[str, Any]) -> str:
    counts = data["finding_counts"]
    total = sum(counts.values())
    detail = ", ".join(f"{counts[s]:,} {s}" for s in SEVERITIES if counts.get(s))
    found = f"{total:,} finding{'s' if total != 1 else ''}" + (f" ({detail})" if detail else "")
    css = "ready" if data["ready"] else "blocked"
    return (f'<section id="verdict" class="verdict {css}" data-blockers="{len(data["blockers"])}">'
            f"{escape(verdict(data))}<small>{escape(found)}; {len(data['decisions']):,} decision(s) open; "
            f"{len(data['stages']):,} stage(s).</small></section>")


def _nav(data: dict[str, Any]) -> str:
    links = [("blockers", "Blockers"), ("risks", "Risks"), ("decisions", "Decisions still open"),
             ("stages", "Stages")]
    links += [(f"stage-{n}", f"{n}. {s['stage']}") for n, s in enumerate(data["stages"], start=1)]
    return ('<nav aria-label="Contents"><strong>Contents</strong><ol>'
            + "".join(f'<li><a href="#{anchor}">{escape(title)}</a></li>' for anchor, title in links)
            + "</ol></nav>")


def _findings(data: dict[str, Any], charts: list[int]) -> list[str]:
    counts = data["finding_counts"]
    total = sum(counts.values())
    out = ['<h3>Findings by severity</h3><table class="compact" id="finding-counts"><thead><tr><th>severity</th>'
           '<th class="num">findings</th></tr></thead><tbody>']
    out += [f'<tr data-severity="{s}"><td><span class="sev sev-{s}">{s}</span></td>'
            f'<td class="num">{counts.get(s, 0):,}</td></tr>' for s in SEVERITIES]
    out.append(f'<tr data-severity="total"><th>total</th><th class="num">{total:,}</th></tr></tbody></table>')
    if total:
        charts[0] += 1
        out.append(svg_bar_chart("findings by severity", {s: counts.get(s, 0) for s in SEVERITIES},
                                 f"chart-{charts[0]}", source="findings"))
    for severity, items in findings_by_severity(data).items():
        out.append(f'<h3 id="findings-{severity}"><span class="sev sev-{severity}">{severity}</span> '
                   f"{len(items):,} finding{'s' if len(items) != 1 else ''}</h3>")
        out.append(f'<table class="findings" data-severity="{severity}"><thead><tr><th>stage</th><th>kind</th>'
                   "<th>subject</th><th>message</th></tr></thead><tbody>")
        out += [f"<tr><td>{escape(f['stage'])}</td><td>{escape(f['kind'])}</td><td>{escape(f['subject'])}</td>"
                f"<td>{escape(f['message'])}</td></tr>" for f in items[:FINDINGS_TABLE_LIMIT]]
        out.append("</tbody></table>")
        if len(items) > FINDINGS_TABLE_LIMIT:
            out.append(f'<p class="more">… and {len(items) - FINDINGS_TABLE_LIMIT:,} more — {escape(MORE_NOTE)}.</p>')
    return out


def _num(value: Any) -> str:
    return ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _table(rows: dict[str, Any], first: str, second: str) -> str:
    body = "".join(f'<tr><td>{escape(label(k))}</td><td{_num(v)}>{escape(format_value(k, v))}</td></tr>'
                   for k, v in rows.items())
    return (f'<table class="compact"><thead><tr><th>{first}</th><th class="num">{second}</th></tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _stage(number: int, stage: dict[str, Any], charts: list[int]) -> list[str]:
    available = stage["available"]
    badge = '<span class="badge ok">available</span>' if available else \
        '<span class="badge na">NOT AVAILABLE YET</span>'
    out = [f'<article class="stage{"" if available else " unavailable"}" id="stage-{number}" '
           f'data-available="{str(available).lower()}">',
           f"<h3>{number}. {escape(stage['stage'])} <small>({escape(stage['kind'])})</small> {badge}</h3>",
           f'<p class="wrap">{text(stage["summary"])}</p>']
    if not available:
        out.append("<p><strong>This stage is not built in this version of decom: <code>decom run</code> stops "
                   "before it.</strong></p>")
    if stage["actions"]:
        out.append("<h4>What <code>decom run</code> would do</h4><ol>"
                   + "".join(f"<li>{text(a)}</li>" for a in stage["actions"]) + "</ol>")
    left: list[str] = []
    right: list[str] = []
    if stage["counts"]:
        left.append("<h4>Counts and sizes</h4>" + _table(stage["counts"], "what", "count"))
        chartable = chartable_counts(stage["counts"])
        if len(chartable) >= 2 and not stage["charts"]:  # a stage's own charts say more than its counts
            charts[0] += 1
            right.append(svg_bar_chart(f"{stage['stage']}: records per kind", chartable, f"chart-{charts[0]}",
                                       source="counts"))
    estimates, bases = split_estimates(stage["estimates"])
    if estimates:
        left.append("<h4>Estimates</h4>" + _table(estimates, "estimate", "value"))
    for name, basis in bases:
        left.append(f'<p class="wrap basis"><strong>Basis of the {escape(name) + " estimate" if name else "estimates"}:'
                    f"</strong> {text(basis)}</p>")
    for title, values in stage["charts"].items():
        charts[0] += 1
        right.append(svg_bar_chart(title, values, f"chart-{charts[0]}"))
    if left or right:
        out.append('<div class="stage-body"><div>' + "".join(left) + "</div><div>" + "".join(right) + "</div></div>")
    for title, key in (("Blockers", "blockers"), ("Risks", "risks"), ("Decisions still open", "decisions")):
        if stage[key]:
            out.append(f'<h4>{title}</h4><div class="stage-{key}">{_list(stage[key])}</div>')
    found = {s: n for s, n in stage.get("finding_counts", {}).items() if n}
    if found:
        links = ", ".join(f'<a href="#findings-{s}">{n:,} {s}</a>' for s, n in found.items())
        out.append(f"<p><strong>Findings:</strong> {links} (listed under Risks).</p>")
    out.append("</article>")
    return out


def render_html(data: dict[str, Any]) -> str:
    """The whole report as one HTML document (str, UTF-8 when written)."""
    charts = [0]  # running number for the chart ids
    blockers = data["blockers"]
    body: list[str] = [*_header(data), _verdict(data), _nav(data)]
    body.append(f'<section id="blockers" data-count="{len(blockers)}"><h2>Blockers</h2>'
                + _list(blockers, "none: nothing stops the run")
                + ('<h3>Accepted on the record by the plan</h3><div id="accepted">' + _list(data["accepted"])
                   + "</div>" if data["accepted"] else "") + "</section>")
    body.append('<section id="risks"><h2>Risks</h2>')
    if data["risks"]:
        body.append('<h3>Named by the stages</h3><div id="stage-risks">' + _list(data["risks"]) + "</div>")
    body += _findings(data, charts)
    body.append("</section>")
    body.append(f'<section id="decisions" data-count="{len(data["decisions"])}">'
                "<h2>Decisions still open for the plan owner</h2>" + _list(data["decisions"]) + "</section>")
    body.append('<section id="stages"><h2>Stages</h2>')
    for number, stage in enumerate(data["stages"], start=1):
        body += _stage(number, stage, charts)
    body.append("</section>")
    body.append(f'<footer class="note"><p>Generated by decom on {escape(str(data["plan"].get("generated_at", "")))}. '
                "Same content as plan-report.md and plan-report.json.</p></footer>")
    title = escape(f"Decommission plan: {data['plan']['name']} — {verdict(data)}")
    return ("<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            "<meta name=\"color-scheme\" content=\"light\">\n"
            f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
