"""Load and validate a decom plan (TOML), reporting every problem at once with its line and key.

The plan is parsed with `tomllib`, validated in one pass by strict pydantic models (no silent
coercion, unknown keys are errors: a typo must never silently disable a safety step), then
checked for what the models cannot see: adapters, environment variables, written passwords,
files and stage names. `decom.plan_lines` finds the line of each key.

Secrets stay out of the validated spec: it keeps URL templates such as
``postgresql+psycopg://edm:${EDM_DB_PASSWORD}@db/edm``; `LoadedPlan.source_config()` and
`LoadedPlan.state_url()` resolve them only when a connection is about to be made.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from decom.adapter import SourceConfig, adapter_names
from decom.errors import UserError
from decom.plan_fields import Regex, must
from decom.plan_lines import KeyPath, key_lines, line_of, render_path, word_error
from decom.plan_remote import FinalChecksOptions, ShutdownOptions, check_remote_stage, plain_error

# The stage kinds this version can run; the others are in the schema and reported "not available yet".
AVAILABLE_STAGE_KINDS: frozenset[str] = frozenset({"inventory", "access_audit", "backup", "handover", "shutdown",
                                                   "final_checks"})
FUTURE_STAGE_KINDS: tuple[str, ...] = ()
STAGE_KINDS: tuple[str, ...] = ("inventory", "access_audit", "backup", "handover", "shutdown", "final_checks",
                                *FUTURE_STAGE_KINDS)

_PLAN_NAME = re.compile(r"[A-Za-z0-9._-]+")
_STAGE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ENV_REF = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REF_ONLY = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_URL_PASSWORD = re.compile(r"[\w+]+://[^:/]*:(?P<password>[^@]*)@")  # split as SQLAlchemy does
_QUERY_SECRET = re.compile(r"(?i)\b((?:password|passwd|pwd)(?:=|%3D))[^&;]*")
_SQLITE_FILE = re.compile(r"(?P<prefix>sqlite[\w+]*:///)(?P<db>[^?]*)(?P<rest>\?.*)?", re.S)
_TOML_POSITION = re.compile(r"at line (\d+), column (\d+)")
_WRITTEN_PASSWORD = "a password is written in the plan; reference it as ${ENV_VAR} or put the URL in url_file"


# -- the validated model -------------------------------------------------------------------------

_plan_name = must(_PLAN_NAME.fullmatch, "use only letters, digits, '.', '_' and '-' (it names folders)")
_stage_name = must(_STAGE_NAME.fullmatch, "use only letters, digits, '_' and '-'")
_not_blank = must(str.strip, "must not be empty")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class PlanMeta(_Strict):
    name: Annotated[str, _plan_name]
    owner: Annotated[str, _not_blank]
    ticket: str | None = None
    description: str | None = None


class SourceSpec(_Strict):
    adapter: str
    url: str | None = None  # a template: ${VAR} references are resolved by LoadedPlan only
    url_file: str | None = None
    content_root: str | None = None
    mapping: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class StateSpec(_Strict):
    folder: str | None = None
    url: str | None = None  # a template, like SourceSpec.url


class ArchiveSpec(_Strict):
    target: str | None = None                    # folder; each backup run writes <target>/<plan>-<date>-<id8>/
    recipients: list[str] = Field(default_factory=list)   # X25519 public keys (PEM files) that can decrypt
    signing_key_file: str | None = None          # Ed25519 private key (PEM) that signs the manifest
    signing_key_passphrase: str | None = None    # only as "${ENV_VAR}"


class _StageBase(_Strict):
    kind: str
    name: Annotated[str, _stage_name] = ""  # "" until validated, then the kind

    @model_validator(mode="after")
    def _default_name(self) -> _StageBase:
        if not self.name:
            self.name = self.kind
        return self


class InventoryStage(_StageBase):
    kind: Literal["inventory"]
    hash_content: bool = True
    batch_files: int = Field(500, ge=1, le=100_000)
    freeze_at: AwareDatetime | None = None
    checksum_mismatch: Literal["report", "fail"] = "report"


class LdapSpec(_Strict):
    """The directory the EDM logs in through: entries missing or locked there are findings."""

    url: str                                   # ldap://host:port or ldaps://host:port
    base_dn: str
    bind_dn: str | None = None                 # anonymous bind when absent
    bind_password: str | None = None           # only as "${ENV_VAR}"
    bind_password_file: str | None = None      # or a file holding it (relative to the plan)
    login_attribute: str = "uid"               # the attribute whose value is the EDM login
    user_filter: str = "(objectClass=*)"
    start_tls: bool = False
    ca_file: str | None = None
    timeout_seconds: int = Field(10, ge=1, le=300)


LOCKDOWN_SELECTIONS = ("dormant", "never_logged_in", "shared", "departed", "directory_disabled")


class LockdownSpec(_Strict):
    """Lock-down actions `decom run` takes through the adapter (the dry run only lists them)."""

    disable_logins: list[str] = Field(default_factory=list)       # accounts named by login
    disable: list[Literal["dormant", "never_logged_in", "shared", "departed", "directory_disabled"]] = Field(
        default_factory=list)                                      # accounts selected by finding kind
    keep_logins: list[str] = Field(default_factory=list)          # never disabled (e.g. the archivist)
    read_only: bool = False                                        # revoke every write/admin right


class AccessAuditStage(_StageBase):
    kind: Literal["access_audit"]
    dormant_days: int = Field(180, ge=1)
    shared_account_patterns: list[Regex] = Field(default_factory=list)
    ldap: LdapSpec | None = None
    lockdown: LockdownSpec = Field(default_factory=LockdownSpec)


class BackupStage(_StageBase):
    kind: Literal["backup"]
    part_mb: int = Field(64, ge=1, le=4096)       # content bytes per content part file
    verify_after: Literal["quick", "none"] = "quick"   # full needs a private key: the auditor runs it
    changed_after_freeze: Literal["report", "fail"] = "report"


class SmtpSpec(_Strict):
    """The mail server notices are sent through (handover stage, [stages.notices.smtp])."""

    host: Annotated[str, _not_blank]
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True                      # upgrade with STARTTLS before AUTH and before any message
    username: str | None = None                # AUTH (LOGIN or PLAIN) only when given
    password: str | None = None                # only as "${ENV_VAR}"
    password_file: str | None = None           # or a file holding it (relative to the plan)
    ca_file: str | None = None                 # trust this CA (PEM) for STARTTLS instead of the system's
    timeout_seconds: int = Field(30, ge=1, le=600)


class NoticesSpec(_Strict):
    """Notices to the people affected: rendered into an outbox, sent only when an smtp table is given."""

    from_address: Annotated[str, _not_blank]   # "Records office <records@example.org>"
    template: str | None = None                # string.Template file beside the plan; default: decom's own
    subject: str = "$system is being switched off: where your documents and cases went"
    reply_to: str | None = None
    system: str | None = None                  # the name people know the old system by; default: the adapter's
    successor: str = "the successor system"    # where work continues (text, may hold a link)
    switch_off_at: AwareDatetime | None = None  # default: the inventory's freeze_at
    smtp: SmtpSpec | None = None


class HandoverStage(_StageBase):
    kind: Literal["handover"]
    target: list[Literal["reassign", "package"]] = Field(default_factory=lambda: ["reassign", "package"],  # type: ignore[arg-type]
                                                         min_length=1)
    default_owner: str | None = None            # a login: who takes what no other rule gives away
    owners: dict[str, str] = Field(default_factory=dict)               # old login -> new login
    owners_by_group: dict[str, str] = Field(default_factory=dict)      # candidate group name -> login
    owners_by_case_type: dict[str, str] = Field(default_factory=dict)  # case type -> login
    batch_size: int = Field(200, ge=1, le=10_000)                      # reassignments per checkpointed step
    notices: NoticesSpec | None = None


class ShutdownStage(_StageBase, ShutdownOptions):
    """Ordered, verified shutdown over SSH (options in decom/plan_remote.py)."""

    kind: Literal["shutdown"]


class FinalLdapSpec(LdapSpec):
    """The directory check of the final checks: these logins must be absent from it or locked there."""

    logins: list[str] = Field(default_factory=list)
    legacy_users: bool = False          # also every legacy account except keep_logins


class FinalChecksStage(_StageBase, FinalChecksOptions):
    """Nothing answers, nobody logs in, no key left; activity after the freeze (decom/plan_remote.py)."""

    kind: Literal["final_checks"]
    ldap: FinalLdapSpec | None = None


class FutureStage(_StageBase):
    """A stage kind named by the schema but not built yet (none at the moment): options kept, not checked."""

    kind: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kept = {key: value for key, value in data.items() if key in ("kind", "name")}
        return kept | {"options": {key: value for key, value in data.items() if key not in kept}}


StageSpec = Annotated[InventoryStage | AccessAuditStage | BackupStage | HandoverStage | ShutdownStage
                      | FinalChecksStage, Field(discriminator="kind")]
_STAGE_MODELS: dict[str, type[_StageBase]] = {
    "inventory": InventoryStage, "access_audit": AccessAuditStage, "backup": BackupStage, "handover": HandoverStage,
    "shutdown": ShutdownStage, "final_checks": FinalChecksStage,
    **{kind: FutureStage for kind in FUTURE_STAGE_KINDS},
}


class AcceptSpec(_Strict):
    """A blocker the plan owner accepts on the record: it no longer stops the plan, and is journaled."""

    stage: str                          # the stage name the blocker belongs to
    match: Annotated[str, _not_blank]   # text the blocker contains
    by: Annotated[str, _not_blank]      # who accepted it (a person, with their role)
    reason: Annotated[str, _not_blank]  # why: what was decided instead


class PlanSpec(_Strict):
    plan: PlanMeta
    source: SourceSpec
    state: StateSpec = Field(default_factory=StateSpec)
    archive: ArchiveSpec = Field(default_factory=ArchiveSpec)
    stages: list[StageSpec] = Field(min_length=1)
    accept: list[AcceptSpec] = Field(default_factory=list)


# -- problems ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanProblem:
    file: Path
    line: int | None
    key: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {self.key}: {prefix}{self.message}"


class PlanInvalid(UserError):
    """The plan has errors; `problems` lists all of them (warnings are not included)."""

    def __init__(self, problems: list[PlanProblem]) -> None:
        self.problems = list(problems)
        first = str(self.problems[0]) if self.problems else "the plan is not valid"
        more = len(self.problems) - 1
        super().__init__(first + (f" (and {more} more)" if more > 0 else ""))


class _Collector:
    def __init__(self, file: Path, lines: dict[KeyPath, int]) -> None:
        self.file, self.lines = file, lines
        self.errors: list[PlanProblem] = []
        self.warnings: list[PlanProblem] = []

    def add(self, path: KeyPath, message: str, severity: str = "error") -> None:
        problem = PlanProblem(self.file, line_of(self.lines, path), render_path(path), message, severity)
        (self.warnings if severity == "warning" else self.errors).append(problem)


def _model_fields(path: KeyPath, raw: dict[str, Any]) -> list[str]:
    """The keys allowed in the table at `path`, for 'did you mean' hints."""
    tables: dict[KeyPath, type[BaseModel]] = {(): PlanSpec, ("plan",): PlanMeta, ("source",): SourceSpec,
                                              ("state",): StateSpec, ("archive",): ArchiveSpec}
    model = tables.get(path)
    if len(path) == 2 and path[0] == "stages" and isinstance(path[1], int):
        stages = raw.get("stages")
        stage = stages[path[1]] if isinstance(stages, list) and path[1] < len(stages) else None
        model = _STAGE_MODELS.get(str(stage.get("kind"))) if isinstance(stage, dict) else None
    return list(model.model_fields) if model else []


# -- checks the models cannot make ----------------------------------------------------------------

def _resolve_path(plan_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(plan_dir / path))


def _parses_as_url(url: str) -> bool:
    try:
        make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return False
    return True


def _check_url(p: _Collector, path: KeyPath, template: str) -> None:
    names = [match.group(1) for match in _ENV_REF.finditer(template)]
    for name in dict.fromkeys(names):
        if not _ENV_NAME.fullmatch(name):
            p.add(path, f"${{{name}}} is not a valid reference; write ${{NAME}} with letters, digits and _")
        elif name not in os.environ:
            p.add(path, f"environment variable {name} is not set")
    if "${" in _ENV_REF.sub("", template):
        p.add(path, "a '${' reference is not closed with '}'")
    written = _URL_PASSWORD.match(template)
    if written and written["password"] and not _ENV_REF_ONLY.fullmatch(written["password"]):
        p.add(path, _WRITTEN_PASSWORD)
    elif not _parses_as_url(_ENV_REF.sub("0", template)):
        p.add(path, "not a valid SQLAlchemy URL (dialect+driver://user:${PASSWORD}@host/database)")


def _check_url_file(p: _Collector, plan_dir: Path, value: str) -> None:
    path: KeyPath = ("source", "url_file")
    file = _resolve_path(plan_dir, value)
    if not file.is_file():
        p.add(path, f"file not found: {file}")
        return
    try:
        url = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        p.add(path, f"cannot read {file} ({type(exc).__name__})")
        return
    if not url or "\n" in url or not _parses_as_url(url):  # never echo the content: it is a secret
        p.add(path, f"{file} must hold one SQLAlchemy URL on one line")


def _check_source(p: _Collector, source: dict[str, Any], plan_dir: Path) -> None:
    adapter = source.get("adapter")
    if isinstance(adapter, str):
        known = adapter_names()
        if adapter not in known:
            listed = ", ".join(known) or "none installed"
            p.add(("source", "adapter"), f"unknown adapter {adapter!r} (known: {listed})")
        if adapter == "sql_generic" and "mapping" not in source:
            p.add(("source", "mapping"), "the sql_generic adapter needs mapping = \"<mapping file>.toml\"")
    if "url" in source and "url_file" in source:
        p.add(("source", "url_file"), "give either url or url_file, not both")
    elif "url" not in source and "url_file" not in source:
        p.add(("source", "url"), "missing required key (or give url_file)")
    if isinstance(source.get("url"), str):
        _check_url(p, ("source", "url"), source["url"])
    if isinstance(source.get("url_file"), str):
        _check_url_file(p, plan_dir, source["url_file"])


def _check_stages(p: _Collector, stages: list[Any]) -> None:
    first_use: dict[str, int] = {}
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict):
            continue
        kind, name = stage.get("kind"), stage.get("name", stage.get("kind"))
        if isinstance(name, str) and name:
            if name in first_use:
                where: KeyPath = ("stages", index, "name") if "name" in stage else ("stages", index)
                p.add(where, f"stage name {name!r} is already used by stages[{first_use[name]}]; "
                             "give each stage a unique name")
            first_use.setdefault(name, index)
        if isinstance(kind, str) and kind in STAGE_KINDS and kind not in AVAILABLE_STAGE_KINDS:
            shown = name if isinstance(name, str) and name else kind
            message = f"stage {shown!r} (kind {kind}) is not available yet in this version of decom"
            if kind in FUTURE_STAGE_KINDS:
                message += "; its options are not checked"
            p.add(("stages", index), message, severity="warning")


def _check_secret(p: _Collector, path: KeyPath, template: str) -> None:
    """A secret in a plan may only be a ${VAR} reference, and the variable must be set."""
    if not _ENV_REF_ONLY.fullmatch(template):
        p.add(path, "a secret is written in the plan; reference it as ${ENV_VAR} or use the *_file key")
        return
    name = template[2:-1]
    if name not in os.environ:
        p.add(path, f"environment variable {name} is not set")


def _check_ldap(p: _Collector, index: int, ldap: dict[str, Any], plan_dir: Path) -> None:
    where: KeyPath = ("stages", index, "ldap")
    if isinstance(ldap.get("bind_password"), str):
        _check_secret(p, (*where, "bind_password"), ldap["bind_password"])
    if "bind_password" in ldap and "bind_password_file" in ldap:
        p.add((*where, "bind_password_file"), "give either bind_password or bind_password_file, not both")
    for key in ("bind_password_file", "ca_file"):
        if isinstance(ldap.get(key), str) and not _resolve_path(plan_dir, ldap[key]).is_file():
            p.add((*where, key), f"file not found: {_resolve_path(plan_dir, ldap[key])}")
    url = ldap.get("url")
    if isinstance(url, str) and not re.fullmatch(r"ldaps?://[^/\s]+/?", url):
        p.add((*where, "url"), "expected ldap://host:port or ldaps://host:port")


def _check_notices(p: _Collector, index: int, notices: dict[str, Any], plan_dir: Path) -> None:
    """The handover's notices: template files exist; the SMTP password only as ${VAR} or a file."""
    where: KeyPath = ("stages", index, "notices")
    if isinstance(notices.get("template"), str) and not _resolve_path(plan_dir, notices["template"]).is_file():
        p.add((*where, "template"), f"file not found: {_resolve_path(plan_dir, notices['template'])}")
    smtp = notices.get("smtp")
    if not isinstance(smtp, dict):
        return
    if isinstance(smtp.get("password"), str):
        _check_secret(p, (*where, "smtp", "password"), smtp["password"])
    if "password" in smtp and "password_file" in smtp:
        p.add((*where, "smtp", "password_file"), "give either password or password_file, not both")
    for key in ("password_file", "ca_file"):
        if isinstance(smtp.get(key), str) and not _resolve_path(plan_dir, smtp[key]).is_file():
            p.add((*where, "smtp", key), f"file not found: {_resolve_path(plan_dir, smtp[key])}")
    if smtp.get("starttls") is False and ("password" in smtp or "password_file" in smtp):
        p.add((*where, "smtp", "starttls"), "starttls = false sends the SMTP password unencrypted", "warning")


