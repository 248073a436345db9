"""Quick verification of an archive of many small files, beside sha256sum of the same files.

The issue's target: `decom verify` (quick: signature, every file's size and SHA-256, nothing
unlisted, the Merkle root) of an archive of 10,000 files in under 2 s. The archive is synthetic
(small content files, a signed manifest listing them), so the figure is verification's own
per-file cost; `sha256sum` over the same files, run side by side, is the baseline for the ratio.

    .venv/bin/python -m benchmarks.verify_quick [--files 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from decom.archive.manifest import write_manifest


def build(folder: Path, files: int) -> tuple[Path, Ed25519PublicKey]:
    """folder/archive: `files` content files of 256 bytes, one version each, and a manifest signed by a
    throw-away key; returns the archive and that key (tests build the same archive)."""
    archive = folder / "archive"
    (archive / "content").mkdir(parents=True)
    entries, versions = [], []
    for number in range(1, files + 1):
        path = f"content/part-{number:06d}.parquet"
        data = number.to_bytes(4, "big") * 64
        (archive / path).write_bytes(data)
        entries.append({"seq": number, "path": path, "kind": "content", "entity": None, "rows": 1,
                        "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        versions.append({"document_id": f"d{number:06d}", "version_id": f"v{number:06d}", "size": 7, "chunks": 1,
                         "sha256": hashlib.sha256(str(number).encode()).hexdigest(), "part": path})
    key = Ed25519PrivateKey.generate()
    write_manifest(archive, versions=versions, signing_key=key, archive_id="0" * 32, run_id="bench",
                   plan_name="bench", plan_sha256="0" * 64, created_at="2026-11-23T00:00:00+00:00",
                   source="benchmark", freeze=None, signer=key.public_key(), recipients=[], files=entries, counts={})
    return archive, key.public_key()


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the median is shown")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="decom-verify-bench-"))
    try:
        archive, signer = build(work, args.files)
        (work / "signer.pub").write_bytes(signer.public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
        decom = [sys.executable, "-c", "from decom.cli import main; main()", "--quiet", "verify", str(archive),
                 "--signer-key", str(work / "signer.pub")]
        files = sorted(str(p.relative_to(archive)) for p in (archive / "content").iterdir())
        listing = work / "files.txt"
        listing.write_text("\n".join(files) + "\n", encoding="utf-8")
        baseline = ["sh", "-c", f"xargs -a {listing} sha256sum > /dev/null"]
        results: dict[str, list[float]] = {"sha256sum of the same files (baseline)": [],
                                           "decom verify (quick), whole command": []}
        for _ in range(args.repeat):  # side by side, alternating
            results["sha256sum of the same files (baseline)"].append(timed(baseline, archive))
            results["decom verify (quick), whole command"].append(timed(decom, work))
        base = statistics.median(results["sha256sum of the same files (baseline)"])
        print(f"quick verification of an archive of {args.files:,} files (median of {args.repeat})")
        for label, runs in results.items():
            median = statistics.median(runs)
            print(f"  {label:<42} {median:6.2f} s  {median / base:5.2f}x the baseline's time  "
                  f"(runs: {', '.join(f'{r:.2f}' for r in runs)} s)")
        decom_median = statistics.median(results["decom verify (quick), whole command"])
        verdict = "met" if args.files >= 10_000 and decom_median < 2.0 else "NOT met"
        print(f"target: quick verify of 10,000 files in under 2 s, Python start-up included: "
              f"{decom_median:.2f} s: {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
