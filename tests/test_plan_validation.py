"""Plan loading and validation: every problem at once, with its line, key and a clear message."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decom.plan as plan_module
from decom.adapter import SourceConfig
from decom.errors import UserError
from decom.plan import (
    AVAILABLE_STAGE_KINDS,
    STAGE_KINDS,
    InventoryStage,
    LoadedPlan,
    PlanInvalid,
    PlanProblem,
    check_plan,
    load_plan,
)
from decom.plan_lines import key_lines, line_of

VALID = """\
[plan]
name = "demo-ministry-edm"
owner = "Operations / I. Petrenko"
ticket = "DECOM-1"

[source]
adapter = "demo"
url = "sqlite:///legacy.sqlite"
content_root = "content"

[[stages]]
kind = "inventory"
batch_files = 500
freeze_at = 2026-11-20T18:00:00Z
"""

# Line numbers in VALID: [plan] 1, [source] 6, adapter 7, url 8, [[stages]] 11, batch_files 13.


@pytest.fixture(autouse=True)
def known_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapter names come from entry points, which need not be installed for these tests."""
    monkeypatch.setattr(plan_module, "adapter_names", lambda: ["demo", "sql_generic"])


def write(folder: Path, text: str, name: str = "plan.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> list[PlanProblem]:
    with pytest.raises(PlanInvalid) as caught:
        load_plan(path)
    problems = caught.value.problems
    assert problems == [p for p in check_plan(path) if p.severity == "error"]
    return problems


def only_error(path: Path) -> PlanProblem:
    problems = errors_of(path)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# -- valid plans -----------------------------------------------------------------------------------

def test_valid_plan_loads(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    loaded = load_plan(path)
    assert isinstance(loaded, LoadedPlan)
    assert loaded.path == path.resolve() and loaded.path.is_absolute()
    assert loaded.plan_dir == tmp_path.resolve()
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.warnings == []
    assert check_plan(path) == []
    assert loaded.spec.plan.name == "demo-ministry-edm"
    stage = loaded.spec.stages[0]
    assert isinstance(stage, InventoryStage)
    assert stage.name == "inventory" and stage.batch_files == 500 and stage.hash_content is True
    assert stage.freeze_at is not None and stage.freeze_at.utcoffset() is not None
    assert loaded.state_dir() == tmp_path.resolve() / "plan.state"
    assert loaded.state_dir(tmp_path / "elsewhere") == (tmp_path / "elsewhere").absolute()
    assert loaded.state_url() is None
    assert loaded.archive_target() is None


def test_paths_are_relative_to_the_plan_folder(tmp_path: Path) -> None:
    text = VALID.replace('content_root = "content"', 'content_root = "content"\nmapping = "m.toml"')
    text += '\n[state]\nfolder = "st"\nurl = "sqlite:///state/cp.sqlite"\n\n[archive]\ntarget = "out"\n'
    text = text.replace('adapter = "demo"', 'adapter = "sql_generic"')
    loaded = load_plan(write(tmp_path, text))
    base = tmp_path.resolve()
    config = loaded.source_config()
    assert isinstance(config, SourceConfig)
    assert config.content_root == base / "content"
    assert config.url == f"sqlite:///{base / 'legacy.sqlite'}"
    assert config.options["mapping"] == str(base / "m.toml")
    assert config.plan_dir == base
    assert loaded.state_dir() == base / "st"
    assert loaded.state_url() == f"sqlite:///{base / 'state' / 'cp.sqlite'}"
    assert loaded.archive_target() == base / "out"


def test_stage_name_defaults_to_kind_and_can_be_set(tmp_path: Path) -> None:
    text = VALID + '\n[[stages]]\nkind = "inventory"\nname = "second-pass"\n'
    loaded = load_plan(write(tmp_path, text))
    assert [s.name for s in loaded.spec.stages] == ["inventory", "second-pass"]


# -- syntax ----------------------------------------------------------------------------------------

def test_syntax_error_is_one_problem_with_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("batch_files = 500", "batch_files = = 500"))
    problem = only_error(path)
    assert problem.line == 13
    assert problem.key == "-"
    assert re.search(r"line 13, column \d+", problem.message)
    assert str(problem).startswith(f"{path}:13: -: ")


def test_missing_file_is_plan_invalid(tmp_path: Path) -> None:
    with pytest.raises(PlanInvalid) as caught:
        load_plan(tmp_path / "nope.toml")
    assert isinstance(caught.value, UserError) and caught.value.exit_code == 2
    assert "not found" in str(caught.value)
    assert caught.value.problems[0].line is None
    assert str(caught.value.problems[0]).startswith(f"{tmp_path / 'nope.toml'}: -: ")
    assert len(check_plan(tmp_path / "nope.toml")) == 1


def test_not_utf8_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_bytes(VALID.encode() + b'\n# \xff\xfe\n')
    assert "UTF-8" in only_error(path).message


# -- unknown keys ----------------------------------------------------------------------------------

def test_unknown_top_level_key(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, 'colour = "blue"\n' + VALID))
    assert (problem.line, problem.key) == (1, "colour")
    assert "unknown key 'colour'" in problem.message


