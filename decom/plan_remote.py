"""Options of the stages that reach other hosts: `shutdown` and `final_checks`.

decom/plan.py builds the stage models from these (adding `kind` and `name`) and calls `check_remote_stage`
for what a model cannot see: host names used by `after` and `host`, dependency cycles, files that must
exist, and that every host that is logged into has a pinned host key. Secrets follow the plan's rule:
only `${ENV_VAR}` references or `*_file` keys, and no passwords at all for SSH (key files or the agent;
sudo runs non-interactively).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.functional_validators import AfterValidator

from decom.plan_fields import Regex, must

Add = Callable[[tuple[str | int, ...], str], None]

_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")
_ENV_REF_ONLY = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"not a network: {value!r} (write e.g. 10.0.0.0/8 or 192.0.2.7)") from None
    return value


_host_name = must(_HOST_NAME.fullmatch, "use letters, digits, '.', '_' and '-'")
_fingerprint = must(_FINGERPRINT.fullmatch, "expected SHA256:<43 base64 characters>, as `ssh-keygen -lf` prints")
_command = must(str.strip, "must not be empty")
Network = Annotated[str, AfterValidator(_network)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# -- hosts -------------------------------------------------------------------------------------------

class SshHost(_Strict):
    """How to reach one host over SSH. No passwords: a key file or the agent; sudo runs as `sudo -n`."""

    name: Annotated[str, _host_name]
    address: str | None = None          # default: HostName of `name` in ssh_config, else `name`
    port: Port | None = None            # default: ssh_config, else 22
    user: str | None = None             # default: User in ssh_config
    key_file: str | None = None         # private key (unencrypted; use the agent for a passphrase)
    agent: bool = False                 # authenticate with the keys of the running ssh-agent
    host_key_fingerprint: Annotated[str, _fingerprint] | None = None   # pin instead of known_hosts
    sudo: bool = False                  # run commands as root through `sudo -n` (never asks for a password)


class _RemoteOptions(_Strict):
    known_hosts: str | None = None      # pinned host keys, OpenSSH format ([host]:port entries too)
    ssh_config: str | None = None       # an ssh_config file whose Host entries the hosts may name
    connect_timeout: int = Field(10, ge=1, le=300)     # TCP connect, SSH handshake and authentication
    command_timeout: int = Field(60, ge=1, le=3600)    # one remote command


# -- shutdown actions ----------------------------------------------------------------------------------

class ServiceAction(_Strict):
    """Stop (and for systemd disable) a service; `status` exit 0 means running for `custom`."""

    kind: Literal["service"]
    name: Annotated[str, _command]
    manager: Literal["systemd", "sysv", "custom"] = "systemd"
    stop: Annotated[str, _command] | None = None
    status: Annotated[str, _command] | None = None
    disable: bool = True                # systemd only: also `systemctl disable`

    @model_validator(mode="after")
    def _custom_commands(self) -> ServiceAction:
        if self.manager == "custom" and (self.stop is None or self.status is None):
            raise ValueError("manager = \"custom\" needs both stop and status commands")
        if self.manager != "custom" and (self.stop is not None or self.status is not None):
            raise ValueError(f"stop and status are for manager = \"custom\"; {self.manager} has its own")
        return self


class TimerAction(_Strict):
    """Stop and disable a systemd timer (the unit NAME.timer)."""

    kind: Literal["timer"]
    name: Annotated[str, _command]


class CronAction(_Strict):
    """Remove the entries matching `pattern` from a cron file (e.g. under /etc/cron.d) or a user's crontab."""

    kind: Literal["cron"]
    file: str | None = None
    user: str | None = None
    pattern: Regex

    @model_validator(mode="after")
    def _one_target(self) -> CronAction:
        if (self.file is None) == (self.user is None):
            raise ValueError("give either file (a cron file) or user (that user's crontab)")
        if self.file is not None and not self.file.startswith("/"):
            raise ValueError("file must be an absolute path on the host")
        return self


