"""`decom restore` from a real backup of the demo: one document, one case, everything; every restored
file equals the demo's content and the manifest's SHA-256; refusals (overwrite, bad signature, damaged
part, wrong key) leave nothing half-written. Also: the doc's "read an archive yourself" examples run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_archive_verify import (
    PART1,
    Backups,
    as_format_version_1,
    bytes_changed_after_hashing,
    make_backups,
    signed_by_another_key,
    version_list_deleted,
    version_list_entry_edited,
    version_list_truncated,
)

from decom import api
from decom.adapter import open_adapter
from decom.archive.restore import ArchiveIntegrityError, safe_name
from decom.archive.verify import verify_archive
from decom.archive.version_list import archive_versions
from decom.cli import run_cli
from decom.errors import UserError
from decom.plan import load_plan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Backups:
    return make_backups(tmp_path_factory.mktemp("backups"))


@pytest.fixture(scope="module")
def demo(backups: Backups) -> dict[str, Any]:
    """The demo system as the source sees it: version rows, each version's bytes, cases."""
    adapter = open_adapter(load_plan(backups.plan).source_config())
    try:
        versions = [r for batch in adapter.read("versions") for r in batch.to_pylist()]
        content: dict[str, bytes] = {}
        for row in versions:
            try:
                with adapter.open_content(row) as stream:
                    content[row["version_id"]] = stream.read()
            except FileNotFoundError:
                pass
        cases = [r for batch in adapter.read("cases") for r in batch.to_pylist()]
    finally:
        adapter.close()
    return {"versions": {r["version_id"]: r for r in versions}, "content": content, "cases": cases}


def manifest_versions(archive: Path) -> dict[str, dict[str, Any]]:
    return {v["version_id"]: v for v in archive_versions(archive)}


def check_restored(paths: list[Path], to: Path, archive: Path, demo: dict[str, Any]) -> set[str]:
    """Every restored file is where it should be, equals the demo's bytes and the manifest's hash."""
    recorded = manifest_versions(archive)
    by_place = {(r["document_id"], f"{r['version_no']}-{safe_name(r['file_name'], 'content')}"): r
                for r in demo["versions"].values()}
    restored = set()
    for path in paths:
        assert path.parent.parent == to
        row = by_place[(path.parent.name, path.name)]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == recorded[row["version_id"]]["sha256"]
        assert data == demo["content"][row["version_id"]]
        restored.add(row["version_id"])
    assert not [p for p in to.rglob("*") if ".restore-tmp-" in p.name]
    return restored


