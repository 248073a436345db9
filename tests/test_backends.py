"""The same legacy system in SQLite, PostgreSQL and MariaDB must inventory to the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_plan

from decom import api
from decom.demo.generator import DemoSpec, build_demo

SPEC = DemoSpec(documents=80)


def inventory(url: str, folder: Path) -> tuple[dict[str, object], dict[str, list[dict[str, object]]]]:
    content = folder / "content"
    facts = build_demo(url, content, SPEC)
    plan = write_plan(folder, url, content)
    api.run(plan)
    stage = folder / "test-plan.state" / "stages" / "inventory"
    summary = json.loads((stage / "summary.json").read_text(encoding="utf-8"))
    tables = {p.stem: sorted(pq.read_table(p).to_pylist(), key=lambda row: json.dumps(row, default=str, sort_keys=True))
              for p in sorted((stage / "tables").glob("*.parquet"))}
    # The facts the generator reports are what the inventory must find, on every backend.
    assert summary["counts"]["documents"] == facts.documents
    assert summary["counts"]["versions"] == facts.versions
    assert summary["content"]["missing_refs"] == list(facts.missing_content_refs)
    assert summary["content"]["zero_byte_refs"] == list(facts.zero_byte_refs)
    assert summary["content"]["checksum_mismatch_refs"] == list(facts.checksum_mismatch_refs)
    assert summary["content"]["bytes"] == facts.content_bytes
    assert summary["orphans"]["paths"] == list(facts.orphan_files)
    assert summary["signatures"]["mismatched_ids"] == list(facts.mismatched_signature_ids)
    assert summary["events"]["after_freeze_time"] == facts.events_after_freeze
    del summary["orphans"]["file"], summary["signatures"]["file"]
    return summary, tables


@pytest.fixture(scope="module")
def sqlite_result(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("sqlite")
    return inventory(f"sqlite:///{folder / 'legacy.sqlite'}", folder)


@pytest.mark.postgres
def test_postgresql_source_inventories_exactly_like_sqlite(sqlite_result, pg_url: str, tmp_path: Path) -> None:
    summary, tables = inventory(pg_url, tmp_path)
    assert summary == sqlite_result[0]
    assert tables == sqlite_result[1]


@pytest.mark.mariadb
def test_mariadb_source_inventories_exactly_like_sqlite(sqlite_result, mariadb_url: str, tmp_path: Path) -> None:
    summary, tables = inventory(mariadb_url, tmp_path)
    assert summary == sqlite_result[0]
    assert tables == sqlite_result[1]