def test_unknown_top_level_table_points_at_its_header(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID + "\n[archve]\ntarget = 'x'\n"))
    assert (problem.line, problem.key) == (16, "archve")
    assert "did you mean 'archive'" in problem.message


def test_unknown_key_in_source(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('content_root = "content"', 'content_root = "content"\nuser = "x"'))
    problem = only_error(path)
    assert (problem.line, problem.key) == (10, "source.user")
    assert str(problem) == f"{path}:10: source.user: unknown key 'user'"


def test_unknown_key_in_stage_suggests_the_right_one(tmp_path: Path) -> None:
    text = VALID + '\n[[stages]]\nkind = "inventory"\nname = "again"\nhash_contnet = false\n'
    problem = only_error(write(tmp_path, text))
    assert (problem.line, problem.key) == (19, "stages[1].hash_contnet")
    assert "did you mean 'hash_content'" in problem.message


def test_source_options_are_free_and_handover_options_are_checked(tmp_path: Path) -> None:
    text = VALID.replace('content_root = "content"', 'content_root = "content"\noptions = { anything = 1 }')
    loaded = load_plan(write(tmp_path, text + '\n[[stages]]\nkind = "handover"\n'))
    assert loaded.source_config().options == {"anything": 1}
    assert loaded.spec.stages[1].kind == "handover" and not loaded.warnings
    problem = only_error(write(tmp_path, text + '\n[[stages]]\nkind = "handover"\nwhatever = [1, 2]\n'))
    assert (problem.line, problem.key) == (19, "stages[1].whatever")


def test_a_backup_stage_needs_a_target_recipients_and_a_signing_key(tmp_path: Path) -> None:
    problems = check_plan(write(tmp_path, VALID + '\n[[stages]]\nkind = "backup"\n'))
    messages = [p.message for p in problems if p.severity == "error"]
    assert any("archive.target" in m for m in messages)
    assert any("archive.recipients" in m for m in messages)
    assert any("archive.signing_key_file" in m for m in messages)
    text = VALID + '\n[archive]\ntarget = "a"\nrecipients = ["nope.pub"]\nsigning_key_file = "s.key"\n' \
        '\n[[stages]]\nkind = "backup"\n'
    errors = [p for p in check_plan(write(tmp_path, text)) if p.severity == "error"]
    assert {p.key for p in errors} == {"archive.recipients", "archive.signing_key_file"}
    assert all("not found" in p.message for p in errors)


# -- missing keys and wrong types ------------------------------------------------------------------

def test_missing_required_key_points_at_table_header(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID.replace('owner = "Operations / I. Petrenko"\n', "")))
    assert (problem.line, problem.key) == (1, "plan.owner")
    assert "missing required key" in problem.message


def test_missing_stages(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID.split("[[stages]]")[0]))
    assert problem.key == "stages" and problem.line is None
    assert "[[stages]]" in problem.message


def test_missing_stage_kind(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID.replace('kind = "inventory"\n', "")))
    assert (problem.line, problem.key) == (11, "stages[0].kind")


def test_wrong_type_is_not_coerced(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID.replace("batch_files = 500", 'batch_files = "500"')))
    assert (problem.line, problem.key) == (13, "stages[0].batch_files")
    assert problem.message == "expected an integer, got string '500'"


def test_out_of_range_and_bad_choice(tmp_path: Path) -> None:
    text = VALID.replace("batch_files = 500", "batch_files = 0\nchecksum_mismatch = 'ignore'")
    problems = errors_of(write(tmp_path, text))
    assert [(p.line, p.key) for p in problems] == [(13, "stages[0].batch_files"),
                                                   (14, "stages[0].checksum_mismatch")]
    assert "at least 1" in problems[0].message and "'report' or 'fail'" in problems[1].message