class PortAction(_Strict):
    """Nothing may listen on `port` (after the services stopped), or close it with a firewall rule."""

    kind: Literal["port"]
    port: Port
    close: Annotated[str, _command] | None = None          # e.g. an nft/iptables rule
    closed_when: Annotated[str, _command] | None = None    # probe for the rule: exit 0 = closed

    @model_validator(mode="after")
    def _rule_has_probe(self) -> PortAction:
        if (self.close is None) != (self.closed_when is None):
            raise ValueError("close (the firewall command) and closed_when (its probe) go together")
        return self


class RemoveFileAction(_Strict):
    """A signing key or certificate: its sha256 is journaled, then it is quarantined or shredded."""

    kind: Literal["remove_file"]
    path: str
    mode: Literal["quarantine", "shred"] = "quarantine"
    quarantine_dir: str | None = None

    @model_validator(mode="after")
    def _where(self) -> RemoveFileAction:
        if not self.path.startswith("/"):
            raise ValueError("path must be an absolute path on the host")
        if self.mode == "quarantine" and (self.quarantine_dir is None or not self.quarantine_dir.startswith("/")):
            raise ValueError("mode = \"quarantine\" needs quarantine_dir, an absolute path on the host")
        return self


class DbLoginAction(_Strict):
    """Revoke an application's database login with a command run on the host, checked by a probe command."""

    kind: Literal["db_login"]
    name: Annotated[str, _command]
    revoke: Annotated[str, _command]
    probe: Annotated[str, _command]
    revoked_output: str                 # what `probe` prints (trimmed) once the login is revoked


Action = Annotated[ServiceAction | TimerAction | CronAction | PortAction | RemoveFileAction | DbLoginAction,
                   Field(discriminator="kind")]


def action_label(action: Any) -> str:
    """A stable name of an action within its host, e.g. "service:edm-web", "cron:/etc/cron.d/edm-sync"."""
    if isinstance(action, CronAction):
        return f"cron:{action.file or 'crontab of ' + str(action.user)}"
    if isinstance(action, PortAction):
        return f"port:{action.port}"
    if isinstance(action, RemoveFileAction):
        return f"remove_file:{action.path}"
    return f"{action.kind}:{action.name}"


class ShutdownHost(SshHost):
    after: list[str] = Field(default_factory=list)     # hosts shut down before this one (apps before the database)
    actions: list[Action] = Field(min_length=1)


class ShutdownOptions(_RemoteOptions):
    step_timeout: int = Field(600, ge=1, le=86400)     # the whole shutdown step, every host
    hosts: list[ShutdownHost] = Field(min_length=1)


# -- final checks ---------------------------------------------------------------------------------------

class JobCheck(_Strict):
    """No entry matching `pattern` may remain in a cron file or a user's crontab."""

    file: str | None = None
    user: str | None = None
    pattern: Regex

    @model_validator(mode="after")
    def _one_target(self) -> JobCheck:
        if (self.file is None) == (self.user is None):
            raise ValueError("give either file (a cron file) or user (that user's crontab)")
        return self


class LogSource(_Strict):
    path: str                           # on the host; gzip-compressed files are read too
    format: Literal["combined", "auth"]  # nginx/apache combined access log, or syslog auth.log
    max_mb: int = Field(64, ge=1, le=4096)   # read at most the last max_mb of the file


class FinalHost(SshHost):
    closed_ports: list[Port] = Field(default_factory=list)   # a TCP connect from decom must fail
    http: list[str] = Field(default_factory=list)            # URLs that must not answer
    processes: list[Annotated[str, _command]] = Field(default_factory=list)   # pgrep -f patterns: none may match
    timers: list[str] = Field(default_factory=list)          # systemd timers that must be inactive
    jobs: list[JobCheck] = Field(default_factory=list)
    key_files: list[str] = Field(default_factory=list)       # signing keys/certificates that must be gone
    logs: list[LogSource] = Field(default_factory=list)

    def needs_ssh(self) -> bool:
        return bool(self.processes or self.timers or self.jobs or self.key_files or self.logs)


class DbLoginCheck(_Strict):
    name: Annotated[str, _command]
    url: str | None = None              # only as "${ENV_VAR}": the old application's own login
    url_file: str | None = None


