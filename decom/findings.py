"""Findings: what a stage found that a person must know, with a severity and the evidence.

Stages return them in their dry-run plan and write them to Parquet/CSV when they run; the
report groups them by severity. Evidence is a small JSON-able dict: enough for an auditor to
check the finding against the source without trusting decom.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SEVERITIES = ("critical", "high", "medium", "low", "info")

FINDINGS_SCHEMA = pa.schema([
    ("severity", pa.string()), ("kind", pa.string()), ("subject", pa.string()),
    ("message", pa.string()), ("evidence", pa.string()),
])


@dataclass(frozen=True)
class Finding:
    severity: str      # one of SEVERITIES
    kind: str          # e.g. admin_account, dormant_account, everyone_readable, missing_content
    subject: str       # what it is about: "user:ivanov", "document:12", "file:store/a.pdf"
    message: str       # one line a project manager understands
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def as_row(self) -> dict[str, str]:
        return {"severity": self.severity, "kind": self.kind, "subject": self.subject, "message": self.message,
                "evidence": json.dumps(self.evidence, ensure_ascii=False, sort_keys=True, default=str)}


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by kind and subject, so reports and files are stable."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.kind, f.subject))


def findings_table(findings: Iterable[Finding]) -> pa.Table:
    return pa.Table.from_pylist([f.as_row() for f in sort_findings(findings)], schema=FINDINGS_SCHEMA)


def count_by_severity(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for finding in findings:
        counts[finding.severity] += 1
    return counts
