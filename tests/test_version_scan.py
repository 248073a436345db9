"""decom verify reads versions.jsonl the fast way (decom/archive/version_scan.py: Arrow parses it and
checks whole columns) and falls back to reading it entry by entry when the fast way cannot vouch for
every entry. The fast way must never accept a list the entry-by-entry reading finds fault with, and
must agree with it on the count and the Merkle root; and a well-formed list must take the fast way,
or the speed-up silently never happens. Lists are generated with every kind of flaw a writer could
sign: out of order, repeated, bad hashes, wrong types, nulls, parts not listed, lines that are not
one JSON object."""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from benchmarks.verify_quick import build as build_many_file_archive
from decom.archive import verify as verify_module
from decom.archive.manifest import manifest_head, merkle_root, version_lines, write_signed, write_version_list
from decom.archive.verify import verify_archive
from decom.archive.version_scan import scan

KEY = Ed25519PrivateKey.generate()
PARTS = ["content/part-000001.parquet", "content/part-000002.parquet"]
HEX = "0123456789abcdef"

ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=4)
sha = st.text(HEX, min_size=64, max_size=64)
present = st.fixed_dictionaries({"document_id": ids, "version_id": ids, "sha256": sha,
                                 "size": st.integers(0, 1 << 40), "chunks": st.integers(1, 9),
                                 "part": st.sampled_from(PARTS)})
missing = st.fixed_dictionaries({"document_id": ids, "version_id": ids, "missing": st.just(True)})
odd_values = st.one_of(st.none(), st.booleans(), st.integers(-1, 3), st.just(1 << 70), st.floats(0, 2),
                       st.text(string.hexdigits, min_size=63, max_size=65), st.just("content/part-000003.parquet"),
                       st.just(["a"]), st.just({"a": 1}), st.just("\ud800"))
flaw_keys = st.sampled_from(["document_id", "version_id", "sha256", "size", "chunks", "part", "missing", "extra"])
odd_lines = st.sampled_from([b"", b"[1, 2]", b"not json", b"{}", b'{"document_id": "a"} {"document_id": "b"}',
                             b'{"document_id":"d","document_id":"e","version_id":"v","missing":true}', b"null"])


def _line(entry: dict[str, Any]) -> bytes:
    """Canonical JSON, or with \\u escapes where a lone surrogate cannot be written as UTF-8."""
    try:
        return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


@st.composite
def version_lists(draw: st.DrawFn) -> list[bytes]:
    """The lines of a versions.jsonl, most of the time sorted and well-formed, often with a flaw."""
    entries = draw(st.lists(st.one_of(present, missing), max_size=30))
    if draw(st.booleans()):
        entries.sort(key=lambda v: (v["document_id"], v["version_id"]))
    for _ in range(draw(st.integers(0, 2))):   # a value of the wrong kind, or one key too many
        if entries:
            entry = entries[draw(st.integers(0, len(entries) - 1))]
            entry[draw(flaw_keys)] = draw(odd_values)
    lines = [_line(v) for v in entries]
    if lines and draw(st.integers(0, 4)) == 0:   # a line that is not one JSON object
        lines.insert(draw(st.integers(0, len(lines))), draw(odd_lines))
    return lines


def write_archive(folder: Path, lines: list[bytes]) -> Path:
    """An archive whose manifest is signed over exactly these lines (a buggy writer's list), with two
    content parts to be assigned to: quick verification hashes them, never decrypts them."""
    archive = folder / "archive"
    archive.mkdir()
    (archive / "content").mkdir()
    files = []
    for seq, path in enumerate(PARTS, start=1):
        (archive / path).write_bytes(path.encode())
        files.append({"seq": seq, "path": path, "kind": "content", "entity": None, "rows": 1,
                      "size": len(path), "sha256": hashlib.sha256(path.encode()).hexdigest()})
    listed = write_version_list(archive, [b"".join(line + b"\n" for line in lines)], len(lines))
    head = manifest_head(archive_id="a" * 32, run_id="r", plan_name="p", plan_sha256="0" * 64,
                         created_at="2026-12-03T00:00:00+00:00", source="test", freeze=None,
                         signer=KEY.public_key(), recipients=[], files=files, counts={})
    head["version_list"] = listed
    head["merkle_root"] = "0" * 64   # the root is compared after the list is read: beside the point here
    write_signed(archive, head, KEY)
    return archive


