"""The backup stage: encrypted archive of the source, resumable after kill -9, honest about changes and faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import decom_cmd

from decom import api
from decom.archive.keys import generate, load_private
from decom.archive.manifest import read_manifest
from decom.archive.pme import open_encrypted, read_all
from decom.archive.version_list import archive_versions
from decom.cli import run_cli
from decom.demo.generator import DemoSpec, build_demo


def backup_plan(folder: Path, url: str, content: Path, *, target: str = "archives", part_mb: int = 1) -> Path:
    keys = folder / "keys"
    if not (keys / "auditor.key").exists():
        generate("recipient", keys / "auditor")
        generate("signing", keys / "signing")
    plan = folder / "backup-plan.toml"
    plan.write_text(f'''[plan]
name = "backup-test"
owner = "Test Operator"

[source]
adapter = "demo"
url = "{url}"
content_root = "{content}"

[archive]
target = "{target}"
recipients = ["keys/auditor.pub"]
signing_key_file = "keys/signing.key"

[[stages]]
kind = "inventory"
freeze_at = 2026-11-20T18:00:00Z

[[stages]]
kind = "backup"
part_mb = {part_mb}
verify_after = "none"

[[accept]]
stage = "inventory"
match = "missing from the content root"
by = "Test Operator"
reason = "planted by the demo generator"
''', encoding="utf-8")
    return plan


@pytest.fixture
def demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'legacy.sqlite'}"
    facts = build_demo(url, tmp_path / "content", DemoSpec(documents=200))
    return url, tmp_path / "content", facts


def archive_of(plan: Path, target: Path | None = None) -> Path:
    archives = [p for p in (target or plan.parent / "archives").iterdir() if p.is_dir()]
    assert len(archives) == 1, archives
    return archives[0]


def decrypted(archive: Path, key_file: Path) -> dict[str, object]:
    """What an archive holds, decrypted: every data table and every version's chunks joined."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = load_private(key_file, X25519PrivateKey)
    manifest, _ = read_manifest(archive)
    held: dict[str, object] = {"versions": [{k: v for k, v in e.items() if k != "part"}
                                            for e in archive_versions(archive)], "counts": manifest["counts"]}
    for entry in manifest["files"]:
        parquet = open_encrypted(archive / entry["path"], key, manifest["archive_id"], entry["path"])
        table = pa.Table.from_batches(list(read_all(parquet)), schema=parquet.schema_arrow)
        assert table.num_rows == entry["rows"]
        if entry["kind"] == "data":
            held[entry["path"]] = table.to_pylist()
    return held


