"""Numbers as people read them, and charts as inline SVG: no script, no external font, no network.

Shared by the Markdown and HTML renderers so both show the same figures: byte counts as KiB/MiB/GiB,
counts with thousands separators, durations in hours and minutes, and a chart's rows cut to the
largest 15 plus one "other" row.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

CHART_LIMIT = 15
_CHAR_PX = 8.8          # width of a label character at 13 px sans-serif, Cyrillic included, roughly
_LABEL_MAX_PX = 250     # longer labels are cut with "…" (the bar's tooltip and <desc> keep them whole)
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KiB'; below 1 KiB the exact number of bytes."""
    if abs(size) < 1024:
        return f"{size:,.0f} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:,.1f} {unit}"
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """A duration a person plans with: '42.5 s', '12 min 5 s', '3 h 20 min', '2 d 4 h'."""
    if seconds < 60:
        return f"{seconds:,.1f} s"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days:,} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


def format_number(value: float) -> str:
    """12345 -> '12,345'; 0.5 -> '0.5'; 3.14159 -> '3.14'."""
    if isinstance(value, int) or (math.isfinite(value) and float(value).is_integer()):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def format_value(key: str, value: Any) -> str:
    """A value of a stage's counts or estimates, formatted after what its key says it is."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        lowered = key.lower()
        if "bytes" in lowered or lowered.endswith("_size"):
            exact = f" ({format_number(value)} bytes)" if abs(value) >= 1024 else ""
            return human_bytes(value) + exact
        if lowered.endswith("seconds"):
            return human_seconds(float(value))
        return format_number(value)
    if isinstance(value, list | tuple):
        return ", ".join(format_value(key, v) for v in value) or "—"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {format_value(str(k), v)}" for k, v in value.items()) or "—"
    return str(value)


def label(key: str) -> str:
    """'content_bytes_recorded' -> 'content bytes recorded'."""
    return key.replace("_", " ")


def chart_value(title: str, value: float) -> str:
    return human_bytes(value) if "bytes" in title.lower() else format_number(value)


def chart_rows(values: dict[str, float], limit: int = CHART_LIMIT) -> tuple[list[tuple[str, float]], bool]:
    """The rows a chart shows: all in their order when few, else the largest `limit` and an 'other' row.

    The flag says whether the last row is that 'other' row.
    """
    rows: list[tuple[str, float]] = []
    for name, raw in values.items():
        try:
            number = float(raw)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            rows.append((str(name), number))
    if len(rows) <= limit + 1:
        return rows, False
    ranked = sorted(rows, key=lambda row: row[1], reverse=True)
    rest = ranked[limit:]
    return [*ranked[:limit], (f"other ({len(rest):,} more)", sum(v for _, v in rest))], True


def chartable_counts(counts: dict[str, Any]) -> dict[str, float]:
    """The record counts of a stage worth comparing as bars (no byte sizes, no flags, no zero)."""
    return {label(k): float(v) for k, v in counts.items()
            if isinstance(v, int) and not isinstance(v, bool) and "bytes" not in k.lower() and v > 0}


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def svg_bar_chart(title: str, values: dict[str, float], chart_id: str, *, source: str = "stage") -> str:
    """A horizontal bar chart as inline SVG with an accessible title and description."""
    rows, has_other = chart_rows(values)
    # Room for the longest label, within bounds.
    longest = max((len(name) for name, _ in rows), default=4)
    label_w = min(max(round(longest * _CHAR_PX) + 14, 60), _LABEL_MAX_PX)
    bar_w, value_w, row_h, top = 270, 110, 22, 6
    fits = longest if label_w < _LABEL_MAX_PX else int((label_w - 14) / _CHAR_PX)
    width = label_w + bar_w + value_w
    height = top * 2 + max(len(rows), 1) * row_h
    peak = max((v for _, v in rows), default=0.0)
    summary = "; ".join(f"{name}: {chart_value(title, v)}" for name, v in rows) or "no data"
    parts = [
        f'<figure class="chart" data-source="{escape(source)}">',
        f"<figcaption>{escape(title)}</figcaption>",
        f'<svg class="bar-chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" '
        'font-family="sans-serif" font-size="13">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">Horizontal bar chart. {escape(summary)}</desc>',
        f'<line x1="{label_w}" y1="{top - 2}" x2="{label_w}" y2="{height - top + 2}" stroke="#555" />',
    ]
    for index, (name, value) in enumerate(rows):
        y = top + index * row_h
        length = 0.0 if peak <= 0 or value <= 0 else max(bar_w * value / peak, 1.0)
        other = has_other and index == len(rows) - 1
        shown = chart_value(title, value)
        parts += [
            f'<g class="bar{" other" if other else ""}">',
            f"<title>{escape(name)}: {escape(shown)}</title>",
            f'<text x="{label_w - 8}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end" fill="#222">'
            f"{escape(_short(name, fits))}</text>",
            f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="{row_h - 8}" '
            f'fill="{"#8a94a0" if other else "#2f6ea5"}" />',
            f'<text x="{label_w + length + 6:.1f}" y="{y + row_h / 2 + 4:.1f}" fill="#222">{escape(shown)}</text>',
            "</g>",
        ]
    if not rows:
        parts.append(f'<text x="{label_w + 8}" y="{top + row_h / 2 + 4}" fill="#555">no data</text>')
    parts += ["</svg>", "</figure>"]
    return "\n".join(parts)
