"""Shutdown stage: the old system's services, jobs, ports, signing keys and logins, switched off over SSH.

One step, `shutdown`. It first connects to every host (host keys pinned, key or agent, `sudo -n`
checked): if any host cannot be used, nothing is changed anywhere. Then it walks the hosts in
dependency order (`after`: the applications before their database) and, for each action, probes,
sends the commands that probe calls for, probes again and verifies (decom/remote/actions.py). Every
probe, command and result is journaled; the first probe of each action is kept in `before.json`.

Failures never hide each other: every host and every action gets a result in `results.json`; a host
whose dependency did not finish is skipped; the step fails at the end if anything did not finish.

A command is written to `pending.json` before it is sent and removed once its exit status is back.
If the connection drops (or the command times out) in between, the outcome is unknown: the step
fails saying so, and the next run probes that action first and journals what it finds — it never
re-sends the command blindly. A rerun of a finished shutdown sends nothing: every probe says done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from decom.engine import StageContext, StagePlan, Step
from decom.errors import UserError
from decom.fileio import write_json
from decom.plan_remote import host_order
from decom.remote.actions import ProbeFailed, make_action, public
from decom.remote.ssh import Executor, OutcomeUnknown, RemoteError, SshTarget, connect
from decom.remote.targets import ssh_target


def _hosts(ctx: StageContext) -> list[Any]:
    by_name = {h.name: h for h in ctx.stage_spec.hosts}
    return [by_name[name] for name in host_order(ctx.stage_spec.hosts)]


def _target(ctx: StageContext, host: Any) -> SshTarget:
    return ssh_target(host, ctx.stage_spec, ctx.plan.resolve)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


# -- the dry run ---------------------------------------------------------------------------------------

def plan(ctx: StageContext) -> StagePlan:
    """Connect and probe every host (read-only executors), and list exactly the commands a run would send."""
    spec = ctx.stage_spec
    hosts = _hosts(ctx)
    result = StagePlan(ctx.stage_name, "shutdown", True,
                       f"shut down {len(hosts)} host(s) in this order: {', '.join(h.name for h in hosts)}")
    commands = done = 0
    for host in hosts:
        try:
            executor = connect(_target(ctx, host), read_only=True)
        except UserError as exc:
            result.blockers.append(str(exc))
            continue
        with executor:
            for action_spec in host.actions:
                action = make_action(action_spec)
                try:
                    state = action.probe(executor, spec.command_timeout)
                except (ProbeFailed, OutcomeUnknown, RemoteError) as exc:
                    result.blockers.append(f"host {host.name}: {action.label}: cannot probe: {exc}")
                    continue
                planned = action.commands(state)
                if not planned:
                    done += 1
                    problem = action.verify(state)
                    result.decisions.append(
                        f"{host.name}: {action.label}: nothing to send; " + ("already done" if problem is None else
                                                                          f"verified after the actions before it "
                                                                          f"(now: {problem})"))
                for command in planned:
                    commands += 1
                    result.actions.append(f"{host.name}: {action.label}: {executor.wire(command)}")
    result.counts = {"hosts": len(hosts), "actions": sum(len(h.actions) for h in hosts), "commands": commands,
                     "already_done": done}
    result.risks.append("point of no return: once this stage starts, `decom undo` no longer restores the "
                        "access audit's lock-down")
    return result


# -- the step -------------------------------------------------------------------------------------------

class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def bound(self, seconds: float) -> float:
        return max(0.0, min(seconds, self.end - time.monotonic()))


class _Books:
    """pending.json (commands sent, outcome not yet known) and before.json (first probe of each action)."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.pending_path, self.before_path = ctx.stage_dir / "pending.json", ctx.stage_dir / "before.json"
        self.pending = _load(self.pending_path)
        self.before = _load(self.before_path)
        self.inside_fired = False

    def first_sight(self, key: str, state: dict[str, Any]) -> None:
        if key not in self.before:
            self.before[key] = state
            write_json(self.before_path, self.before)

    def intend(self, key: str, command: str) -> None:
        self.pending[key] = {"command": command, "sent_at": datetime.now(UTC).isoformat()}
        write_json(self.pending_path, self.pending)
        if not self.inside_fired:  # a crash here leaves a command that may or may not have been sent
            self.inside_fired = True
            self.ctx.crashpoint("inside")

    def settle(self, key: str) -> None:
        if self.pending.pop(key, None) is not None:
            write_json(self.pending_path, self.pending)


