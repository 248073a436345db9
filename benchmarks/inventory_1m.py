"""Inventory of a 1,000,000-document PostgreSQL source without hashing, Arrow (ADBC) path vs row path.

Builds the demo legacy schema in a scratch database, scales it up server-side with
generate_series (no content files: hash_content = false), then times `decom run` of an
inventory-only plan twice side by side: the default Arrow-native path and the row-by-row
SQLAlchemy fallback (DECOM_NO_ADBC=1) as the baseline. Prints seconds, rows/s and the ratio.

    .venv/bin/python -m benchmarks.inventory_1m [--documents 1000000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ADMIN = os.environ.get("DECOM_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

SCALE_SQL = [
    # documents: ids above the small demo's, types and owners drawn from what the demo created
    """INSERT INTO doc_card (id, reg_no, title, doc_kind, folder_id, author_id, created, modified, state, deleted)
       SELECT g, 'B-' || g, 'Benchmark document ' || g,
              (SELECT code FROM dict_doc_kind ORDER BY code LIMIT 1 OFFSET (g % 5)),
              1 + (g % 20), 1 + (g % 40),
              TIMESTAMP '2012-01-01' + (g % 4000) * INTERVAL '1 day',
              TIMESTAMP '2012-01-01' + (g % 4000) * INTERVAL '1 day' + INTERVAL '3 hours',
              'ARCH', 0
       FROM generate_series(100001, 100000 + :documents) g""",
    """INSERT INTO doc_file (id, doc_id, ver_no, orig_name, mime, fsize, md5, storage_path, created, created_by,
                             is_current)
       SELECT g * 2 + v, g, v, 'file-' || g || '.pdf', 'application/pdf', 40000 + (g % 9000), NULL,
              'bench/' || (g % 1000) || '/' || g || '-v' || v || '.pdf',
              TIMESTAMP '2012-01-01' + (g % 4000) * INTERVAL '1 day', 1 + (g % 40),
              CASE WHEN v = 2 OR g % 2 = 1 THEN 1 ELSE 0 END
       FROM generate_series(100001, 100000 + :documents) g
       CROSS JOIN LATERAL (SELECT 1 AS v UNION ALL SELECT 2 WHERE g % 2 = 0) versions""",
    """INSERT INTO access_rule (id, obj_kind, obj_id, subj_kind, subj_id, mode, inherited)
       SELECT 1000000 + g, 'D', 100000 + g, 'G', 1 + (g % 10), CASE WHEN g % 3 = 0 THEN 'RW' ELSE 'R' END, 0
       FROM generate_series(1, :documents) g""",
    """INSERT INTO audit_log (id, ts, staff_id, action, obj_kind, obj_id, ip, details)
       SELECT 10000000 + g, TIMESTAMP '2015-01-01' + g * INTERVAL '1 minute', 1 + (g % 40), 'VIEW', 'D',
              100000 + (g % :documents), '10.0.0.' || (g % 200), NULL
       FROM generate_series(1, :documents) g""",
]


def build_source(url: str, documents: int, work: Path) -> None:
    from decom.demo.generator import DemoSpec, build_demo

    build_demo(url, work / "content", DemoSpec(documents=200))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in SCALE_SQL:
            conn.execute(sa.text(statement), {"documents": documents})
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()


def timed_run(plan: Path, state: Path, env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one `decom run`, measured for that process alone (wait4)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", "from decom.cli import main; main()", "--quiet", "run",
                              str(plan), "--state", str(state)], env={**os.environ, **env},
                             stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"decom run failed with exit code {child.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    name = f"decom_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN).set(database=name).render_as_string(hide_password=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            started = time.perf_counter()
            build_source(url, args.documents, work)
            print(f"source: {args.documents:,} benchmark documents (+200 demo) built in "
                  f"{time.perf_counter() - started:.1f} s")
            plan = work / "bench.toml"
            plan.write_text(f'''[plan]\nname = "bench"\nowner = "benchmark"\n[source]\nadapter = "demo"
url = "{url}"\ncontent_root = "{work / 'content'}"\n[[stages]]\nkind = "inventory"\nhash_content = false
freeze_at = 2026-11-20T18:00:00Z\n''', encoding="utf-8")
            rows = args.documents * 3.5  # documents + 1.5 versions + 1 right + 1 event per document
            results = {}
            for label, env in (("arrow (ADBC)", {}), ("rows (SQLAlchemy, baseline)", {"DECOM_NO_ADBC": "1"})):
                seconds, peak = timed_run(plan, work / label.split()[0], env)
                results[label] = seconds
                print(f"{label:<30} {seconds:7.1f} s  {rows / seconds / 1e6:5.2f} M rows/s  peak RSS {peak:,.0f} MiB")
            arrow, baseline = results["arrow (ADBC)"], results["rows (SQLAlchemy, baseline)"]
            print(f"ratio: the Arrow path takes {arrow / baseline:.2f}x the baseline's time "
                  f"({baseline / arrow:.1f}x faster); target < 30 s: {'met' if arrow < 30 else 'NOT met'}")
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