def test_restore_one_document(backups: Backups, demo: dict[str, Any], tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    for row in demo["versions"].values():
        if row["version_id"] in demo["content"]:
            counts[row["document_id"]] = counts.get(row["document_id"], 0) + 1
    document = max(counts, key=lambda d: (counts[d], d))
    assert counts[document] >= 2
    to = tmp_path / "out"
    paths = api.restore(backups.newer, to=to, key_file=backups.recipient_key, signer_key=backups.signing_pub,
                        document_ids=[document])
    restored = check_restored(paths, to, backups.newer, demo)
    assert restored == {v for v, r in demo["versions"].items() if r["document_id"] == document}
    assert {p.parent.name for p in paths} == {document}


def test_restore_one_case_through_the_cli(backups: Backups, demo: dict[str, Any], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    case = next(c for c in demo["cases"] if c["document_id"] and any(
        r["document_id"] == c["document_id"] and v in demo["content"] for v, r in demo["versions"].items()))
    to = tmp_path / "out"
    assert run_cli(["--quiet", "restore", str(backups.newer), "--to", str(to), "--key-file",
                    str(backups.recipient_key), "--signer-key", str(backups.signing_pub),
                    "--case", case["case_id"]]) == 0
    out = capsys.readouterr().out
    paths = [Path(line.removeprefix("restored: ")) for line in out.splitlines() if line.startswith("restored: ")]
    restored = check_restored(paths, to, backups.newer, demo)
    assert restored == {v for v, r in demo["versions"].items()
                        if r["document_id"] == case["document_id"] and v in demo["content"]}


def test_restore_everything_through_the_cli(backups: Backups, demo: dict[str, Any], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    to = tmp_path / "out"
    assert run_cli(["--quiet", "restore", str(backups.newer), "--to", str(to), "--key-file",
                    str(backups.recipient_key), "--signer-fingerprint", backups.signer_fingerprint, "--all"]) == 0
    paths = [p for p in to.rglob("*") if p.is_file()]
    restored = check_restored(paths, to, backups.newer, demo)
    assert restored == set(demo["content"])             # every version with content, none missing
    missing = {v for v, m in manifest_versions(backups.newer).items() if m.get("missing")}
    assert missing and missing == set(demo["versions"]) - set(demo["content"])
    assert f"{len(restored)} version(s) restored" in capsys.readouterr().out


def test_restore_everything_within_the_usual_limit_of_open_files(backups: Backups, demo: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    """A part holds thousands of versions. Restore kept each one's file open until its part was done
    and failed with EMFILE under the common limit of 1,024 open files; now each closes at its last chunk."""
    import resource

    per_part: dict[str, int] = {}
    for version in manifest_versions(backups.newer).values():
        if not version.get("missing"):
            per_part[version["part"]] = per_part.get(version["part"], 0) + 1
    spare = 40  # descriptors left free: the old way needed one per version of a part
    limit = len(os.listdir("/proc/self/fd")) + spare
    assert max(per_part.values()) > 2 * spare, "a part must hold more versions than there are spare descriptors"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        paths = api.restore(backups.newer, to=tmp_path / "out", key_file=backups.recipient_key,
                            signer_key=backups.signing_pub, everything=True)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert check_restored(paths, tmp_path / "out", backups.newer, demo) == set(demo["content"])


def test_restore_never_overwrites(backups: Backups, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    to = tmp_path / "out"
    args = ["--quiet", "restore", str(backups.newer), "--to", str(to), "--key-file", str(backups.recipient_key),
            "--signer-key", str(backups.signing_pub), "--document", "1"]
    assert run_cli(args) == 0
    first = sorted((to / "1").iterdir())[0]
    first.write_bytes(b"kept")
    capsys.readouterr()
    assert run_cli(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert first.read_bytes() == b"kept"


def test_restore_refuses_an_archive_whose_signature_fails(backups: Backups, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    archive = backups.copy(tmp_path / "archive")
    signed_by_another_key(archive, backups)
    to = tmp_path / "out"
    assert run_cli(["--quiet", "restore", str(archive), "--to", str(to), "--key-file", str(backups.recipient_key),
                    "--signer-key", str(backups.signing_pub), "--all"]) == 1
    err = capsys.readouterr().err
    assert "refusing to restore" in err and "manifest.sig" in err
    assert not to.exists()


@pytest.mark.parametrize("tamper", [version_list_entry_edited, version_list_truncated, version_list_deleted])
def test_restore_refuses_a_version_list_that_is_not_the_signed_one(tamper: Any, backups: Backups, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """versions.jsonl is not covered by the signature's bytes, only by its hash in the signed
    manifest: restore checks that hash before it writes a single file."""
    archive = backups.copy(tmp_path / "archive")
    tamper(archive, backups)
    to = tmp_path / "out"
    assert run_cli(["--quiet", "restore", str(archive), "--to", str(to), "--key-file", str(backups.recipient_key),
                    "--signer-key", str(backups.signing_pub), "--document", "1"]) == 1
    err = capsys.readouterr().err
    assert "versions.jsonl" in err and err.count("\n") == 1, err
    assert not to.exists() or not [p for p in to.rglob("*") if p.is_file()]


def test_an_archive_of_format_version_1_still_verifies_and_restores(backups: Backups, demo: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    """Archives written before versions.jsonl (the list inside manifest.json) stay readable."""
    archive = backups.copy(tmp_path / "archive")
    as_format_version_1(archive, backups)
    assert not (archive / "versions.jsonl").exists()
    for extra in ((), ("--full", "--key-file", str(backups.recipient_key))):
        assert run_cli(["--quiet", "verify", str(archive), "--signer-key", str(backups.signing_pub), *extra]) == 0
    paths = api.restore(archive, to=tmp_path / "out", key_file=backups.recipient_key,
                        signer_key=backups.signing_pub, everything=True)
    assert check_restored(paths, tmp_path / "out", archive, demo) == set(demo["content"])
    (archive / "versions.jsonl").write_bytes(b"")                      # not part of a version 1 archive
    result = verify_archive(archive, signer=backups.signer)
    assert [(p.file, p.kind) for p in result.problems] == [("versions.jsonl", "untracked")]


def test_restore_chooses_the_same_versions_the_fast_way_as_entry_by_entry(backups: Backups, demo: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    """The choice of versions is read from versions.jsonl by Arrow (at 1,000,000 versions entry by
    entry took 8-9 s before the first file was written); it must choose exactly what reading the list
    entry by entry chooses, in the same order, and know the same documents, including one whose
    content is missing everywhere. A format 1 archive has no versions.jsonl: the slow way only."""
    from decom.archive.restore import _Archive, _read_one_by_one, _scanned

    with_content = sorted({demo["versions"][v]["document_id"] for v in demo["content"]})
    without = sorted({r["document_id"] for r in demo["versions"].values()} - set(with_content))
    assert without, "the demo has a document whose versions all lack content"
    archive = _Archive(backups.newer, backups.private, backups.signer)
    chosen: dict[str, Any] = {}
    for name, wanted in (("all", None), ("some", {with_content[0], with_content[-1], without[0]}),
                         ("no content", {without[0]}), ("unknown", {"no-such-document"})):
        fast = _scanned(archive, wanted)
        assert fast is not None, "the fast reader gave up on an archive decom just wrote"
        assert fast == _read_one_by_one(archive, wanted)
        chosen[name] = fast
    assert len(chosen["all"][0]) == len(demo["content"]) and chosen["all"][1] == set()  # no set of every document
    assert {c[0] for c in chosen["some"][0]} == {with_content[0], with_content[-1]}
    assert chosen["some"][1] == {with_content[0], with_content[-1], without[0]}
    assert chosen["no content"] == ([], {without[0]})
    assert chosen["unknown"] == ([], set())

    old = backups.copy(tmp_path / "archive")
    as_format_version_1(old, backups)
    assert _scanned(_Archive(old, backups.private, backups.signer), None) is None


def test_restore_refuses_content_that_does_not_match_the_manifest(backups: Backups, tmp_path: Path) -> None:
    archive = backups.copy(tmp_path / "archive")
    bytes_changed_after_hashing(archive, backups)      # first chunk of PART1 altered, manifest re-signed
    damaged = next(v for v in manifest_versions(archive).values() if v.get("part") == PART1)
    to = tmp_path / "out"
    with pytest.raises(ArchiveIntegrityError, match=f"version {damaged['version_id']} .* the manifest says"):
        api.restore(archive, to=to, key_file=backups.recipient_key, signer_key=backups.signing_pub,
                    document_ids=[damaged["document_id"]])
    assert not [p for p in to.rglob("*") if p.is_file()]


def test_restore_refuses_a_file_that_does_not_match_the_manifest(backups: Backups, tmp_path: Path) -> None:
    archive = backups.copy(tmp_path / "archive")
    versions = archive / "data/versions.parquet"
    versions.write_bytes(versions.read_bytes()[:-10])
    with pytest.raises(ArchiveIntegrityError, match="data/versions.parquet does not match the manifest"):
        api.restore(archive, to=tmp_path / "out", key_file=backups.recipient_key, signer_key=backups.signing_pub,
                    everything=True)


def test_restore_with_a_key_that_is_not_a_recipient(backups: Backups, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--quiet", "restore", str(backups.newer), "--to", str(tmp_path / "out"), "--key-file",
                    str(backups.other_key), "--signer-key", str(backups.signing_pub), "--all"]) == 2
    assert "wrong key" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    ([], "say what to restore"),
    (["--all", "--document", "1"], "do not combine"),
    (["--document", "no-such-document"], "no-such-document"),
    (["--case", "no-such-case"], "no-such-case"),
], ids=["nothing", "all-and-document", "unknown-document", "unknown-case"])
def test_restore_usage_errors(args: list[str], words: str, backups: Backups, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--quiet", "restore", str(backups.newer), "--to", str(tmp_path / "out"), "--key-file",
                    str(backups.recipient_key), "--signer-key", str(backups.signing_pub), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, expected", [
    ("report.pdf", "report.pdf"), ("../../etc/passwd", "____etc_passwd"), ("a/b\\c", "a_b_c"), ("..", "_"),
    ("", "content"), (None, "content"), (".", "content"), ("x\x00y\nz", "x_y_z"), ("Договор №1.odt", "Договор №1.odt"),
])
def test_file_names_are_sanitized(name: str | None, expected: str) -> None:
    cleaned = safe_name(name, "content")
    assert cleaned == expected
    assert "/" not in cleaned and "\\" not in cleaned and ".." not in cleaned
    assert len(safe_name("я" * 300, "x").encode()) <= 200


def test_restore_through_the_api_needs_a_selection(backups: Backups, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="say what to restore"):
        api.restore(backups.newer, to=tmp_path, key_file=backups.recipient_key, signer_key=backups.signing_pub)


# --- docs/archive-format.md section 9 ----------------------------------------------------------------------

def section_9_examples() -> list[str]:
    text = (REPO / "docs" / "archive-format.md").read_text(encoding="utf-8")
    section = text.split("## 9.", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("index", [0, 1], ids=["with-decom", "pyarrow-only"])
def test_the_documented_examples_read_an_archive_with_plain_pyarrow(index: int, backups: Backups) -> None:
    examples = section_9_examples()
    assert len(examples) == 2
    code = examples[index].replace('"ARCHIVE"', repr(str(backups.newer))).replace(
        '"auditor.key"', repr(str(backups.recipient_key)))
    namespace: dict[str, Any] = {}
    exec(compile(code, f"archive-format.md section 9 example {index + 1}", "exec"), namespace)
    table = namespace["table"]
    manifest = json.loads((backups.newer / "manifest.json").read_bytes())
    assert table.num_rows == manifest["counts"]["documents"] > 0
    assert "title" in table.column_names
    assert isinstance(namespace["pq"], type(pq))