class RefusedSsh(_Strict):
    host: str                           # a host of this stage
    user: str
    key_file: str                       # the account's old key: authentication with it must fail


class FinalChecksOptions(_RemoteOptions):
    hosts: list[FinalHost] = Field(default_factory=list)
    db_logins: list[DbLoginCheck] = Field(default_factory=list)
    refused_ssh: list[RefusedSsh] = Field(default_factory=list)
    users_inactive: bool = True         # every legacy account inactive (through the adapter) except keep_logins
    keep_logins: list[str] = Field(default_factory=list)
    activity_after_freeze: bool = True  # the source's audit events after the inventory's freeze point
    freeze_at: AwareDatetime | None = None   # default: the inventory's recorded freeze point
    allowed_networks: list[Network] = Field(default_factory=list)   # other source addresses are findings
    bulk_downloads_per_minute: int = Field(30, ge=1)
    download_pattern: Regex = (r"(?i)/(download|files?|content|attachments?)(/|\?|$)"
                               r"|\.(pdf|docx?|xlsx?|odt|zip|p7s|sig)$")
    admin_pattern: Regex = r"(?i)/(admin|settings|config|manage)"
    permission_pattern: Regex = r"(?i)/(acl|permissions?|rights|roles?|grants?)"
    login_pattern: Regex = r"(?i)/(login|signin|auth)"
    timeout_seconds: int = Field(5, ge=1, le=300)   # TCP, HTTP and database connection attempts


ACTION_KINDS = ("service", "timer", "cron", "port", "remove_file", "db_login")


def plain_error(error: Any) -> Any:
    """A pydantic error about a shutdown action without the union's tag in its location, and an unknown
    action kind worded as one (not as an unknown stage kind)."""
    loc = tuple(error["loc"])
    if "actions" not in loc:
        return error
    at = loc.index("actions") + 2
    if len(loc) > at and loc[at] in ACTION_KINDS:
        loc = loc[:at] + loc[at + 1:]
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        found = error["input"].get("kind") if isinstance(error["input"], dict) else None
        what = f"unknown action kind {found!r}" if found is not None else "missing required key"
        return {**error, "loc": (*loc, "kind"), "type": "value_error",
                "ctx": {"error": f"{what} (one of: {', '.join(ACTION_KINDS)})"}}
    return {**error, "loc": loc}


# -- what the models cannot see ---------------------------------------------------------------------------

def host_order(hosts: Sequence[Any]) -> list[str]:
    """Host names with every host after the ones its `after` names; plan order otherwise. ValueError on a cycle."""
    names = [h.name for h in hosts]
    after = {h.name: [d for d in h.after if d in names] for h in hosts}
    order: list[str] = []
    while len(order) < len(names):
        ready = [n for n in names if n not in order and all(d in order for d in after[n])]
        if not ready:
            raise ValueError(" -> ".join(_cycle({n: after[n] for n in names if n not in order})))
        order.append(ready[0])
    return order


def _cycle(after: dict[str, list[str]]) -> list[str]:
    path: list[str] = []
    name = next(iter(after))
    while name not in path:
        path.append(name)
        name = next(d for d in after[name] if d in after)
    return [*path[path.index(name):], name]


def _file(add: Add, where: tuple[str | int, ...], resolve: Callable[[str], Path], value: Any) -> None:
    if isinstance(value, str) and not resolve(value).is_file():
        add(where, f"file not found: {resolve(value)}")


def _check_hosts(add: Add, where: tuple[str | int, ...], stage: dict[str, Any], resolve: Callable[[str], Path],
                 hosts: list[Any], logs_in: Callable[[dict[str, Any]], bool]) -> None:
    for key in ("known_hosts", "ssh_config"):
        _file(add, (*where, key), resolve, stage.get(key))
    seen: set[str] = set()
    for index, host in enumerate(hosts):
        if not isinstance(host, dict):
            continue
        at = (*where, "hosts", index)
        name = host.get("name")
        if isinstance(name, str):
            if name in seen:
                add((*at, "name"), f"host name {name!r} is used twice")
            seen.add(name)
        if not logs_in(host):
            if "address" not in host and "ssh_config" not in stage:
                add(at, "needs address (or ssh_config with a Host entry for its name)")
            continue
        _file(add, (*at, "key_file"), resolve, host.get("key_file"))
        if "key_file" in host and host.get("agent") is True:
            add((*at, "agent"), "give either key_file or agent = true, not both")
        elif "key_file" not in host and host.get("agent") is not True and "ssh_config" not in stage:
            add(at, "needs key_file or agent = true (decom never uses passwords)")
        if "user" not in host and "ssh_config" not in stage:
            add(at, "needs user (or ssh_config with a User for its name)")
        if "known_hosts" not in stage and "host_key_fingerprint" not in host:
            add(at, "no pinned host key: set known_hosts for the stage or host_key_fingerprint for this host")