def _check_archive(p: _Collector, raw: dict[str, Any], plan_dir: Path) -> None:
    """A plan with a backup stage needs somewhere to write, someone to read it, and a key to sign it."""
    archive: dict[str, Any] = raw["archive"] if isinstance(raw.get("archive"), dict) else {}
    stages: list[Any] = raw["stages"] if isinstance(raw.get("stages"), list) else []
    if not any(isinstance(s, dict) and s.get("kind") == "backup" for s in stages):
        return
    where: KeyPath = ("archive",)
    if not isinstance(archive.get("target"), str):
        p.add((*where, "target") if archive else where, "the backup stage needs archive.target (a folder)")
    recipients = archive.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        p.add((*where, "recipients") if archive else where,
              "the backup stage needs archive.recipients: public key files of who may decrypt")
    else:
        for recipient in recipients:
            if isinstance(recipient, str) and not _resolve_path(plan_dir, recipient).is_file():
                p.add((*where, "recipients"), f"recipient key not found: {_resolve_path(plan_dir, recipient)}")
    signing = archive.get("signing_key_file")
    if not isinstance(signing, str):
        p.add((*where, "signing_key_file") if archive else where,
              "the backup stage needs archive.signing_key_file (Ed25519 private key that signs the manifest)")
    elif not _resolve_path(plan_dir, signing).is_file():
        p.add((*where, "signing_key_file"), f"file not found: {_resolve_path(plan_dir, signing)}")
    if isinstance(archive.get("signing_key_passphrase"), str):
        _check_secret(p, (*where, "signing_key_passphrase"), archive["signing_key_passphrase"])