def _act(ctx: StageContext, executor: Executor, host: str, action: Any, books: _Books,
         deadline: _Deadline) -> tuple[dict[str, Any], bool]:
    """Probe, act, probe, verify one action. Returns its result and whether the connection is still usable."""
    timeout = ctx.stage_spec.command_timeout
    key = f"{host}/{action.label}"
    out: dict[str, Any] = {"action": action.label, "kind": action.kind, "status": "failed", "problem": None,
                           "before": None, "after": None, "commands": []}
    where = {"host": host, "action": action.label}
    try:
        state = action.probe(executor, deadline.bound(timeout))
    except (ProbeFailed, OutcomeUnknown) as exc:
        out["problem"] = f"cannot probe: {exc}"
        return out, executor.alive()
    out["before"] = public(state)
    ctx.record("shutdown_probe", **where, phase="before", state=out["before"])
    books.first_sight(key, out["before"])
    if key in books.pending:
        problem = action.verify(state)
        ctx.record("shutdown_unknown_resolved", **where, command=books.pending[key]["command"],
                   goal_reached=problem is None, state=out["before"])
        books.settle(key)
    for command in action.commands(state):
        wire = executor.wire(command)
        books.intend(key, wire)
        ctx.record("shutdown_command_sent", **where, command=wire)
        try:
            result = executor.run(command, mutating=True, timeout=deadline.bound(timeout))
        except OutcomeUnknown as exc:
            out.update(status="unknown", problem=f"{exc.reason}; the outcome is unknown: the next run probes it "
                                                 "and decides")
            out["commands"].append({"command": wire, "exit_status": None})
            ctx.record("shutdown_unknown_outcome", **where, command=wire, reason=exc.reason)
            return out, False
        books.settle(key)
        out["commands"].append({"command": wire, "exit_status": result.exit_status, "seconds": result.seconds,
                                "output": result.tail()})
        ctx.record("shutdown_command_result", **where, command=wire, exit_status=result.exit_status,
                   seconds=result.seconds, output=result.tail())
        if result.exit_status != 0:
            out["problem"] = f"`{command}` exited {result.exit_status}: {result.tail(200) or 'no output'}"
            break
    if out["commands"]:
        try:
            state = action.probe(executor, deadline.bound(timeout))
        except (ProbeFailed, OutcomeUnknown) as exc:
            out["problem"] = out["problem"] or f"cannot probe after acting: {exc}"
            return out, executor.alive()
    out["after"] = public(state)
    problem = action.verify(state)
    out["problem"] = out["problem"] or problem
    if out["problem"] is None:
        out["status"] = "done" if out["commands"] else "already_done"
    ctx.record("shutdown_probe", **where, phase="after", state=out["after"])
    return out, True


def _host(ctx: StageContext, host: Any, executor: Executor, books: _Books, deadline: _Deadline) -> dict[str, Any]:
    outcome: dict[str, Any] = {"host": host.name, "where": executor.description, "status": "done", "actions": []}
    usable = True
    for action_spec in host.actions:
        action = make_action(action_spec)
        if not usable or deadline.bound(1) <= 0:
            reason = "the connection was lost" if not usable else "step_timeout reached"
            out = {"action": action.label, "kind": action.kind, "status": "not_started", "problem": reason}
        else:
            try:
                out, usable = _act(ctx, executor, host.name, action, books, deadline)
            except RemoteError as exc:  # sudo refused, or the connection closed before a command went out
                out, usable = {"action": action.label, "kind": action.kind, "status": "failed",
                               "problem": str(exc)}, executor.alive()
        ctx.record("shutdown_action", host=host.name, **out)
        outcome["actions"].append(out)
    if any(a["status"] not in ("done", "already_done") for a in outcome["actions"]):
        outcome["status"] = "unknown" if any(a["status"] == "unknown" for a in outcome["actions"]) else "failed"
    return outcome


def _connect_all(ctx: StageContext, hosts: list[Any]) -> dict[str, Executor]:
    executors: dict[str, Executor] = {}
    problems = []
    for host in hosts:
        try:
            executor = connect(_target(ctx, host), read_only=False)
        except UserError as exc:
            problems.append(str(exc))
            ctx.record("shutdown_host_refused", host=host.name, error=str(exc))
            continue
        executors[host.name] = executor
        ctx.record("shutdown_host_connected", host=host.name, where=executor.description, host_key=executor.host_key,
                   client_key=executor.client_key, sudo=bool(host.sudo))
    if problems:
        for opened in executors.values():
            opened.close()
        raise UserError(f"stage {ctx.stage_name}: nothing was changed: {'; '.join(problems)}")
    return executors


def _summary(hosts: list[dict[str, Any]]) -> str:
    parts = []
    for host in hosts:
        if host["status"] == "skipped":
            parts.append(f"{host['host']}: skipped ({host['reason']})")
            continue
        for action in host["actions"]:
            if action["status"] not in ("done", "already_done"):
                parts.append(f"{host['host']}: {action['action']}: {action['status']}: {action['problem']}")
    return "; ".join(parts)


def _shutdown(ctx: StageContext) -> dict[str, Any]:
    hosts = _hosts(ctx)
    deadline = _Deadline(ctx.stage_spec.step_timeout)
    books = _Books(ctx)
    executors = _connect_all(ctx, hosts)
    results: list[dict[str, Any]] = []
    unfinished: set[str] = set()
    try:
        for host in hosts:
            waits = [name for name in host.after if name in unfinished]
            if waits:
                outcome = {"host": host.name, "status": "skipped", "reason": f"waits for {', '.join(waits)}",
                           "actions": []}
                ctx.record("shutdown_host_skipped", host=host.name, reason=outcome["reason"])
            else:
                outcome = _host(ctx, host, executors[host.name], books, deadline)
            results.append(outcome)
            if outcome["status"] != "done":
                unfinished.add(host.name)
    finally:
        for executor in executors.values():
            executor.close()
    path = ctx.stage_dir / "results.json"
    write_json(path, {"stage": ctx.stage_name, "finished_at": datetime.now(UTC).isoformat(), "hosts": results})
    if unfinished:
        raise UserError(f"stage {ctx.stage_name}: {len(unfinished)} of {len(hosts)} host(s) not finished: "
                        f"{_summary(results)} (details: {path})")
    actions = [a for h in results for a in h["actions"]]
    return {"file": str(path.relative_to(ctx.state_dir)), "hosts": len(results), "actions": len(actions),
            "commands_sent": sum(len(a.get("commands", [])) for a in actions),
            "already_done": sum(1 for a in actions if a["status"] == "already_done")}


def run(ctx: StageContext) -> Iterator[Step]:
    hosts = _hosts(ctx)
    yield Step("shutdown", f"switch off {sum(len(h.actions) for h in hosts)} thing(s) on {len(hosts)} host(s), "
               "in dependency order, each probed before and after", _shutdown,
               {"hosts": [h.name for h in hosts],
                "actions": {h.name: [make_action(a).label for a in h.actions] for h in hosts}})