def test_backup_writes_a_signed_encrypted_archive_of_every_entity_and_version(demo, tmp_path: Path) -> None:
    url, content, facts = demo
    plan = backup_plan(tmp_path, url, content)
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    archive = archive_of(plan)
    manifest, _ = read_manifest(archive)
    assert manifest["counts"]["documents"] == facts.documents
    versions = archive_versions(archive)
    assert len(versions) == facts.versions
    assert [v["version_id"] for v in versions if v.get("missing")] != []
    for path in archive.rglob("*.parquet"):
        assert path.read_bytes()[-4:] == b"PARE", f"{path} has no encrypted footer"
    # bytes in the archive are the bytes of the content folder
    held = {(v["document_id"], v["version_id"]): v for v in versions}
    table = pa.Table.from_pylist(decrypted(archive, tmp_path / "keys" / "auditor.key")["data/versions.parquet"])
    for row in table.to_pylist()[:50]:
        entry = held[(row["document_id"], row["version_id"])]
        source = content / row["content_ref"]
        if source.exists():
            import hashlib

            assert entry["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    journal = (tmp_path / "backup-plan.state" / "journal.jsonl").read_text(encoding="utf-8")
    assert manifest["signer"]["fingerprint"] in journal, "the signer's fingerprint must be in the journal"


CRASH_POINTS = ["open@done", "data:versions@inside", "data:users@written", "parts@inside",
                "content:000001@done", "content:000002@inside", "content:000002@written", "manifest@inside"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_backup_killed_anywhere_resumes_to_the_same_archive_content(demo, tmp_path: Path, point: str) -> None:
    url, content, _ = demo
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    reference_dir.mkdir()
    crashed_dir.mkdir()
    reference = backup_plan(reference_dir, url, content)
    api.run(reference)
    plan = backup_plan(crashed_dir, url, content)
    killed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], capture_output=True, text=True,
                            env={**os.environ, "DECOM_TEST_CRASHPOINT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    archive = archive_of(plan)
    manifest, _ = read_manifest(archive)
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file()}
    assert on_disk == listed | {"manifest.json", "manifest.sig", "versions.jsonl"}, \
        "an untracked or temporary file was left"
    ids = [(v["document_id"], v["version_id"]) for v in archive_versions(archive)]
    assert len(ids) == len(set(ids)), "a version was archived twice"
    # Same content as an uninterrupted run (keys, ids and encryption differ; what they hold does not).
    assert decrypted(archive, crashed_dir / "keys" / "auditor.key") == \
        decrypted(archive_of(reference), reference_dir / "keys" / "auditor.key")


def test_content_changed_after_the_inventory_is_reported_not_archived_silently(demo, tmp_path: Path) -> None:
    url, content, _ = demo
    plan = backup_plan(tmp_path, url, content)
    assert run_cli(["--quiet", "run", str(plan), "--stage", "inventory"]) == 0
    victim = sorted(p for p in (content / "store").rglob("*") if p.is_file() and p.stat().st_size > 0)[0]
    victim.write_bytes(victim.read_bytes() + b" (edited after the freeze)")
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    journal = [json.loads(line) for line in
               (tmp_path / "backup-plan.state" / "journal.jsonl").read_text(encoding="utf-8").splitlines()]
    changed = [e["details"]["outputs"]["changed_since_inventory_ids"] for e in journal
               if e["event"] == "step_done" and e["details"]["stage"] == "backup"
               and e["details"]["step"].startswith("content:")]
    assert sum(len(ids) for ids in changed) == 1


def test_archive_target_that_cannot_be_created_is_one_clear_error(demo, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = demo
    (tmp_path / "blocked").write_text("a file where the archive folder should go", encoding="utf-8")
    plan = backup_plan(tmp_path, url, content, target="blocked/archives")
    assert run_cli(["--quiet", "run", str(plan)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decom: error: cannot create the archive folder") and err.count("\n") == 1


def test_disk_full_mid_backup_leaves_nothing_half_written_and_resumes_once_space_is_freed(
        demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real full disk: the archive target is a 1 MiB tmpfs (this needs root, as `make test` has)."""
    url, content, _ = demo
    target = tmp_path / "small-disk"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], capture_output=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs for the disk-full test: {mounted.stderr!r}"
    try:
        plan = backup_plan(tmp_path, url, content, target=str(target))
        assert run_cli(["--quiet", "run", str(plan)]) == 2
        err = capsys.readouterr().err
        assert "disk full while writing" in err and err.count("\n") == 1
        archive = archive_of(plan, target)
        assert not [p for p in archive.rglob("*") if ".tmp-" in p.name], "a partial file was left behind"
        assert not (archive / "manifest.json").exists(), "an incomplete archive must not look complete"

        subprocess.run(["mount", "-o", "remount,size=64m", str(target)], check=True)
        assert run_cli(["--quiet", "run", str(plan)]) == 0
        assert (archive / "manifest.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_database_sources_archive_the_same_versions_as_sqlite(server: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    results = {}
    for name, url in (("sqlite", f"sqlite:///{tmp_path / 'legacy.sqlite'}"), (server, request.getfixturevalue(server))):
        folder = tmp_path / name
        folder.mkdir()
        build_demo(url, folder / "content", DemoSpec(documents=80))
        plan = backup_plan(folder, url, folder / "content")
        api.run(plan)
        manifest, _ = read_manifest(archive_of(plan))
        results[name] = ([{k: v for k, v in e.items() if k != "part"} for e in archive_versions(archive_of(plan))],
                         manifest["counts"], manifest["merkle_root"])
    assert results["sqlite"] == results[server]


def test_versions_of_every_size_are_chunked_hashed_and_reassembled_exactly(demo, tmp_path: Path) -> None:
    """Exactly one chunk, several chunks read ahead, a large version streamed, and an empty one."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    url, content, facts = demo
    files = sorted(p for p in (content / "store").rglob("*") if p.is_file() and p.stat().st_size > 0)
    sizes = {files[0]: 1 << 20, files[1]: 2 << 20, files[2]: (5 << 20) + 12345, files[3]: 3}
    for path, size in sizes.items():
        path.write_bytes(os.urandom(size))
    plan = backup_plan(tmp_path, url, content)
    assert run_cli(["--quiet", "run", str(plan), "--stage", "backup"]) == 0
    archive = archive_of(plan)
    manifest, _ = read_manifest(archive)
    key = load_private(tmp_path / "keys" / "auditor.key", X25519PrivateKey)
    versions_table = decrypted(archive, tmp_path / "keys" / "auditor.key")["data/versions.parquet"]
    ref_of = {r["version_id"]: r["content_ref"] for r in versions_table}  # type: ignore[union-attr]
    by_ref = {ref_of[v["version_id"]]: v for v in archive_versions(archive)}
    chunks: dict[str, list[tuple[int, bytes]]] = {}
    for entry in manifest["files"]:
        if entry["kind"] == "content":
            parquet = open_encrypted(archive / entry["path"], key, manifest["archive_id"], entry["path"])
            # readers can skip row groups by version id; no content bytes are copied into the footer
            for group in range(parquet.metadata.num_row_groups):
                columns = parquet.metadata.row_group(group)
                stats = {columns.column(i).path_in_schema: columns.column(i).statistics
                         for i in range(columns.num_columns)}
                assert stats["version_id"] is not None and stats["version_id"].has_min_max
                assert stats["bytes"] is None or not stats["bytes"].has_min_max
            for batch in read_all(parquet):
                for row in batch.to_pylist():
                    assert hashlib.sha256(row["bytes"]).hexdigest() == row["chunk_sha256"]
                    assert len(row["bytes"]) <= 1 << 20
                    chunks.setdefault(row["version_id"], []).append((row["chunk_index"], row["bytes"]))
    for path, size in sizes.items():
        entry = by_ref[str(path.relative_to(content))]
        data = path.read_bytes()
        assert (entry["size"], entry["sha256"]) == (size, hashlib.sha256(data).hexdigest())
        assert entry["chunks"] == max(1, -(-size // (1 << 20)))
        assert b"".join(b for _, b in sorted(chunks[entry["version_id"]])) == data
    empty = by_ref[facts.zero_byte_refs[0]]
    assert (empty["size"], empty["chunks"], empty["sha256"]) == (0, 1, hashlib.sha256(b"").hexdigest())


def _blob_source(url: str, folder: Path) -> tuple[Path, dict[str, str]]:
    """The demo with its bytes moved into a blob table, and a mapping that reads them from there."""
    import hashlib

    import sqlalchemy as sa

    content = folder / "content"
    build_demo(url, content, DemoSpec(documents=40))
    engine = sa.create_engine(url)
    blob_type = sa.LargeBinary().with_variant(sa.dialects.mysql.LONGBLOB(), "mysql", "mariadb")
    blobs = sa.Table("doc_blob", sa.MetaData(), sa.Column("file_id", sa.Integer, primary_key=True),
                     sa.Column("data", blob_type))
    blobs.create(engine)
    expected = {}
    with engine.begin() as conn:
        for file_id, path in conn.execute(sa.text("SELECT id, storage_path FROM doc_file")).all():
            source = content / path
            if source.exists():
                conn.execute(blobs.insert().values(file_id=file_id, data=source.read_bytes()))
                expected[str(file_id)] = hashlib.sha256(source.read_bytes()).hexdigest()
    engine.dispose()
    mapping = (Path(__file__).resolve().parent.parent / "adapters" / "demo_mapping.toml").read_text(encoding="utf-8")
    mapping = mapping.replace("v.storage_path AS content_ref", "v.id AS content_ref")
    blob_rule = ('[content]\nquery = "SELECT data FROM doc_blob WHERE file_id = :content_ref"\n'
                 'bulk_query = "SELECT file_id AS content_ref, data FROM doc_blob"\n')
    mapping = mapping.replace('[content]\n', blob_rule, 1)
    mapping = mapping.replace('kind = "path"', 'kind = "blob"', 1)
    path = folder / "blob_mapping.toml"
    path.write_text(mapping, encoding="utf-8")
    return path, expected


@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_blob_content_in_the_database_is_archived_in_bulk(server: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(server)
    mapping, expected = _blob_source(url, tmp_path)
    plan = backup_plan(tmp_path, url, tmp_path / "no-content-folder")
    text = plan.read_text(encoding="utf-8").replace('adapter = "demo"',
                                                    f'adapter = "sql_generic"\nmapping = "{mapping}"')
    plan.write_text(text.replace(f'content_root = "{tmp_path / "no-content-folder"}"\n', ""), encoding="utf-8")
    assert run_cli(["--quiet", "run", str(plan), "--stage", "backup"]) == 0
    manifest, _ = read_manifest(archive_of(plan))
    archived = {v["version_id"]: v.get("sha256") for v in archive_versions(archive_of(plan))}
    assert {k: v for k, v in archived.items() if v} == expected
    assert [k for k, v in archived.items() if v is None] != [], "the demo's missing file stays missing"


@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_backup_of_a_database_source_killed_inside_a_part_resumes_completely(
        server: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(server)
    facts = build_demo(url, tmp_path / "content", DemoSpec(documents=150))
    plan = backup_plan(tmp_path, url, tmp_path / "content")
    for point in ("data:documents@inside", "content:000002@inside"):
        killed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], capture_output=True, text=True,
                                env={**os.environ, "DECOM_TEST_CRASHPOINT": point})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    manifest, _ = read_manifest(archive_of(plan))
    ids = [v["version_id"] for v in archive_versions(archive_of(plan))]
    assert len(ids) == len(set(ids)) == facts.versions
    assert manifest["counts"]["documents"] == facts.documents


def test_a_new_part_size_accepted_mid_backup_rewrites_every_part_of_the_new_split(demo, tmp_path: Path) -> None:
    """The parts snapshot is taken again when part_mb changes; a part written under the old split
    must not be kept under the new one (versions would be archived twice or not at all)."""
    url, content, _ = demo
    reference_dir, changed_dir = tmp_path / "reference", tmp_path / "changed"
    reference_dir.mkdir()
    changed_dir.mkdir()
    api.run(backup_plan(reference_dir, url, content, part_mb=2))
    plan = backup_plan(changed_dir, url, content, part_mb=1)
    killed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], capture_output=True, text=True,
                            env={**os.environ, "DECOM_TEST_CRASHPOINT": "content:000002@done"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    plan = backup_plan(changed_dir, url, content, part_mb=2)
    resumed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan), "--accept-changed-plan"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    archive = archive_of(plan)
    manifest, _ = read_manifest(archive)
    assert len({f["path"] for f in manifest["files"]}) == len(manifest["files"])
    assert run_cli(["--quiet", "verify", str(archive), "--full", "--key-file",
                    str(changed_dir / "keys" / "auditor.key"), "--signer-key",
                    str(changed_dir / "keys" / "signing.pub")]) == 0
    assert decrypted(archive, changed_dir / "keys" / "auditor.key") == \
        decrypted(archive_of(reference_dir / "backup-plan.toml"), reference_dir / "keys" / "auditor.key")


def test_parts_and_row_groups_are_bounded_by_versions_as_well_as_bytes(demo, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Many tiny versions must not pile into one part or one row group (memory grows per version):
    with the limits lowered, a 1 MiB part holds at most 40 versions and a row group at most 16 files."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from decom.stages import backup, backup_content

    monkeypatch.setattr(backup, "PART_VERSIONS", 40)
    monkeypatch.setattr(backup_content, "PIECE_VERSIONS", 16)
    url, content, facts = demo
    plan = backup_plan(tmp_path, url, content, part_mb=1024)
    api.run(plan)
    archive = archive_of(plan)
    manifest, _ = read_manifest(archive)
    parts = [f for f in manifest["files"] if f["kind"] == "content"]
    assert len(parts) == -(-facts.versions // 40)
    # each part is its own row group of the snapshot: a content step reads its part alone
    (snapshot_file,) = tmp_path.glob("*.state/stages/*/parts.parquet")
    snapshot = pq.ParquetFile(snapshot_file)
    assert [set(snapshot.read_row_group(i, columns=["part"]).column(0).to_pylist())
            for i in range(snapshot.num_row_groups)] == [{n} for n in range(1, len(parts) + 1)]
    per_part: dict[str, int] = {}
    for v in archive_versions(archive):
        if not v.get("missing"):
            per_part[v["part"]] = per_part.get(v["part"], 0) + 1
    assert max(per_part.values()) <= 40
    key = load_private(tmp_path / "keys" / "auditor.key", X25519PrivateKey)
    for entry in parts:
        parquet = open_encrypted(archive / entry["path"], key, manifest["archive_id"], entry["path"])
        files_per_group = [len(set(parquet.read_row_group(i, columns=["version_id"]).column(0).to_pylist()))
                           for i in range(parquet.metadata.num_row_groups)]
        assert files_per_group and max(files_per_group) <= 16, files_per_group
    assert run_cli(["--quiet", "verify", str(archive), "--full", "--key-file", str(tmp_path / "keys" / "auditor.key"),
                    "--signer-key", str(tmp_path / "keys" / "signing.pub")]) == 0