def _check_semantics(p: _Collector, raw: dict[str, Any], plan_dir: Path) -> None:
    _check_archive(p, raw, plan_dir)
    if isinstance(raw.get("source"), dict):
        _check_source(p, raw["source"], plan_dir)
    state = raw.get("state")
    if isinstance(state, dict) and isinstance(state.get("url"), str):
        _check_url(p, ("state", "url"), state["url"])
    if isinstance(raw.get("stages"), list):
        _check_stages(p, raw["stages"])
        for index, stage in enumerate(raw["stages"]):
            if isinstance(stage, dict) and stage.get("kind") in ("access_audit", "final_checks") \
                    and isinstance(stage.get("ldap"), dict):
                _check_ldap(p, index, stage["ldap"], plan_dir)
            if isinstance(stage, dict) and stage.get("kind") in ("shutdown", "final_checks"):
                check_remote_stage(p.add, index, stage, lambda value: _resolve_path(plan_dir, value))
            if isinstance(stage, dict) and stage.get("kind") == "handover" and isinstance(stage.get("notices"), dict):
                _check_notices(p, index, stage["notices"], plan_dir)
        names = {str(s.get("name", s.get("kind"))) for s in raw["stages"] if isinstance(s, dict)}
        for index, accepted in enumerate(raw.get("accept", []) if isinstance(raw.get("accept"), list) else []):
            if isinstance(accepted, dict) and isinstance(accepted.get("stage"), str) and accepted["stage"] not in names:
                p.add(("accept", index, "stage"), f"no stage named {accepted['stage']!r} "
                                                  f"(stages: {', '.join(sorted(names))})")


