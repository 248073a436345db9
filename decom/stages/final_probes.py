"""The single checks of the final_checks stage. Each gives pass, fail or unknown, with its evidence.

From the decom host: TCP ports closed, HTTP endpoints silent, the old application's database login
failing, SSH accounts refused. Over SSH (read-only executors: never a mutating command): processes
gone (pgrep), systemd timers inactive, cron entries gone, signing key files gone, and log files fetched
for the activity analysis. A check that cannot say (host unreachable, probe failed) is unknown, never
pass.
"""

from __future__ import annotations

import shlex
import socket
import ssl
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from decom.remote.actions import CronEntries, ProbeFailed, RemovedFile
from decom.remote.ssh import (
    AuthRefused,
    Executor,
    HostKeyRejected,
    HostUnreachable,
    OutcomeUnknown,
    RemoteError,
    SshTarget,
    connect,
)

PASS, FAIL, UNKNOWN = "pass", "fail", "unknown"


@dataclass
class Check:
    id: str                      # stable, e.g. "port:app1:8080"; [[accept]] matches "<id>: <summary>"
    kind: str
    host: str                    # "" for checks not tied to a host
    status: str                  # pass | fail | unknown
    summary: str                 # one line
    evidence: dict[str, Any] = field(default_factory=dict)
    accepted_by: str | None = None

    @property
    def line(self) -> str:
        return f"{self.id}: {self.summary}"


def tcp_closed(host: str, address: str, port: int, timeout: float) -> Check:
    check_id = f"port:{host}:{port}"
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            peer = sock.getpeername()
    except ConnectionRefusedError:
        return Check(check_id, "port", host, PASS, f"{address}:{port} refuses connections", {"result": "refused"})
    except TimeoutError:
        return Check(check_id, "port", host, PASS, f"{address}:{port} does not answer within {timeout:g}s",
                     {"result": "timed out"})
    except OSError as exc:
        return Check(check_id, "port", host, PASS, f"{address}:{port} unreachable ({exc.strerror or exc})",
                     {"result": str(exc.strerror or exc)})
    return Check(check_id, "port", host, FAIL, f"{address}:{port} accepts connections from the decom host",
                 {"result": "connected", "peer": f"{peer[0]}:{peer[1]}"})


def http_silent(host: str, url: str, timeout: float) -> Check:
    check_id = f"http:{host}:{url}"
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "decom-final-checks"})
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight from the decom host
        with opener.open(request, timeout=timeout) as response:
            status, server = response.status, response.headers.get("Server", "")
    except urllib.error.HTTPError as exc:
        status, server = exc.code, exc.headers.get("Server", "") if exc.headers else ""
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            return Check(check_id, "http", host, FAIL, f"{url}: a TLS server answers ({exc.reason})",
                         {"result": "tls answered"})
        return Check(check_id, "http", host, PASS, f"{url} does not answer ({exc.reason})", {"result": str(exc.reason)})
    except (TimeoutError, ConnectionError) as exc:
        return Check(check_id, "http", host, PASS, f"{url} does not answer ({type(exc).__name__})",
                     {"result": type(exc).__name__})
    return Check(check_id, "http", host, FAIL, f"{url} answers HTTP {status}",
                 {"result": "answered", "status": status, "server": server})


def db_login_fails(name: str, url: str, timeout: int) -> Check:
    """The old application's own login must no longer connect. Never shows the URL (it holds a password)."""
    check_id = f"db_login:{name}"
    try:
        parsed = sa.engine.make_url(url)
        backend = parsed.get_backend_name()
        args = {"connect_timeout": timeout} if backend in ("postgresql", "mysql", "mariadb") else {}
        engine = sa.create_engine(parsed, poolclass=NullPool, connect_args=args)
    except Exception as exc:  # a malformed URL or a missing driver: cannot tell
        return Check(check_id, "db_login", "", UNKNOWN, f"cannot try the login {name}: {type(exc).__name__}",
                     {"error": type(exc).__name__})
    where = f"{parsed.username or '?'}@{parsed.host or parsed.database or '?'}"
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        text = " ".join(str(exc.orig).split())
        if parsed.password:
            text = text.replace(parsed.password, "***")
        return Check(check_id, "db_login", "", PASS, f"{where} cannot connect: {text[:200]}",
                     {"login": where, "error": type(exc.orig).__name__, "message": text[:500]})
    except Exception as exc:
        return Check(check_id, "db_login", "", UNKNOWN, f"{where}: {type(exc).__name__}", {"login": where})
    finally:
        engine.dispose()
    return Check(check_id, "db_login", "", FAIL, f"{where} still connects and runs queries", {"login": where})