def test_freeze_at_needs_an_offset(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID.replace("18:00:00Z", "18:00:00")))
    assert problem.key == "stages[0].freeze_at" and "offset" in problem.message


def test_bad_names(tmp_path: Path) -> None:
    text = VALID.replace('"demo-ministry-edm"', '"demo ministry/edm"')
    text = text.replace("batch_files = 500", 'name = "in ventory"')
    problems = errors_of(write(tmp_path, text))
    assert [(p.line, p.key) for p in problems] == [(2, "plan.name"), (13, "stages[0].name")]


def test_access_audit_options_are_checked(tmp_path: Path) -> None:
    text = VALID + ('\n[[stages]]\nkind = "access_audit"\ndormant_days = 0\n'
                    'shared_account_patterns = ["^shared", "(scanner"]\n')
    problems = errors_of(write(tmp_path, text))
    assert [(p.line, p.key) for p in problems] == [(18, "stages[1].dormant_days"),
                                                   (19, "stages[1].shared_account_patterns[1]")]
    assert "regular expression" in problems[1].message


# -- adapters, stage kinds, stage names ------------------------------------------------------------

def test_unknown_adapter_names_the_known_ones(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID.replace('adapter = "demo"', 'adapter = "dmeo"')))
    assert (problem.line, problem.key) == (7, "source.adapter")
    assert "'dmeo'" in problem.message and "demo, sql_generic" in problem.message


def test_sql_generic_needs_a_mapping(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID.replace('adapter = "demo"', 'adapter = "sql_generic"')))
    assert (problem.line, problem.key) == (6, "source.mapping")


def test_unknown_stage_kind(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID + '\n[[stages]]\nkind = "shredder"\n'))
    assert (problem.line, problem.key) == (17, "stages[1].kind")
    assert "unknown stage kind 'shredder'" in problem.message and "inventory" in problem.message


def test_duplicate_stage_names(tmp_path: Path) -> None:
    problem = only_error(write(tmp_path, VALID + '\n[[stages]]\nkind = "inventory"\n'))
    assert (problem.line, problem.key) == (16, "stages[1]")
    assert "'inventory'" in problem.message and "stages[0]" in problem.message
    text = VALID + '\n[[stages]]\nkind = "handover"\nname = "inventory"\n'
    problem = only_error(write(tmp_path, text))
    assert (problem.line, problem.key) == (18, "stages[1].name")


def test_every_stage_kind_is_available_and_its_options_are_checked(tmp_path: Path) -> None:
    text = VALID + "".join(f'\n[[stages]]\nkind = "{kind}"\n' for kind in ("access_audit", "handover", "final_checks"))
    loaded = load_plan(write(tmp_path, text))
    assert loaded.warnings == [] and set(STAGE_KINDS) == AVAILABLE_STAGE_KINDS
    problem = only_error(write(tmp_path, text + '\n[[stages]]\nkind = "shutdown"\n'))
    assert (problem.line, problem.key, problem.message) == (25, "stages[4].hosts", "missing required key")


# -- secrets ---------------------------------------------------------------------------------------

PG_URL = "postgresql+psycopg://edm:${EDM_DB_PASSWORD}@db.example/edm"


def test_unset_env_var_names_variable_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDM_DB_PASSWORD", raising=False)
    path = write(tmp_path, VALID.replace("sqlite:///legacy.sqlite", PG_URL))
    problem = only_error(path)
    assert str(problem) == f"{path}:8: source.url: environment variable EDM_DB_PASSWORD is not set"


def test_literal_password_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = VALID.replace("sqlite:///legacy.sqlite", "postgresql://edm:hunter2@db/edm")
    text += '\n[state]\nurl = "postgresql://decom:pre${PW}@db/state"\n'
    monkeypatch.setenv("PW", "x")
    problems = errors_of(write(tmp_path, text))
    assert [(p.line, p.key) for p in problems] == [(8, "source.url"), (17, "state.url")]
    for problem in problems:
        assert problem.message == ("a password is written in the plan; reference it as ${ENV_VAR} "
                                   "or put the URL in url_file")
        assert "hunter2" not in str(problem)


