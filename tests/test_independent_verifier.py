"""tools/verify_archive.py, written from docs/archive-format.md alone, agrees with `decom verify`:
on a fresh archive, on every tampering case and on damage behind a valid signature. It is run as a
subprocess in which importing decom is impossible.
"""

from __future__ import annotations

import ast
import hashlib
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_archive_verify import DEEP, TAMPERS, Backups, Expect, as_format_version_1, make_backups

from decom.archive.manifest import merkle_root
from decom.cli import run_cli

TOOL = Path(__file__).resolve().parent.parent / "tools" / "verify_archive.py"
# Run the tool with decom made unimportable: any `import decom...` in it would fail.
RUNNER = "import runpy, sys; sys.modules['decom'] = None; sys.argv = sys.argv[1:]; " \
         "runpy.run_path(sys.argv[0], run_name='__main__')"


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Backups:
    return make_backups(tmp_path_factory.mktemp("backups"))


def tool(archive: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUNNER, str(TOOL), str(archive), *args],
                          capture_output=True, text=True, timeout=120)


def decom_verify(archive: Path, *args: str) -> int:
    return run_cli(["--quiet", "verify", str(archive), *args])


MODES = {"quick": [], "full": ["--full", "--key-file", "{key}"]}


def mode_args(mode: str, b: Backups, key: Path | None = None) -> list[str]:
    return ["--signer-key", str(b.signing_pub),
            *[a.replace("{key}", str(key or b.recipient_key)) for a in MODES[mode]]]


def test_the_tool_imports_nothing_but_stock_libraries() -> None:
    tree = ast.parse(TOOL.read_text(encoding="utf-8"))
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert "decom" not in modules
    assert modules - set(sys.stdlib_module_names) == {"pyarrow", "cryptography"}


def test_the_tool_and_decom_compute_the_same_merkle_root() -> None:
    module: dict[str, Any] = runpy.run_path(str(TOOL))
    for count in [*range(0, 40), 63, 64, 65, 127, 128, 129, 1000, 1023, 1025]:  # every shape of odd node
        versions = [{"document_id": f"d{i}", "version_id": f"v{i}",
                     "sha256": hashlib.sha256(str(i).encode()).hexdigest()}
                    if i % 4 else {"document_id": f"d{i}", "version_id": f"v{i}", "missing": True}
                    for i in range(count)]
        assert module["merkle"](versions) == merkle_root(versions)


@pytest.mark.parametrize("mode", MODES)
def test_both_pass_a_fresh_archive(mode: str, backups: Backups, capsys: pytest.CaptureFixture[str]) -> None:
    result = tool(backups.newer, *mode_args(mode, backups))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK ")
    assert decom_verify(backups.newer, *mode_args(mode, backups)) == 0


@pytest.mark.parametrize("mode", MODES)
def test_both_pass_an_archive_of_format_version_1(mode: str, backups: Backups, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    archive = backups.copy(tmp_path / "archive")
    as_format_version_1(archive, backups)
    result = tool(archive, *mode_args(mode, backups))
    assert result.returncode == 0, result.stdout + result.stderr
    assert decom_verify(archive, *mode_args(mode, backups)) == 0
    manifest = archive / "manifest.json"                         # an entry inside it edited: the signature fails
    manifest.write_bytes(manifest.read_bytes().replace(b'"missing":true', b'"missing":false', 1))
    assert tool(archive, *mode_args(mode, backups)).returncode == decom_verify(archive, *mode_args(mode, backups)) == 1


@pytest.mark.parametrize("case", [*TAMPERS, *DEEP])
def test_both_agree_on_every_tampering_case(case: str, backups: Backups, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    archive = backups.copy(tmp_path / "archive")
    expect: Expect = {**TAMPERS, **DEEP}[case](archive, backups)
    for mode in MODES:
        ours = decom_verify(archive, *mode_args(mode, backups))
        capsys.readouterr()
        theirs = tool(archive, *mode_args(mode, backups))
        assert theirs.returncode == ours, (mode, theirs.stdout, theirs.stderr)
        if mode == "full" or case in TAMPERS:
            assert ours == 1
            assert f"FAIL {expect.file}: " in theirs.stdout, (mode, theirs.stdout)
        else:
            assert ours == 0     # damage behind a valid signature: only a full verification sees it


def test_both_tell_a_missing_key_from_a_wrong_key(backups: Backups, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tool(backups.newer, "--signer-key", str(backups.signing_pub), "--full")
    wrong = tool(backups.newer, *mode_args("full", backups, backups.other_key))
    assert missing.returncode == wrong.returncode == 1
    assert "FAIL -: missing key" in missing.stdout and "FAIL -: wrong key" in wrong.stdout
    assert decom_verify(backups.newer, "--signer-key", str(backups.signing_pub), "--full") == 1
    assert decom_verify(backups.newer, *mode_args("full", backups, backups.other_key)) == 1


def test_the_tool_rejects_wrong_usage_with_exit_2(backups: Backups, tmp_path: Path) -> None:
    assert tool(backups.newer).returncode == 2                                   # no --signer-key
    assert tool(backups.newer, "--signer-key", str(backups.recipient_key)).returncode == 2   # not a public key
    empty = tmp_path / "empty"
    empty.mkdir()
    result = tool(empty, "--signer-key", str(backups.signing_pub))
    assert result.returncode == 2 and "not an archive" in result.stderr
