"""What the shutdown stage does on a host, as a small protocol every action kind follows.

    probe(executor) -> state      read-only commands only; a dict (JSON-able) describing what is there now
    commands(state) -> [command]  what to send to reach the goal from that state; [] when already there
    verify(state) -> problem      None when the state is the goal, else one line saying what is wrong

The stage probes, sends `commands(before)`, probes again and verifies. Because the commands are
computed from a fresh probe, a rerun of a finished action sends nothing, and a command whose outcome
is unknown is never blindly repeated: the next run probes and decides. Keys of a state that start
with "_" (a cron file's whole text) are needed to compute commands but are not journaled.

Kinds: service (systemd, sysv, custom), timer (systemd), cron (a cron file or a user's crontab),
port (nothing listens, or a firewall rule), remove_file (quarantine or shred, sha256 first),
db_login (revoke with a command, checked with a probe command).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from typing import Any, Protocol

from decom.plan_remote import (
    CronAction,
    DbLoginAction,
    PortAction,
    RemoveFileAction,
    ServiceAction,
    TimerAction,
    action_label,
)
from decom.remote.ssh import CommandResult, Executor, OutcomeUnknown

_RUNNING = ("active", "activating", "reloading", "deactivating", "refreshing")
_ENABLED = ("enabled", "enabled-runtime", "linked", "linked-runtime", "alias", "indirect")
_ENV_LINE = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
CHANGED_SINCE_PROBE = 9


class ProbeFailed(Exception):
    """A probe could not say what is there (command missing, error exit, timeout): decide nothing."""


class HostAction(Protocol):
    label: str
    kind: str

    def probe(self, executor: Executor, timeout: float) -> dict[str, Any]: ...
    def commands(self, state: dict[str, Any]) -> list[str]: ...
    def verify(self, state: dict[str, Any]) -> str | None: ...


def public(state: dict[str, Any]) -> dict[str, Any]:
    """The state as journaled: without the private keys (those starting with "_")."""
    return {key: value for key, value in state.items() if not key.startswith("_")}


def _run(executor: Executor, command: str, timeout: float, ok: tuple[int, ...] = (0,)) -> CommandResult:
    try:
        result = executor.run(command, mutating=False, timeout=timeout)
    except OutcomeUnknown as exc:
        raise ProbeFailed(f"probe `{command}`: {exc.reason}") from None
    if result.exit_status not in ok:
        detail = result.tail(200) or "no output"
        missing = " (command not found)" if result.exit_status in (126, 127) else ""
        raise ProbeFailed(f"probe `{command}` exited {result.exit_status}{missing}: {detail}")
    return result


@dataclass
class SystemdUnit:
    label: str
    kind: str
    unit: str
    disable: bool

    def probe(self, executor: Executor, timeout: float) -> dict[str, Any]:
        unit = shlex.quote(self.unit)
        active = _run(executor, f"systemctl is-active -- {unit}", timeout, ok=(0, 1, 2, 3, 4))
        enabled = _run(executor, f"systemctl is-enabled -- {unit}", timeout, ok=(0, 1, 2, 3, 4))
        return {"active": active.stdout.strip() or "unknown", "enabled": enabled.stdout.strip() or "not-found"}

    def commands(self, state: dict[str, Any]) -> list[str]:
        unit = shlex.quote(self.unit)
        commands = [f"systemctl stop -- {unit}"] if state["active"] in _RUNNING else []
        if self.disable and state["enabled"] in _ENABLED:
            commands.append(f"systemctl disable -- {unit}")
        return commands

    def verify(self, state: dict[str, Any]) -> str | None:
        if state["active"] in _RUNNING:
            return f"{self.unit} is still {state['active']}"
        if self.disable and state["enabled"] in _ENABLED:
            return f"{self.unit} is still {state['enabled']}"
        return None


@dataclass
class StatusService:
    """A sysv init script or custom commands: the status command's exit 0 means running."""

    label: str
    kind: str
    name: str
    status: str
    stop: str

    def probe(self, executor: Executor, timeout: float) -> dict[str, Any]:
        result = _run(executor, self.status, timeout, ok=tuple(s for s in range(256) if s not in (126, 127)))
        return {"running": result.exit_status == 0, "status_exit": result.exit_status}

    def commands(self, state: dict[str, Any]) -> list[str]:
        return [self.stop] if state["running"] else []

    def verify(self, state: dict[str, Any]) -> str | None:
        return f"{self.name} is still running (status exit 0)" if state["running"] else None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CronEntries:
    label: str
    kind: str
    pattern: str
    file: str | None
    user: str | None

    def matching(self, text: str) -> list[str]:
        rule = re.compile(self.pattern)
        return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
                and not _ENV_LINE.match(line) and rule.search(line)]

    def probe(self, executor: Executor, timeout: float) -> dict[str, Any]:
        if self.file is not None:
            result = _run(executor, f"test -e {shlex.quote(self.file)} || exit 3; cat -- {shlex.quote(self.file)}",
                          timeout, ok=(0, 3))
            exists = result.exit_status == 0
        else:
            result = _run(executor, f"crontab -l -u {shlex.quote(str(self.user))}", timeout, ok=(0, 1))
            exists = result.exit_status == 0
            if not exists and "no crontab" not in result.stderr:
                raise ProbeFailed(f"crontab -l -u {self.user} failed: {result.tail(200)}")
        text = result.stdout if exists else ""
        return {"exists": exists, "sha256": _sha256(text) if exists else None, "matching": self.matching(text),
                "_text": text}

    def commands(self, state: dict[str, Any]) -> list[str]:
        if not state["matching"]:
            return []
        drop = set(state["matching"])
        kept = "".join(line for line in state["_text"].splitlines(keepends=True) if line.rstrip("\r\n") not in drop)
        guard = (f'|| {{ echo "changed since decom read it (sha256 {state["sha256"][:12]}…); rerun to re-read" >&2; '
                 f"exit {CHANGED_SINCE_PROBE}; }}")
        if self.file is not None:
            path = shlex.quote(self.file)
            new = shlex.quote(self.file + ".decom-new")
            return [f'test "$(sha256sum < {path} | cut -d" " -f1)" = {state["sha256"]} {guard}; '
                    f"printf '%s' {shlex.quote(kept)} > {new} && chmod --reference={path} {new} && "
                    f"chown --reference={path} {new} && mv -f -- {new} {path}"]
        user = shlex.quote(str(self.user))
        return [f'test "$(crontab -l -u {user} | sha256sum | cut -d" " -f1)" = {state["sha256"]} {guard}; '
                f"printf '%s' {shlex.quote(kept)} | crontab -u {user} -"]

    def verify(self, state: dict[str, Any]) -> str | None:
        if state["matching"]:
            return f"{len(state['matching'])} entr{'y' if len(state['matching']) == 1 else 'ies'} still scheduled"
        return None