def _check_dependencies(add: Add, where: tuple[str | int, ...], hosts: list[Any]) -> None:
    names = {h.get("name") for h in hosts if isinstance(h, dict)}
    for index, host in enumerate(hosts):
        if isinstance(host, dict) and isinstance(host.get("after"), list):
            for other in host["after"]:
                if other not in names or other == host.get("name"):
                    add((*where, "hosts", index, "after"), f"no other host named {other!r} in this stage")
    try:
        host_order([SimpleNamespace(name=h.get("name"), after=h.get("after", []))
                    for h in hosts if isinstance(h, dict) and isinstance(h.get("after", []), list)])
    except ValueError as exc:
        add((*where, "hosts"), f"the hosts' `after` dependencies form a cycle: {exc}")
    except (StopIteration, TypeError):  # malformed names are reported by the model
        pass


def _check_secret_url(add: Add, where: tuple[str | int, ...], entry: dict[str, Any],
                      resolve: Callable[[str], Path]) -> None:
    url = entry.get("url")
    if "url" in entry and "url_file" in entry:
        add((*where, "url_file"), "give either url or url_file, not both")
    elif "url" not in entry and "url_file" not in entry:
        add(where, "needs url (as ${ENV_VAR}) or url_file")
    if isinstance(url, str):
        match = _ENV_REF_ONLY.fullmatch(url)
        if not match:
            add((*where, "url"), "the login's URL holds its password: reference it as ${ENV_VAR} or use url_file")
        elif match.group(1) not in os.environ:
            add((*where, "url"), f"environment variable {match.group(1)} is not set")
    _file(add, (*where, "url_file"), resolve, entry.get("url_file"))


def check_remote_stage(add: Add, index: int, stage: dict[str, Any], resolve: Callable[[str], Path]) -> None:
    """Report what the models cannot check in a shutdown or final_checks stage (the raw TOML table)."""
    where: tuple[str | int, ...] = ("stages", index)
    hosts: list[Any] = stage["hosts"] if isinstance(stage.get("hosts"), list) else []
    if stage.get("kind") == "shutdown":
        _check_hosts(add, where, stage, resolve, hosts, lambda host: True)
        _check_dependencies(add, where, hosts)
        return
    checks = ("processes", "timers", "jobs", "key_files", "logs")
    _check_hosts(add, where, stage, resolve, hosts, lambda host: any(host.get(k) for k in checks))
    names = {h.get("name") for h in hosts if isinstance(h, dict)}
    for number, entry in enumerate(stage["db_logins"] if isinstance(stage.get("db_logins"), list) else []):
        if isinstance(entry, dict):
            _check_secret_url(add, (*where, "db_logins", number), entry, resolve)
    pinned = {h.get("name") for h in hosts if isinstance(h, dict) and "host_key_fingerprint" in h}
    for number, entry in enumerate(stage["refused_ssh"] if isinstance(stage.get("refused_ssh"), list) else []):
        if isinstance(entry, dict):
            if isinstance(entry.get("host"), str) and entry["host"] not in names:
                add((*where, "refused_ssh", number, "host"), f"no host named {entry['host']!r} in this stage")
            elif "known_hosts" not in stage and entry.get("host") not in pinned:
                add((*where, "refused_ssh", number, "host"),
                    "no pinned host key: set known_hosts for the stage or host_key_fingerprint for the host")
            _file(add, (*where, "refused_ssh", number, "key_file"), resolve, entry.get("key_file"))