def test_secrets_resolved_only_in_source_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDM_DB_PASSWORD", "s3cret-Value")
    monkeypatch.setenv("STATE_PW", "st8-Value")
    text = VALID.replace("sqlite:///legacy.sqlite", PG_URL)
    text += '\n[state]\nurl = "postgresql+psycopg://decom:${STATE_PW}@db/decom_state"\n'
    loaded = load_plan(write(tmp_path, text))
    assert loaded.source_config().url == "postgresql+psycopg://edm:s3cret-Value@db.example/edm"
    assert loaded.state_url() == "postgresql+psycopg://decom:st8-Value@db/decom_state"
    assert loaded.source_url_redacted() == "postgresql+psycopg://edm:***@db.example/edm"
    shown = repr(loaded.spec) + str(loaded.spec.model_dump()) + loaded.spec.model_dump_json()
    assert "s3cret" not in shown and "st8" not in shown and "${EDM_DB_PASSWORD}" in shown


def test_url_file(tmp_path: Path) -> None:
    text = VALID.replace('url = "sqlite:///legacy.sqlite"', 'url_file = "secrets/edm.url"')
    path = write(tmp_path, text)
    problem = only_error(path)
    assert (problem.line, problem.key) == (8, "source.url_file") and "not found" in problem.message
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "edm.url").write_text("postgresql://edm:file-Secret@db/edm\n")
    loaded = load_plan(path)
    assert loaded.source_config().url == "postgresql://edm:file-Secret@db/edm"
    assert loaded.source_url_redacted() == "postgresql://edm:***@db/edm"
    assert "file-Secret" not in repr(loaded.spec)


def test_url_and_url_file_exactly_one(tmp_path: Path) -> None:
    both = VALID.replace('content_root = "content"', 'url_file = "u.txt"')
    (tmp_path / "u.txt").write_text("sqlite:///x.sqlite")
    assert only_error(write(tmp_path, both)).key == "source.url_file"
    neither = VALID.replace('url = "sqlite:///legacy.sqlite"\n', "")
    problem = only_error(write(tmp_path, neither))
    assert (problem.line, problem.key) == (6, "source.url")


# -- several at once -------------------------------------------------------------------------------

def test_every_problem_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    text = """\
[plan]
name = "x"
colour = "blue"

[source]
adapter = "nope"
url = "postgresql://u:${NOT_SET_ANYWHERE}@h/db"

[[stages]]
kind = "inventory"
batch_files = "many"

[[stages]]
kind = "shredder"

[[stages]]
kind = "handover"
"""
    path = write(tmp_path, text)
    problems = errors_of(path)
    assert [(p.line, p.key) for p in problems] == [
        (1, "plan.owner"), (3, "plan.colour"), (6, "source.adapter"), (7, "source.url"),
        (11, "stages[0].batch_files"), (14, "stages[1].kind"),
    ]
    with pytest.raises(PlanInvalid) as caught:
        load_plan(path)
    assert str(caught.value) == f"{problems[0]} (and 5 more)"
    everything = check_plan(path)
    assert everything == problems  # the handover stage at the end is valid as it stands: no warning


# -- the line scanner ------------------------------------------------------------------------------

def test_line_scanner_skips_string_contents_and_reads_quoted_keys() -> None:
    text = '''\
[plan]
description = """
fake = 1
[[stages]]
"""
"odd.key" = 'x'
[source]
options = { a = 1, b = [1, { c = 2 }] }
[[stages]]
pats = [
  "x = y",
  "z",
]
[stages.extra]
k = 1
[[stages]]
'''
    lines = key_lines(text)
    assert ("plan", "fake") not in lines and ("stages", 1) in lines
    assert lines[("plan", "odd.key")] == 6
    assert lines[("source", "options", "b", 1, "c")] == 8
    assert lines[("stages", 0, "pats", 1)] == 12
    assert lines[("stages", 0, "extra", "k")] == 15
    assert lines[("stages", 1)] == 16
    assert line_of(lines, ("stages", 1, "missing")) == 16
    assert line_of(lines, ("nowhere",)) is None


# -- the real registry -----------------------------------------------------------------------------

def test_real_adapter_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from decom.adapter import adapter_names

    assert "demo" in adapter_names(), "decom must be installed (make install) so its entry points exist"
    monkeypatch.setattr(plan_module, "adapter_names", adapter_names)
    assert load_plan(write(tmp_path, VALID)).spec.source.adapter == "demo"
    problem = only_error(write(tmp_path, VALID.replace('"demo"', '"no-such-adapter"')))
    assert "demo" in problem.message