def listening(ss_output: str, port: int) -> list[str]:
    """Local addresses listening on `port` in `ss -Htln` output."""
    found = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].rpartition(":")[2] == str(port):
            found.append(fields[3])
    return found


@dataclass
class ClosedPort:
    label: str
    kind: str
    port: int
    close: str | None
    closed_when: str | None

    def probe(self, executor: Executor, timeout: float) -> dict[str, Any]:
        state: dict[str, Any] = {"listening": listening(_run(executor, "ss -Htln", timeout).stdout, self.port)}
        if self.closed_when is not None:
            state["rule"] = _run(executor, self.closed_when, timeout, ok=tuple(range(126))).exit_status == 0
        return state

    def commands(self, state: dict[str, Any]) -> list[str]:
        return [self.close] if self.close is not None and not state.get("rule") else []

    def verify(self, state: dict[str, Any]) -> str | None:
        if self.closed_when is not None:
            return None if state.get("rule") else f"the rule closing port {self.port} is not in place"
        if state["listening"]:
            return f"port {self.port} still listening on {', '.join(state['listening'])}"
        return None


@dataclass
class RemovedFile:
    label: str
    kind: str
    path: str
    mode: str
    quarantine_dir: str | None

    def _prefix(self) -> str:
        return f"{shlex.quote(str(self.quarantine_dir))}/{shlex.quote(self.path.rsplit('/', 1)[-1])}"

    def probe(self, executor: Executor, timeout: float) -> dict[str, Any]:
        path = shlex.quote(self.path)
        script = (f'if [ -e {path} ]; then echo "exists $(sha256sum < {path} | cut -d" " -f1) '
                  f'$(stat -c %s -- {path})"; fi')
        if self.quarantine_dir is not None:
            script += f'; for f in {self._prefix()}.*; do [ -f "$f" ] && echo "quarantined $f"; done; true'
        state: dict[str, Any] = {"exists": False, "sha256": None, "size": None, "quarantined": []}
        for line in _run(executor, script, timeout).stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "exists":
                sha256, size = rest.split()
                state.update(exists=True, sha256=sha256, size=int(size))
            elif word == "quarantined":
                state["quarantined"].append(rest)
        return state

    def commands(self, state: dict[str, Any]) -> list[str]:
        if not state["exists"]:
            return []
        path = shlex.quote(self.path)
        if self.mode == "shred":
            return [f"shred -u -z -- {path}"]
        target = f"{self._prefix()}.{state['sha256'][:16]}"
        return [f"mkdir -p -m 700 -- {shlex.quote(str(self.quarantine_dir))} && mv -n -- {path} {target} "
                f"&& test ! -e {path}"]

    def verify(self, state: dict[str, Any]) -> str | None:
        if state["exists"]:
            return f"{self.path} is still there"
        if self.mode == "quarantine" and not state["quarantined"]:
            return f"{self.path} is gone but no copy is in {self.quarantine_dir}"
        return None