# -- the loaded plan ------------------------------------------------------------------------------

def _expand(template: str, key: str) -> str:
    def value_of(match: re.Match[str]) -> str:
        if match.group(1) not in os.environ:
            raise UserError(f"environment variable {match.group(1)} is not set (needed by {key})")
        return os.environ[match.group(1)]
    return _ENV_REF.sub(value_of, template)


def _absolute_sqlite(url: str, plan_dir: Path) -> str:
    """A SQLite URL with a relative database path, made relative to the plan's folder."""
    match = _SQLITE_FILE.fullmatch(url)
    if not match:
        return url
    db = match["db"]
    if not db or db == ":memory:" or db.startswith("file:") or Path(db).is_absolute():
        return url
    return f"{match['prefix']}{os.path.normpath(plan_dir / db)}{match['rest'] or ''}"


def redact_url(url: str) -> str:
    """The URL with any password (user:password@ or a password= parameter) replaced by ***."""
    written = _URL_PASSWORD.match(url)
    if written and written["password"]:
        url = url[:written.start("password")] + "***" + url[written.end("password"):]
    return _QUERY_SECRET.sub(r"\1***", url)


@dataclass(frozen=True)
class LoadedPlan:
    path: Path
    plan_dir: Path
    sha256: str
    spec: PlanSpec
    warnings: list[PlanProblem] = field(default_factory=list)

    def _source_url(self) -> str:
        source = self.spec.source
        if source.url_file is not None:
            file = _resolve_path(self.plan_dir, source.url_file)
            try:
                url = file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read source.url_file {file} ({type(exc).__name__})") from None
        else:
            url = _expand(source.url or "", "source.url")
        return _absolute_sqlite(url, self.plan_dir)

    def source_config(self) -> SourceConfig:
        source = self.spec.source
        options = dict(source.options)
        if source.mapping is not None:
            options["mapping"] = str(_resolve_path(self.plan_dir, source.mapping))
        content_root = _resolve_path(self.plan_dir, source.content_root) if source.content_root else None
        return SourceConfig(adapter=source.adapter, url=self._source_url(), content_root=content_root,
                            plan_dir=self.plan_dir, options=options)

    def source_url_redacted(self) -> str:
        try:
            return redact_url(self._source_url())
        except UserError:
            source = self.spec.source
            return redact_url(source.url) if source.url is not None else f"<the URL in {source.url_file}>"

    def state_dir(self, override: Path | None = None) -> Path:
        if override is not None:
            return Path(override).expanduser().absolute()
        folder = self.spec.state.folder
        return _resolve_path(self.plan_dir, folder) if folder else self.plan_dir / f"{self.path.stem}.state"

    def state_url(self) -> str | None:
        template = self.spec.state.url
        return None if template is None else _absolute_sqlite(_expand(template, "state.url"), self.plan_dir)

    def secret(self, template: str | None, file: str | None, key: str) -> str | None:
        """A secret named by the plan: a ${VAR} reference or a file's first line. Never log the result."""
        if file is not None:
            path = _resolve_path(self.plan_dir, file)
            try:
                return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read {key}_file {path} ({type(exc).__name__})") from None
        return None if template is None else _expand(template, key)

    def resolve(self, value: str) -> Path:
        """A path from the plan, relative to the plan's folder."""
        return _resolve_path(self.plan_dir, value)

    def archive_target(self) -> Path | None:
        target = self.spec.archive.target
        return _resolve_path(self.plan_dir, target) if target else None


