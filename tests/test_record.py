"""The decommission record: signed, complete, readable offline, and checked against the journal."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import write_plan
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from decom import api
from decom.archive.keys import canonical_json, fingerprint, generate
from decom.cli import run_cli
from decom.journal import GENESIS, Journal

PASSPHRASE_ENV = "DECOM_TEST_RECORD_PASSPHRASE"
OPERATOR = "Олена Records-Officer"

BACKUP = """
[[stages]]
kind = "backup"
part_mb = 1
verify_after = "none"

[archive]
target = "archives"
recipients = ["keys/auditor.pub"]
signing_key_file = "keys/signing.key"
signing_key_passphrase = "${DECOM_TEST_RECORD_PASSPHRASE}"

[[accept]]
stage = "inventory"
match = "missing from the content root"
by = "Records office lead"
reason = "lost in the 2022 migration; paper originals in archive box 14"
"""


@dataclass
class Recorded:
    plan: Path
    state: Path
    record_dir: Path
    public_key: Path
    passphrase: str

    def record(self) -> dict[str, Any]:
        return dict(json.loads((self.record_dir / "record.json").read_bytes()))

    @property
    def journal(self) -> Path:
        return self.state / "journal.jsonl"


def signing_key(folder: Path, passphrase: str) -> Path:
    """An Ed25519 signing key protected by a passphrase, as an operator would keep it."""
    key = Ed25519PrivateKey.generate()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "signing.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode())))
    public = folder / "signing.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


def verify_cli(record: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = run_cli(["--quiet", "verify-record", str(record), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def recorded(small_demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorded:  # type: ignore[no-untyped-def]
    """The small demo run in two runs (inventory, then the rest) with a backup, then recorded by the CLI."""
    url, content, _ = small_demo
    passphrase = f"pass-{secrets.token_hex(12)}"
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)
    monkeypatch.setenv("DECOM_OPERATOR", OPERATOR)
    generate("recipient", tmp_path / "keys" / "auditor")
    public = signing_key(tmp_path / "keys", passphrase)
    plan = write_plan(tmp_path, url, content, access_audit=True, extra_stages=BACKUP)
    assert run_cli(["--quiet", "run", str(plan), "--stage", "inventory"]) == 0
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    assert run_cli(["--quiet", "record", str(plan)]) == 0
    state = tmp_path / "test-plan.state"
    return Recorded(plan, state, state / "record", public, passphrase)


def test_record_holds_the_plan_every_run_and_stage_the_archive_and_the_journal_head(recorded: Recorded) -> None:
    record = recorded.record()
    data = (recorded.record_dir / "record.json").read_bytes()
    assert data == canonical_json(json.loads(data)), "record.json must be canonical JSON"
    assert record["plan"]["sha256"] == hashlib.sha256(recorded.plan.read_bytes()).hexdigest()
    assert (record["plan"]["name"], record["plan"]["owner"], record["plan"]["ticket"]) == \
        ("test-plan", "Test Operator", "TEST-1")

    status = api.status(recorded.plan)
    assert [r["run_id"] for r in record["runs"]] == [r["run_id"] for r in status.runs] and len(record["runs"]) == 2
    assert all(r["operator"] == OPERATOR and r["status"] == "done" and r["host"] and r["started_at"]
               and r["finished_at"] for r in record["runs"])
    assert [s["name"] for s in record["stages"]] == ["inventory", "access_audit", "backup"]
    for stage, expected in zip(record["stages"], status.stages, strict=True):
        assert stage["status"] == "done" and stage["started_at"] and stage["finished_at"]
        assert len(stage["steps"]) == expected.steps_done
        assert all(s["status"] == "done" and s["attempts"] == 1 and s["run_id"] in {r["run_id"] for r in record["runs"]}
                   for s in stage["steps"])

    [archive_dir] = [p for p in (recorded.plan.parent / "archives").iterdir() if p.is_dir()]
    manifest = json.loads((archive_dir / "manifest.json").read_bytes())
    [item] = record["archives"]["stages"]
    archive = item["archive"]
    assert archive["archive_id"] == manifest["archive_id"]
    assert archive["manifest_sha256"] == hashlib.sha256((archive_dir / "manifest.json").read_bytes()).hexdigest()
    assert archive["manifest_on_disk"] == "matches" and archive["merkle_root"] == manifest["merkle_root"]

    # The head before the record's own entry; that entry follows and names the record's SHA-256.
    lines = recorded.journal.read_bytes().splitlines()
    entries = record["journal"]["entries"]
    assert len(lines) == entries + 1
    assert record["journal"]["head"] == hashlib.sha256(lines[entries - 1]).hexdigest()
    written = json.loads(lines[entries])
    assert written["event"] == "record_written" and written["prev"] == record["journal"]["head"]
    assert written["details"]["sha256"] == hashlib.sha256(data).hexdigest()

    findings = pq.read_table(recorded.state / "stages/access_audit/exports/findings.parquet").to_pylist()
    assert len(record["findings"]["items"]) == len(findings) > 0
    assert sum(record["findings"]["counts"].values()) == len(findings)
    [accepted] = record["accepted_blockers"]
    assert accepted["by"] == "Records office lead" and "box 14" in accepted["reason"] and len(accepted["runs"]) == 2
    for section in ("handover", "shutdown", "final_checks"):
        assert record[section]["in_plan"] is False and record[section]["note"] == f"no {section} stage in the plan"

    signature = json.loads((recorded.record_dir / "record.sig").read_bytes())
    public = serialization.load_pem_public_key(recorded.public_key.read_bytes())
    public.verify(base64.b64decode(signature["signature"]), data)  # type: ignore[union-attr]
    assert signature["fingerprint"] == record["signer"]["fingerprint"] == fingerprint(public)  # type: ignore[arg-type]


def test_verify_record_passes_with_the_signer_key_or_its_fingerprint(recorded: Recorded,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    assert code == 0, out
    assert out.splitlines()[-1].startswith("OK: ") and recorded.record()["journal"]["head"] in out
    code, out = verify_cli(recorded.record_dir, "--signer-fingerprint", recorded.record()["signer"]["fingerprint"],
                           "--json", capsys=capsys)
    result = json.loads(out)
    assert code == 0 and result["ok"] is True and result["problems"] == []
    assert result["journal_checked"] == str(recorded.journal)
    assert api.verify_record(recorded.record_dir, signer=recorded.public_key) == []


def test_an_edited_record_fails(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    record = recorded.record()
    record["plan"]["owner"] = "Someone Else"
    (recorded.record_dir / "record.json").write_bytes(canonical_json(record))
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    assert code == 1
    assert "FAIL the signature does not match record.json: the record or its signature was altered" in out


def test_a_signature_from_another_key_fails(recorded: Recorded, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    other = Ed25519PrivateKey.generate()
    data = (recorded.record_dir / "record.json").read_bytes()
    (recorded.record_dir / "record.sig").write_bytes(canonical_json({
        "alg": "Ed25519", "fingerprint": fingerprint(other.public_key()),
        "signature": base64.b64encode(other.sign(data)).decode()}))
    fp = recorded.record()["signer"]["fingerprint"]
    for trusted in (["--signer-key", str(recorded.public_key)], ["--signer-fingerprint", fp]):
        code, out = verify_cli(recorded.record_dir, *trusted, capsys=capsys)
        assert code == 1
        assert f"record.sig is signed by {fingerprint(other.public_key())}, not by the trusted key {fp}" in out


def test_a_journal_edited_before_the_recorded_head_fails(recorded: Recorded,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    original = recorded.journal.read_bytes()
    lines = original.splitlines()
    entry = json.loads(lines[5])
    entry["operator"] = "nobody"
    lines[5] = json.dumps(entry, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    recorded.journal.write_bytes(b"\n".join(lines) + b"\n")
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    assert code == 1 and "the chain is broken: line 7 (seq 6)" in out, out

    # A forger who also re-links every later entry keeps the chain intact, but not the recorded head.
    prev = GENESIS
    for number, line in enumerate(lines):
        entry = json.loads(line)
        entry["prev"] = prev
        lines[number] = json.dumps(entry, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
        prev = hashlib.sha256(lines[number]).hexdigest()
    recorded.journal.write_bytes(b"\n".join(lines) + b"\n")
    assert Journal(recorded.journal).verify().ok
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    entries = recorded.record()["journal"]["entries"]
    assert code == 1 and f"was edited: its head at entry {entries} is" in out, out


def test_a_truncated_journal_fails(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    lines = recorded.journal.read_bytes().splitlines(keepends=True)
    recorded.journal.write_bytes(b"".join(lines[:-6]))
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    entries = recorded.record()["journal"]["entries"]
    assert code == 1
    assert f"was truncated: it has {len(lines) - 6} entries, the record states {entries}" in out


def test_a_journal_that_continued_after_the_record_passes_with_a_note(recorded: Recorded, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    assert code == 0 and "note: the journal ends with this record's own record_written entry" in out
    assert run_cli(["--quiet", "run", str(recorded.plan)]) == 0  # nothing left to do: run_started, ..., run_finished
    added = len(recorded.journal.read_bytes().splitlines()) - recorded.record()["journal"]["entries"] - 1
    assert added >= 2
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    assert code == 0, out
    assert f"note: journal continued after the record ({added} more entries after the record's own " \
           "record_written entry)" in out
    # A copy of the journal given explicitly is checked the same way; a journal nowhere to be found is said so.
    copy = tmp_path / "handed-over-journal.jsonl"
    copy.write_bytes(recorded.journal.read_bytes())
    recorded.journal.unlink()
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    assert code == 0 and "note: the journal was not checked" in out and "journal not checked" in out
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), "--journal", str(copy),
                           capsys=capsys)
    assert code == 0 and f"journal {copy} checked" in out


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.references: list[str] = []
        self.by_id: dict[str, str] = {}
        self._open: str | None = None
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_style = tag == "style"
        values = dict(attrs)
        self.references += [value or "" for name, value in attrs
                            if name in ("src", "href", "xlink:href", "srcset", "action", "poster", "data",
                                        "background", "manifest", "ping")]
        self._open = values.get("id")

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
        if self._open:
            self.by_id[self._open] = self.by_id.get(self._open, "") + data

    def handle_endtag(self, tag: str) -> None:
        self._in_style, self._open = False, None


def test_record_html_opens_offline_and_shows_the_archive_and_the_journal_head(
        recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    html = (recorded.record_dir / "record.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    assert '<meta charset="utf-8">' in html and "script" not in page.tags
    for tag in ("link", "img", "iframe", "object", "embed", "base", "video", "audio", "source"):
        assert tag not in page.tags, f"<{tag}> would load something"
    assert all(ref.startswith("#") for ref in page.references), page.references
    assert all("url(" not in css and "@import" not in css for css in page.styles)
    record = recorded.record()
    assert page.by_id["journal-head"] == record["journal"]["head"]
    assert page.by_id["record-sha256"] == hashlib.sha256((recorded.record_dir / "record.json").read_bytes()).hexdigest()
    assert f'data-archive-id="{record["archives"]["stages"][0]["archive"]["archive_id"]}"' in html
    assert record["archives"]["stages"][0]["archive"]["manifest_sha256"] in html
    # The page is not signed, but it is a rendering of what is: an edited page is caught.
    (recorded.record_dir / "record.html").write_text(html.replace("Records office lead", "Nobody"), encoding="utf-8")
    code, out = verify_cli(recorded.record_dir, "--signer-key", str(recorded.public_key), capsys=capsys)
    assert code == 1 and "record.html does not show what record.json holds" in out


def test_the_signing_key_passphrase_never_reaches_the_record(recorded: Recorded) -> None:
    for name in ("record.json", "record.sig", "record.html"):
        text = (recorded.record_dir / name).read_text(encoding="utf-8")
        assert recorded.passphrase not in text and "PRIVATE KEY" not in text, name
    assert recorded.passphrase not in recorded.journal.read_text(encoding="utf-8")


def test_sections_say_when_their_stage_is_not_in_the_plan_or_did_not_run(small_demo, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import decom.engine

    # A final_checks stage this decom cannot run (as in a version without it): the record must say so.
    monkeypatch.setattr(decom.engine, "AVAILABLE_STAGE_KINDS", decom.engine.AVAILABLE_STAGE_KINDS - {"final_checks"})
    url, content, _ = small_demo
    generate("signing", tmp_path / "keys" / "signing")
    plan = write_plan(tmp_path, url, content, extra_stages='''
[[stages]]
kind = "final_checks"

[archive]
signing_key_file = "keys/signing.key"
''')
    assert run_cli(["--quiet", "run", str(plan)]) == 3  # final_checks is not available in this version
    out = tmp_path / "closing-record"
    result = api.record(plan, out=out)
    assert result.record_dir == out and (out / "record.html").is_file()
    record = json.loads((out / "record.json").read_bytes())
    assert [r["status"] for r in record["runs"]] == ["incomplete"]
    assert record["archives"]["note"] == "no backup stage in the plan"
    assert record["handover"]["note"] == "no handover stage in the plan"
    assert record["final_checks"]["in_plan"] is True
    assert record["final_checks"]["note"] == ("stage 'final_checks' did not run: not available in this version "
                                              "of decom")
    assert record["findings"]["note"] == "no stage wrote findings"

    # What exists is taken in: a checks.json, shutdown actions in the journal.
    checks = {"services_answering": 0, "logins_after_freeze": 0}
    (tmp_path / "test-plan.state/stages/final_checks").mkdir(parents=True)
    (tmp_path / "test-plan.state/stages/final_checks/checks.json").write_text(json.dumps(checks), encoding="utf-8")
    Journal(tmp_path / "test-plan.state/journal.jsonl").append("shutdown_service_stopped", host="edm-app-01")
    api.record(plan, out=out)
    record = json.loads((out / "record.json").read_bytes())
    assert record["final_checks"]["stages"][0]["checks"] == checks
    [action] = record["shutdown"]["journal_actions"]
    assert action["event"] == "shutdown_service_stopped" and action["details"] == {"host": "edm-app-01"}
    assert api.verify_record(out, signer=tmp_path / "keys" / "signing.pub") == []


def test_record_and_verify_record_usage_errors_exit_2(small_demo, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content)
    assert run_cli(["--quiet", "record", str(plan)]) == 2
    assert "has not run yet" in capsys.readouterr().err
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    assert run_cli(["--quiet", "record", str(plan)]) == 2
    assert "archive.signing_key_file" in capsys.readouterr().err
    assert run_cli(["--quiet", "verify-record", str(tmp_path)]) == 2
    assert "--signer-key PUB or --signer-fingerprint" in capsys.readouterr().err
    generate("signing", tmp_path / "keys" / "signing")
    assert run_cli(["--quiet", "verify-record", str(tmp_path), "--signer-key", str(tmp_path / "keys/signing.pub")]) == 2
    assert "is not a decommission record" in capsys.readouterr().err
