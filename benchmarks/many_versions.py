"""Memory in the number of versions: decom's backup and verification at many tiny versions beside a baseline of few.

Builds a scratch PostgreSQL database of BASELINE versions of 1 KiB (the tables of backup_peers.py,
no content folder), times `decom run PLAN --stage backup`, `decom verify ARCHIVE` and `decom
verify ARCHIVE --full` (each a subprocess, peak RSS by os.wait4), then grows the same database to
VERSIONS and runs the same three again. Prints seconds and peak RSS of each, and the ratio of
peak RSS at VERSIONS to that at BASELINE: memory flat in versions keeps it near 1.0×.

    .venv/bin/python -m benchmarks.many_versions [--versions 4000000] [--baseline 250000] [--keep]

4,000,000 versions take ~4.5 GB of database, ~5 GB of archive and about 8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import sqlalchemy as sa

from benchmarks.backup_peers import (
    ADMIN,
    MAPPING,
    RSS_LIMIT_MIB,
    SCHEMA_SQL,
    CommandFailed,
    decom_argv,
    fill_rows,
    helper,
    libpq_url,
    remove_scratch,
    timed,
    write_plan,
)

CONTENT = ('kind = "blob"\nquery = "SELECT data FROM doc_blob WHERE id = :content_ref"\n'
           'bulk_query = "SELECT id AS content_ref, data FROM doc_blob"')


def measure(work: Path, name: str, url: str, keys: Path, timeout: float) -> dict[str, tuple[float, float]]:
    """(seconds, peak RSS MiB) of the backup, the quick and the full verification of one archive."""
    logs = work / "logs"
    plan = write_plan(work / name, "bench-versions", url,
                      MAPPING.format(where="PostgreSQL bytea, many versions", capability="content_blobs",
                                     content_ref="v.id", content=CONTENT), None, keys)
    figures = {"backup": timed(decom_argv("run", str(plan), "--stage", "backup"), log=logs / f"{name}.log",
                               timeout=timeout)}
    (archive,) = (plan.parent / "archives").iterdir()
    signer = ["--signer-key", str(keys / "signing.pub")]
    figures["verify"] = timed(decom_argv("verify", str(archive), *signer), log=logs / f"{name}-verify.log",
                              timeout=timeout)
    figures["verify --full"] = timed(decom_argv("verify", str(archive), *signer, "--full", "--key-file",
                                                str(keys / "auditor.key")),
                                     log=logs / f"{name}-verify.log", timeout=timeout)
    shutil.rmtree(plan.parent)   # ~1.3 KB a version of archive: not kept for the next size
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=4_000_000, help="versions of 1 KiB in the large run")
    parser.add_argument("--baseline", type=int, default=250_000, help="versions of 1 KiB in the baseline run")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and the work folder")
    args = parser.parse_args()
    if not 0 < args.baseline < args.versions:
        parser.error("need 0 < --baseline < --versions")
    timeout = 120 + args.versions / 10_000   # seconds a command may take: ~400 s at 4,000,000

    work = Path(tempfile.mkdtemp(prefix="decom-versions-bench-", dir=args.workdir))
    name = f"decom_versions_bench_{uuid.uuid4().hex[:8]}"
    admin = libpq_url(ADMIN)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(ADMIN).set(database=name).render_as_string(hide_password=False)
    failed = False
    try:
        (work / "logs").mkdir()
        keys = work / "keys"
        for kind, key in (("recipient", "auditor"), ("signing", "signing")):
            helper(decom_argv("keys", "generate", "--kind", kind, "--out", str(keys / key)),
                   log=work / "logs" / "keys.log", timeout=120)
        results: list[tuple[int, dict[str, tuple[float, float]]]] = []
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            for statement in SCHEMA_SQL:
                conn.execute(statement)
            filled = 0
            for versions in (args.baseline, args.versions):
                started = time.perf_counter()
                fill_rows(conn, filled + 1, versions, kib=1, batch=50_000)
                filled = versions
                print(f"source: {versions:,} versions of 1 KiB in {name}, filled in "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
                results.append((versions, measure(work, f"run-{versions}", url, keys, timeout)))
    except CommandFailed as exc:
        print(f"FAILED: {exc}")
        failed = True
    finally:
        remove_scratch(admin, name, work, args.keep)
    if failed:
        sys.exit(1)
    (small, base), (large, big) = results
    print(f"\n{'':16}{f'{small:,} versions':>26}{f'{large:,} versions':>28}{'peak RSS ratio':>18}")
    for command in base:
        (s_sec, s_rss), (l_sec, l_rss) = base[command], big[command]
        print(f"  {command:14}{s_sec:10.1f} s {s_rss:9.0f} MiB{l_sec:12.1f} s {l_rss:9.0f} MiB"
              f"{l_rss / s_rss:16.2f}x")
    highest = max(rss for _, rss in big.values())
    print(f"\npeak RSS <= {RSS_LIMIT_MIB} MiB at {large:,} versions: highest {highest:.0f} MiB: "
          f"{'met' if highest <= RSS_LIMIT_MIB else 'NOT met'}")


if __name__ == "__main__":
    main()