# -- robustness ------------------------------------------------------------------------------------

ROBUST = VALID.replace('content_root = "content"', '''content_root = "content"
options = { "quoted key" = 1, nested = { a = [1, 2] } }

[state]
url = "postgresql+psycopg://decom:${EDM_DB_PASSWORD}@db/decom_state"''').replace(
    'ticket = "DECOM-1"', 'ticket = "DECOM-1"\ndescription = """\nmulti = line\n[not a table]\n"""') + '''
[[stages]]
kind = "access_audit"
shared_account_patterns = ["^shared", 'scanner']

[[stages]]
kind = "backup"
free = { any = "thing" }
'''

VALUES = ["1", '"x"', "true", "[1, 2]", "{ a = 1 }", "2026-01-01T00:00:00Z", "1.5", "'${NOPE_VAR}'",
          '"postgresql://u:p@h/db"', '"${EDM_DB_PASSWORD}"', "[]", "1979-05-27", "07:32:00", "-0"]
SNIPPETS = st.text(alphabet=st.sampled_from(list('=[]{}"\'#.,\n \t\\$ab1_-') + ["é", "ї", "€", "\u2028"]),
                   max_size=12) | st.text(max_size=6)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = ROBUST
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        action = draw(st.sampled_from(["delete", "insert", "dup", "swap", "drop", "value"]))
        if action == "delete":
            start = draw(st.integers(0, len(text)))
            text = text[:start] + text[start + draw(st.integers(1, 30)):]
        elif action == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(SNIPPETS) + text[at:]
        elif action in ("dup", "swap", "drop"):
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if action == "dup":
                lines.insert(j, lines[i])
            elif action == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                del lines[i]
            text = "\n".join(lines)
        else:
            candidates = [n for n, line in enumerate(lines) if re.match(r"\s*[\w\"']+\s*=", line)]
            if candidates:
                n = draw(st.sampled_from(candidates))
                lines[n] = lines[n].split("=", 1)[0] + "= " + draw(st.sampled_from(VALUES))
                text = "\n".join(lines)
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated())
def test_mutated_plans_never_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("EDM_DB_PASSWORD", "s3cret")
    path = tmp_path / "mutated.toml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    problems = check_plan(path)
    line_count = text.count("\n") + 1
    for problem in problems:
        assert problem.severity in ("error", "warning")
        assert problem.line is None or 1 <= problem.line <= line_count
        assert "s3cret" not in str(problem)
    try:
        loaded = load_plan(path)
    except PlanInvalid as exc:
        assert exc.problems == [p for p in problems if p.severity == "error"] and exc.problems
        return
    assert all(p.severity == "warning" for p in problems)
    assert "s3cret" not in loaded.source_url_redacted()
    loaded.source_config()
    loaded.state_dir()
    loaded.state_url()
    loaded.archive_target()


# -- shutdown and final_checks -----------------------------------------------------------------------

def shutdown_text(folder: Path, hosts: str, stage: str = 'known_hosts = "known_hosts"') -> str:
    (folder / "known_hosts").write_text("")
    (folder / "id_ed25519").write_text("")
    return VALID + f'\n[[stages]]\nkind = "shutdown"\n{stage}\n{hosts}'


def host(name: str, after: str = "", extra: str = "") -> str:
    return (f'\n[[stages.hosts]]\nname = "{name}"\naddress = "10.0.0.1"\nuser = "decom"\nkey_file = "id_ed25519"\n'
            f'after = [{after}]\n{extra}\n[[stages.hosts.actions]]\nkind = "service"\nname = "edm-web"\n')


def test_a_shutdown_plan_with_hosts_and_actions_is_valid(tmp_path: Path) -> None:
    text = shutdown_text(tmp_path, host("db1", '"app1"') + host("app1") + """
[[stages.hosts.actions]]
kind = "cron"
file = "/etc/cron.d/edm-sync"
pattern = "disi-sync"
[[stages.hosts.actions]]
kind = "remove_file"
path = "/srv/directum/keys/exchange.pfx"
mode = "shred"
""")
    loaded = load_plan(write(tmp_path, text))
    stage = loaded.spec.stages[1]
    assert stage.kind == "shutdown" and [h.name for h in stage.hosts] == ["db1", "app1"]
    assert stage.step_timeout == 600 and stage.hosts[1].actions[2].mode == "shred"