def ssh_refused(target: SshTarget) -> Check:
    """Authenticating as the account with its old key must fail. No command is ever run when it succeeds."""
    check_id = f"ssh_refused:{target.name}:{target.user}"
    try:
        executor = connect(target, read_only=True)
    except AuthRefused as exc:
        return Check(check_id, "ssh_refused", target.name, PASS, f"{target.user} is refused", {"error": str(exc)})
    except HostUnreachable as exc:
        return Check(check_id, "ssh_refused", target.name, PASS, f"no SSH service answers for {target.user}",
                     {"error": str(exc)})
    except (HostKeyRejected, RemoteError) as exc:
        return Check(check_id, "ssh_refused", target.name, UNKNOWN, str(exc), {"error": str(exc)})
    executor.close()
    return Check(check_id, "ssh_refused", target.name, FAIL, f"{target.user} can still log in with its key",
                 {"host_key": executor.host_key, "client_key": executor.client_key})


def _probe(executor: Executor, command: str, timeout: float, max_bytes: int = 1 << 20) -> tuple[int, str, str]:
    try:
        result = executor.run(command, mutating=False, timeout=timeout, max_bytes=max_bytes)
    except OutcomeUnknown as exc:
        raise ProbeFailed(exc.reason) from None
    return result.exit_status, result.stdout, result.stderr


def processes_gone(executor: Executor, pattern: str, timeout: float) -> Check:
    check_id = f"process:{executor.host}:{pattern}"
    marker = f"decom-probe-{uuid.uuid4().hex[:12]}"  # in the command line of every wrapper shell: excluded
    try:
        status, out, err = _probe(executor, f"pgrep -a -f -- {shlex.quote(pattern)} # {marker}", timeout)
    except (ProbeFailed, RemoteError) as exc:
        return Check(check_id, "process", executor.host, UNKNOWN, f"cannot list processes: {exc}")
    if status not in (0, 1):
        return Check(check_id, "process", executor.host, UNKNOWN, f"pgrep exited {status}: {err.strip()[:200]}")
    found = [line for line in out.splitlines() if line.strip() and marker not in line]
    if found:
        return Check(check_id, "process", executor.host, FAIL, f"{len(found)} process(es) match {pattern!r}",
                     {"processes": found[:20]})
    return Check(check_id, "process", executor.host, PASS, f"no process matches {pattern!r}")


def timer_inactive(executor: Executor, timer: str, timeout: float) -> Check:
    unit = timer if timer.endswith(".timer") else f"{timer}.timer"
    check_id = f"timer:{executor.host}:{unit}"
    try:
        status, out, err = _probe(executor, f"systemctl is-active -- {shlex.quote(unit)}", timeout)
    except (ProbeFailed, RemoteError) as exc:
        return Check(check_id, "timer", executor.host, UNKNOWN, f"cannot ask systemd: {exc}")
    state = out.strip() or "unknown"
    if status in (126, 127):
        return Check(check_id, "timer", executor.host, UNKNOWN, f"systemctl not available: {err.strip()[:200]}")
    if status == 0 or state in ("active", "activating", "reloading"):
        return Check(check_id, "timer", executor.host, FAIL, f"{unit} is {state}", {"state": state})
    return Check(check_id, "timer", executor.host, PASS, f"{unit} is {state}", {"state": state})


def jobs_gone(executor: Executor, file: str | None, user: str | None, pattern: str, timeout: float) -> Check:
    entries = CronEntries("cron", "cron", pattern, file, user)
    check_id = f"job:{executor.host}:{file or 'crontab of ' + str(user)}:{pattern}"
    try:
        state = entries.probe(executor, timeout)
    except (ProbeFailed, RemoteError) as exc:
        return Check(check_id, "job", executor.host, UNKNOWN, f"cannot read the schedule: {exc}")
    if state["matching"]:
        return Check(check_id, "job", executor.host, FAIL, f"{len(state['matching'])} entr(ies) match {pattern!r}",
                     {"entries": state["matching"][:20], "sha256": state["sha256"]})
    return Check(check_id, "job", executor.host, PASS, f"no entry matches {pattern!r}",
                 {"exists": state["exists"], "sha256": state["sha256"]})


def key_file_gone(executor: Executor, path: str, timeout: float) -> Check:
    check_id = f"key_file:{executor.host}:{path}"
    try:
        state = RemovedFile("key", "key_file", path, "shred", None).probe(executor, timeout)
    except (ProbeFailed, RemoteError) as exc:
        return Check(check_id, "key_file", executor.host, UNKNOWN, f"cannot look: {exc}")
    if state["exists"]:
        return Check(check_id, "key_file", executor.host, FAIL, f"{path} is still there",
                     {"sha256": state["sha256"], "size": state["size"]})
    return Check(check_id, "key_file", executor.host, PASS, f"{path} is gone")


def fetch_log(executor: Executor, path: str, max_mb: int, timeout: float) -> tuple[str | None, str]:
    """(the log's text, or None) and why not. Compressed logs are read too; at most the last max_mb."""
    quoted = shlex.quote(path)
    try:
        status, out, err = _probe(executor, f"test -r {quoted} || exit 3; zcat -f -- {quoted} | tail -c {max_mb << 20}",
                                  timeout, (max_mb << 20) + 1)
    except (ProbeFailed, RemoteError) as exc:
        return None, str(exc)
    if status == 3:
        return None, f"{path} does not exist or cannot be read"
    if status != 0:
        return None, f"reading {path} exited {status}: {err.strip()[:200]}"
    return out, ""