# -- entry points ---------------------------------------------------------------------------------

_Analysis = tuple[list[PlanProblem], list[PlanProblem], "LoadedPlan | None"]


def _analyse(path: Path | str) -> _Analysis:
    shown = Path(path)
    absolute = shown.expanduser().resolve()

    def whole_file(message: str, line: int | None = None) -> _Analysis:
        return [PlanProblem(shown, line, "-", message)], [], None

    try:
        data = absolute.read_bytes()
    except FileNotFoundError:
        return whole_file(f"plan file not found: {absolute}")
    except IsADirectoryError:
        return whole_file("this is a folder, not a plan file")
    except OSError as exc:
        return whole_file(f"cannot read the plan file: {exc.strerror or type(exc).__name__}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return whole_file(f"not UTF-8 text (byte {exc.start})", data[:exc.start].count(b"\n") + 1)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        position = _TOML_POSITION.search(str(exc))
        line = int(position.group(1)) if position else text.count("\n") + 1
        return whole_file(f"TOML syntax error: {exc}", line)
    except (ValueError, RecursionError) as exc:  # e.g. an integer with thousands of digits
        return whole_file(f"TOML error: {type(exc).__name__}: {str(exc)[:120]}")

    problems = _Collector(shown, key_lines(text))
    spec: PlanSpec | None = None
    try:
        spec = PlanSpec.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            problems.add(*word_error(plain_error(error), STAGE_KINDS, lambda table: _model_fields(table, raw)))
    _check_semantics(problems, raw, absolute.parent)
    errors = sorted(problems.errors, key=lambda problem: problem.line or 0)
    warnings = sorted(problems.warnings, key=lambda problem: problem.line or 0)
    if errors or spec is None:
        return errors, warnings, None
    sha256 = hashlib.sha256(data).hexdigest()
    return [], warnings, LoadedPlan(absolute, absolute.parent, sha256, spec, warnings)


def load_plan(path: Path | str) -> LoadedPlan:
    """The validated plan, or PlanInvalid listing every error (a missing file included)."""
    errors, _warnings, loaded = _analyse(path)
    if loaded is None:
        raise PlanInvalid(errors)
    return loaded


def check_plan(path: Path | str) -> list[PlanProblem]:
    """Every error then every warning of the plan; never raises for a bad plan."""
    errors, warnings, _loaded = _analyse(path)
    return errors + warnings