def test_shutdown_dependency_cycles_and_unknown_hosts_are_errors(tmp_path: Path) -> None:
    text = shutdown_text(tmp_path, host("app1", '"db1"') + host("db1", '"app1"') + host("web", '"nobody"'))
    problems = errors_of(write(tmp_path, text))
    assert {(p.key, p.message) for p in problems} == {
        ("stages[1].hosts[2].after", "no other host named 'nobody' in this stage"),
        ("stages[1].hosts", "the hosts' `after` dependencies form a cycle: app1 -> db1 -> app1"),
    }


def test_every_host_needs_a_pinned_key_a_key_or_agent_and_no_password(tmp_path: Path) -> None:
    text = shutdown_text(tmp_path, host("app1", extra='key_file = "missing.key"').replace(
        'key_file = "id_ed25519"\n', "") + host("app2", extra="agent = true") + host(
        "app3", extra='host_key_fingerprint = "MD5:aa:bb"'), stage="")
    messages = {(p.key, p.message) for p in errors_of(write(tmp_path, text))}
    assert ("stages[1].hosts[0].key_file", f"file not found: {tmp_path / 'missing.key'}") in messages
    assert ("stages[1].hosts[1].agent", "give either key_file or agent = true, not both") in messages
    assert ("stages[1].hosts[0]", "no pinned host key: set known_hosts for the stage or host_key_fingerprint "
                                  "for this host") in messages
    assert any(key == "stages[1].hosts[2].host_key_fingerprint" and "SHA256:" in message
               for key, message in messages)
    problem = only_error(write(tmp_path, shutdown_text(tmp_path, host("app1", extra='password = "x"'))))
    assert problem.key == "stages[1].hosts[0].password" and "unknown key" in problem.message


def test_shutdown_actions_are_checked_by_kind(tmp_path: Path) -> None:
    actions = """
[[stages.hosts.actions]]
kind = "service"
name = "edm-web"
manager = "custom"
stop = "kill 1"
[[stages.hosts.actions]]
kind = "cron"
pattern = "disi"
[[stages.hosts.actions]]
kind = "remove_file"
path = "keys/relative.pfx"
[[stages.hosts.actions]]
kind = "reboot"
"""
    problems = errors_of(write(tmp_path, shutdown_text(tmp_path, host("app1") + actions)))
    messages = [(p.key, p.message) for p in problems]
    assert ("stages[1].hosts[0].actions[1]", 'manager = "custom" needs both stop and status commands') in messages
    assert ("stages[1].hosts[0].actions[2]", "give either file (a cron file) or user (that user's crontab)") in messages
    assert ("stages[1].hosts[0].actions[3]", "path must be an absolute path on the host") in messages
    assert ("stages[1].hosts[0].actions[4].kind", "unknown action kind 'reboot' (one of: service, timer, cron, port, "
                                                  "remove_file, db_login)") in messages


def test_final_checks_take_secrets_only_from_the_environment_or_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_DB_URL", raising=False)
    text = VALID + """
[[stages]]
kind = "final_checks"
allowed_networks = ["10.0.0.0/8", "not-a-network"]
[[stages.db_logins]]
name = "written"
url = "postgresql://edm_app:hunter2@db/edm"
[[stages.db_logins]]
name = "unset"
url = "${APP_DB_URL}"
[[stages.refused_ssh]]
host = "nowhere"
user = "edm"
key_file = "old.key"
[stages.ldap]
url = "ldap://127.0.0.1:389"
base_dn = "dc=example"
bind_dn = "cn=reader,dc=example"
bind_password = "plain"
logins = ["ivanov"]
"""
    problems = errors_of(write(tmp_path, text))
    messages = [(p.key, p.message) for p in problems]
    assert ("stages[1].db_logins[0].url", "the login's URL holds its password: reference it as ${ENV_VAR} or use "
                                         "url_file") in messages
    assert ("stages[1].db_logins[1].url", "environment variable APP_DB_URL is not set") in messages
    assert ("stages[1].refused_ssh[0].host", "no host named 'nowhere' in this stage") in messages
    assert ("stages[1].refused_ssh[0].key_file", f"file not found: {tmp_path / 'old.key'}") in messages
    assert ("stages[1].ldap.bind_password", "a secret is written in the plan; reference it as ${ENV_VAR} or use "
                                            "the *_file key") in messages
    assert any(key == "stages[1].allowed_networks[1]" and "not a network" in message for key, message in messages)
    assert all("hunter2" not in str(p) for p in problems)