def entry_by_entry(archive: Path, monkeypatch: pytest.MonkeyPatch) -> verify_module.VerifyResult:
    with monkeypatch.context() as patch:
        patch.setattr(verify_module, "scan", lambda *args: None)
        return verify_archive(archive, signer=KEY.public_key())


def problems(result: verify_module.VerifyResult) -> list[tuple[str, str]]:
    return [(p.file, p.what) for p in result.problems if "merkle_root" not in p.what]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=version_lists())
def test_the_fast_way_accepts_only_what_the_entry_by_entry_reading_accepts(
        lines: list[bytes], tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_archive(tmp_path_factory.mktemp("scan"), lines)
    record = json.loads((archive / "manifest.json").read_bytes())["version_list"]
    kept: list[Any] = []
    fast = scan(archive, record, set(PARTS), keep=kept.append)
    for_restore = scan(archive, record, set(PARTS), keep=[].append, merkle=False)   # restore's way: no root
    assert (for_restore is None) == (fast is None), "without the Merkle root the same list must pass or fail"
    slow = entry_by_entry(archive, monkeypatch)
    event("the fast way vouched" if fast is not None else "the fast way gave up")
    if fast is not None:
        assert problems(slow) == [], "the fast way accepted a list the entry-by-entry reading refuses"
        entries = [json.loads(line) for line in lines]
        assert fast.count == slow.checked["versions"] == len(entries)
        assert fast.root == merkle_root(entries)
        assert fast.missing == {(v["document_id"], v["version_id"]) for v in entries if v.get("missing")}
        assert sum(batch.num_rows for batch in kept) == len(entries) - len(fast.missing)
        assert for_restore is not None and (for_restore.count, for_restore.missing, for_restore.root) == \
            (fast.count, fast.missing, "")
    assert problems(verify_archive(archive, signer=KEY.public_key())) == problems(slow)


@settings(max_examples=100, deadline=None)
@given(entries=st.lists(st.one_of(present, missing), max_size=40, unique_by=lambda v: (v["document_id"],
                                                                                      v["version_id"])))
def test_a_well_formed_list_takes_the_fast_way(entries: list[dict[str, Any]],
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    entries.sort(key=lambda v: (v["document_id"], v["version_id"]))
    archive = write_archive(tmp_path_factory.mktemp("scan"), version_lines(entries).split(b"\n")[:-1])
    record = json.loads((archive / "manifest.json").read_bytes())["version_list"]
    fast = scan(archive, record, set(PARTS), keep=None)
    assert fast is not None and fast.count == len(entries) and fast.root == merkle_root(entries)


GOOD = [{"document_id": "d1", "version_id": "v1", "sha256": "a" * 64, "size": 3, "chunks": 1, "part": PARTS[0]},
        {"document_id": "d1", "version_id": "v2", "missing": True},
        {"document_id": "d2", "version_id": "v1", "sha256": "b" * 64, "size": 0, "chunks": 1, "part": PARTS[1]}]


def _flawed(change: Any) -> list[bytes]:
    entries = [dict(v) for v in GOOD]
    change(entries)
    return [_line(v) for v in entries]


FLAWS = {
    "sha256 in capitals": lambda e: e[0].update(sha256="A" * 64),
    "sha256 too short": lambda e: e[0].update(sha256="a" * 63),
    "sha256 null": lambda e: e[0].update(sha256=None),
    "sha256 absent": lambda e: e[2].pop("sha256"),
    "size null": lambda e: e[0].update(size=None),
    "size absent": lambda e: e[2].pop("size"),
    "size a fraction": lambda e: e[0].update(size=1.5),
    "size a string": lambda e: e[0].update(size="3"),
    "chunks absent": lambda e: e[0].pop("chunks"),
    "part not listed": lambda e: e[0].update(part="content/part-000009.parquet"),
    "part null": lambda e: e[2].update(part=None),
    "part a list": lambda e: e[2].update(part=[PARTS[0]]),
    "missing false without a hash": lambda e: e[1].update(missing=False),
    "document_id null": lambda e: e[1].update(document_id=None),
    "version_id absent": lambda e: e[2].pop("version_id"),
    "document_id a number": lambda e: e[0].update(document_id=1),
    "out of order": lambda e: e.reverse(),
    "repeated": lambda e: e.insert(1, dict(e[0])),
    "same document, versions out of order": lambda e: e.__setitem__(slice(0, 2), [e[1], e[0]]),
}
LINES = {"a first line null": [b"null", *_flawed(lambda e: None)],
         "a blank line": [*_flawed(lambda e: None)[:2], b"", _flawed(lambda e: None)[2]],
         "two entries on one line": [_flawed(lambda e: None)[0] + b" " + _flawed(lambda e: None)[1],
                                     _flawed(lambda e: None)[2]],
         "an array": [*_flawed(lambda e: None), b"[1, 2]"]}


@pytest.mark.parametrize("lines", [*(_flawed(f) for f in FLAWS.values()), *LINES.values()],
                         ids=[*FLAWS, *LINES])
def test_each_flaw_makes_the_fast_way_give_up_and_verify_name_it(lines: list[bytes], tmp_path: Path) -> None:
    archive = write_archive(tmp_path, lines)
    record = json.loads((archive / "manifest.json").read_bytes())["version_list"]
    assert scan(archive, record, set(PARTS), keep=[].append) is None
    assert any(p.file == "versions.jsonl" for p in verify_archive(archive, signer=KEY.public_key()).problems)


def test_the_unflawed_list_takes_the_fast_way(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, _flawed(lambda e: None))
    record = json.loads((archive / "manifest.json").read_bytes())["version_list"]
    assert scan(archive, record, set(PARTS), keep=[].append) is not None


def test_a_list_of_many_blocks_takes_the_fast_way_and_order_is_checked_across_blocks(tmp_path: Path) -> None:
    """Arrow reads the list in blocks of 1 MiB: entries out of order where one block ends and the
    next begins are found as surely as within a block."""
    import pyarrow.json as pj

    from decom.archive import version_scan

    archive, signer = build_many_file_archive(tmp_path, 12_000)   # ~2.4 MB of entries: three blocks
    manifest = json.loads((archive / "manifest.json").read_bytes())
    record, parts = manifest["version_list"], {f["path"] for f in manifest["files"]}
    fast = scan(archive, record, parts, keep=None)
    assert fast is not None and fast.count == 12_000 and fast.root == manifest["merkle_root"]
    assert verify_archive(archive, signer=signer).ok
    reader = pj.open_json(archive / "versions.jsonl", read_options=pj.ReadOptions(block_size=version_scan.BLOCK))
    seam = next(iter(reader)).num_rows          # the first block's last entry is line `seam`
    assert seam < 12_000
    lines = (archive / "versions.jsonl").read_bytes().split(b"\n")
    lines[seam - 1], lines[seam] = lines[seam], lines[seam - 1]
    data = b"\n".join(lines)
    (archive / "versions.jsonl").write_bytes(data)
    swapped = {**record, "sha256": hashlib.sha256(data).hexdigest()}   # as a writer that got it wrong signs it
    assert scan(archive, swapped, parts, keep=None) is None
    assert scan(archive, swapped, parts, keep=None, merkle=False) is None   # restore's way checks order too