@dataclass
class DbLogin:
    label: str
    kind: str
    revoke: str
    probe_command: str
    revoked_output: str

    def probe(self, executor: Executor, timeout: float) -> dict[str, Any]:
        output = _run(executor, self.probe_command, timeout).stdout.strip()
        return {"output": output[:200], "revoked": output == self.revoked_output.strip()}

    def commands(self, state: dict[str, Any]) -> list[str]:
        return [] if state["revoked"] else [self.revoke]

    def verify(self, state: dict[str, Any]) -> str | None:
        return None if state["revoked"] else f"the probe prints {state['output']!r}, not {self.revoked_output!r}"


def make_action(spec: Any) -> HostAction:
    """The protocol object for an action table of the plan."""
    label = action_label(spec)
    if isinstance(spec, ServiceAction):
        if spec.manager == "systemd":
            return SystemdUnit(label, spec.kind, spec.name, spec.disable)
        if spec.manager == "sysv":
            script = f"/etc/init.d/{shlex.quote(spec.name)}"
            return StatusService(label, spec.kind, spec.name, f"{script} status", f"{script} stop")
        return StatusService(label, spec.kind, spec.name, str(spec.status), str(spec.stop))
    if isinstance(spec, TimerAction):
        unit = spec.name if spec.name.endswith(".timer") else f"{spec.name}.timer"
        return SystemdUnit(label, spec.kind, unit, True)
    if isinstance(spec, CronAction):
        return CronEntries(label, spec.kind, spec.pattern, spec.file, spec.user)
    if isinstance(spec, PortAction):
        return ClosedPort(label, spec.kind, spec.port, spec.close, spec.closed_when)
    if isinstance(spec, RemoveFileAction):
        return RemovedFile(label, spec.kind, spec.path, spec.mode, spec.quarantine_dir)
    if isinstance(spec, DbLoginAction):
        return DbLogin(label, spec.kind, spec.revoke, spec.probe, spec.revoked_output)
    raise TypeError(f"unknown action {spec!r}")
