"""Run commands on a host over SSH (paramiko), behind the small `Executor` interface the stages use.

What makes it safe to point at production hosts:

- **Pinned host keys.** The key the host presents must match a `known_hosts` file (hashed names and
  `[host]:port` entries work) or the SHA-256 fingerprint in the plan. An unknown or changed key is
  refused with one line that names the host and both fingerprints; nothing is sent to that host.
- **No passwords.** Authentication is by a key file or the ssh-agent's keys. Commands that need root
  run through `sudo -n`, which fails at once when sudo would ask for a password; decom reports that
  and never types one.
- **Timeouts everywhere.** TCP connect, handshake and authentication (`connect_timeout`), each
  command (`timeout` of `run`, which the stage bounds by its whole-step deadline).
- **Unknown outcomes are named.** When a command was sent but its exit status never came back
  (connection dropped, timed out), `run` raises `OutcomeUnknown`: the caller must probe before it
  decides anything, and must never assume the command did or did not run.

An executor made for a dry run (`read_only=True`) refuses any command marked mutating, so the dry
run cannot change a host even by mistake. A WinRM executor for Windows hosts would implement the
same `Executor` protocol; none exists yet (and Windows hosts cannot be tested here).
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paramiko

from decom.errors import UserError

_SUDO_REFUSALS = ("a password is required", "a terminal is required", "you must have a tty")
MAX_OUTPUT = 8 << 20


@dataclass(frozen=True)
class CommandResult:
    command: str            # exactly as sent
    exit_status: int
    stdout: str
    stderr: str
    seconds: float
    truncated: bool = False  # more output than the caller's limit: the rest was read and dropped

    def tail(self, limit: int = 400) -> str:
        """The end of stderr (else stdout) on one line, for messages and the journal."""
        text = " ".join((self.stderr.strip() or self.stdout.strip()).split())
        return text if len(text) <= limit else "…" + text[-limit:]


class RemoteError(UserError):
    """A host cannot be used: unreachable, host key not pinned or changed, key refused, sudo wants a password."""


class HostUnreachable(RemoteError):
    """Nothing answered on the host's SSH port (refused, no route, timed out, no such name)."""


class HostKeyRejected(RemoteError):
    """The host's key is not pinned, or differs from the pinned one."""


class AuthRefused(RemoteError):
    """The server refused every key offered for the user."""


class OutcomeUnknown(Exception):
    """A command was sent but no exit status came back: it may or may not have run. Probe, then decide."""

    def __init__(self, host: str, command: str, reason: str) -> None:
        self.host, self.command, self.reason = host, command, reason
        super().__init__(f"host {host}: {reason}; the outcome of the command is unknown")


class Executor(Protocol):
    """What a stage may do with a host. SSH implements it here; a WinRM executor could implement it later."""

    @property
    def host(self) -> str:
        """The host's name in the plan."""
        ...

    @property
    def description(self) -> str:
        """How it was reached, e.g. "app1 (decom@10.0.0.5:22)"."""
        ...

    @property
    def host_key(self) -> str:
        """The fingerprint the host's identity was verified with ("" when not applicable)."""
        ...

    @property
    def client_key(self) -> str:
        """The fingerprint of the key decom logged in with."""
        ...

    def wire(self, command: str) -> str:
        """The exact text `run` sends for `command` (with the sudo wrapper, if any)."""
        ...

    def run(self, command: str, *, mutating: bool, timeout: float, max_bytes: int = MAX_OUTPUT) -> CommandResult:
        ...

    def alive(self) -> bool:
        """Whether the connection still stands (after an unknown outcome it usually does not)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SshTarget:
    """A host with everything resolved: where, as whom, with which key, pinned how."""

    name: str
    address: str
    port: int
    user: str
    key_file: Path | None = None
    agent: bool = False
    known_hosts: Path | None = None
    fingerprint: str | None = None
    key_alias: str | None = None     # HostKeyAlias from ssh_config: the name known_hosts lists the host under
    sudo: bool = False
    connect_timeout: float = 10.0

    @property
    def where(self) -> str:
        return f"{self.name} ({self.user}@{self.address}:{self.port})"

    @property
    def known_hosts_name(self) -> str:
        host = self.key_alias or self.address
        return host if self.port == 22 else f"[{host}]:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key, e.g. SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _pinned(target: SshTarget) -> tuple[list[paramiko.PKey], str]:
    """The keys the plan pins for the host (empty: none) and where they come from."""
    if target.fingerprint is not None or target.known_hosts is None:
        return [], "the plan's host_key_fingerprint"
    keys = paramiko.HostKeys()
    try:
        keys.load(str(target.known_hosts))
    except (OSError, UnicodeDecodeError) as exc:
        raise RemoteError(f"cannot read known_hosts {target.known_hosts} ({type(exc).__name__})") from None
    except (paramiko.SSHException, ValueError) as exc:
        raise RemoteError(f"known_hosts {target.known_hosts} has a line paramiko cannot read: {exc}") from None
    entry = keys.lookup(target.known_hosts_name)
    return (list(entry.values()) if entry else []), f"known_hosts {target.known_hosts} ({target.known_hosts_name})"


def _check_host_key(target: SshTarget, key: paramiko.PKey, pinned: list[paramiko.PKey], source: str) -> None:
    presented = f"{key.get_name()} {fingerprint(key)}"
    wanted = [target.fingerprint] if target.fingerprint else [fingerprint(k) for k in pinned]
    if fingerprint(key) in wanted:
        return
    if not wanted:
        raise HostKeyRejected(
            f"host {target.where}: its host key is not pinned; it presents {presented}; check that fingerprint "
            f"with the host's owner, then add the key to known_hosts or set host_key_fingerprint; refusing to connect")
    raise HostKeyRejected(
        f"host {target.where}: HOST KEY MISMATCH: it presents {presented} but {source} pins "
        f"{', '.join(wanted)}; refusing to connect (a reinstalled host or a man in the middle)")


def _client_keys(target: SshTarget) -> list[paramiko.PKey]:
    if target.key_file is not None:
        try:
            return [paramiko.PKey.from_path(str(target.key_file))]
        except paramiko.PasswordRequiredException:
            raise RemoteError(f"host {target.name}: key file {target.key_file} is encrypted; load it into ssh-agent "
                              "and set agent = true (decom asks for no passphrase)") from None
        except (OSError, paramiko.SSHException, ValueError, UnicodeDecodeError) as exc:
            raise RemoteError(f"host {target.name}: cannot read key file {target.key_file} "
                              f"({type(exc).__name__})") from None
    try:
        keys = list(paramiko.Agent().get_keys())
    except (paramiko.SSHException, OSError) as exc:
        raise RemoteError(f"host {target.name}: cannot use the ssh-agent ({_reason(exc)})") from None
    if not keys:
        raise RemoteError(f"host {target.name}: agent = true but no ssh-agent key is available "
                          "(is SSH_AUTH_SOCK set and the key added?)")
    return keys


def _authenticate(target: SshTarget, transport: paramiko.Transport) -> str:
    keys = _client_keys(target)
    for key in keys:
        try:
            transport.auth_publickey(target.user, key)
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise RemoteError(f"host {target.where}: authentication failed: {_reason(exc)}") from None
        if transport.is_authenticated():
            return fingerprint(key)
    tried = ", ".join(fingerprint(k) for k in keys)
    raise AuthRefused(f"host {target.where}: the server refused the key for user {target.user} ({tried})")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _open_socket(target: SshTarget) -> socket.socket:
    where = f"host {target.name} ({target.address}:{target.port})"
    try:
        return socket.create_connection((target.address, target.port), timeout=target.connect_timeout)
    except ConnectionRefusedError:
        raise HostUnreachable(f"{where}: nothing listens there (connection refused); is the host down?") from None
    except socket.gaierror:
        raise HostUnreachable(f"{where}: the address does not resolve") from None
    except TimeoutError:
        raise HostUnreachable(f"{where}: no answer within {target.connect_timeout:g}s (connect_timeout)") from None
    except OSError as exc:
        raise HostUnreachable(f"{where}: cannot connect: {exc.strerror or type(exc).__name__}") from None


def connect(target: SshTarget, *, read_only: bool) -> SshExecutor:
    """An authenticated SSH session to the host, its key checked against the pins. Raises RemoteError."""
    pinned, source = _pinned(target)
    sock = _open_socket(target)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = target.connect_timeout
    if pinned:  # ask for the key type that is pinned, as OpenSSH does with known_hosts
        options = transport.get_security_options()
        types = [t for k in pinned for t in (("rsa-sha2-512", "rsa-sha2-256") if k.get_name() == "ssh-rsa"
                                                else (k.get_name(),))]
        preferred = [t for t in types if t in options.key_types]
        options.key_types = list(dict.fromkeys(preferred + list(options.key_types)))
    try:
        transport.start_client(timeout=target.connect_timeout)
        _check_host_key(target, transport.get_remote_server_key(), pinned, source)
        client_key = _authenticate(target, transport)
    except RemoteError:
        transport.close()
        raise
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        raise RemoteError(f"host {target.where}: SSH handshake failed: {_reason(exc)}") from None
    executor = SshExecutor(target, transport, read_only, fingerprint(transport.get_remote_server_key()), client_key)
    if target.sudo:
        executor.check_sudo()
    return executor


@dataclass
class SshExecutor:
    target: SshTarget
    transport: paramiko.Transport
    read_only: bool
    host_key: str
    client_key: str
    sent: list[str] = field(default_factory=list)   # every command sent, in order (the dry-run tests read it)

    @property
    def host(self) -> str:
        return self.target.name

    @property
    def description(self) -> str:
        return self.target.where

    def wire(self, command: str) -> str:
        quoted = shlex.quote(command)
        return f"sudo -n -- sh -c {quoted}" if self.target.sudo else f"sh -c {quoted}"

    def check_sudo(self) -> None:
        """Fail fast, before anything else, when sudo would ask this user for a password."""
        result = self.run("true", mutating=False, timeout=self.target.connect_timeout)
        if result.exit_status != 0:
            self.close()
            raise RemoteError(f"host {self.target.where}: sudo -n failed for user {self.target.user}: "
                              f"{result.tail(200) or 'exit ' + str(result.exit_status)}")

    def run(self, command: str, *, mutating: bool, timeout: float, max_bytes: int = MAX_OUTPUT) -> CommandResult:
        if mutating and self.read_only:
            raise RuntimeError(f"refusing to send a mutating command to {self.host} in a dry run: {command!r}")
        wire = self.wire(command)
        if not self.transport.is_active():
            raise RemoteError(f"host {self.target.where}: the connection is closed; the command was not sent")
        try:
            channel = self.transport.open_session(timeout=self.target.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise RemoteError(f"host {self.target.where}: cannot open a session ({_reason(exc)}); "
                              "the command was not sent") from None
        started = time.monotonic()
        self.sent.append(wire)
        try:
            channel.exec_command(wire)
            channel.shutdown_write()
            return self._collect(channel, wire, started, max(timeout, 0.1), max_bytes)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise OutcomeUnknown(self.host, wire, f"the connection failed ({_reason(exc)})") from None
        finally:
            channel.close()

    def _collect(self, channel: paramiko.Channel, wire: str, started: float, timeout: float,
                 max_bytes: int) -> CommandResult:
        out, err = bytearray(), bytearray()
        truncated = False

        def drain() -> None:
            nonlocal truncated
            for ready, receive, buffer in ((channel.recv_ready, channel.recv, out),
                                           (channel.recv_stderr_ready, channel.recv_stderr, err)):
                while ready():
                    chunk, room = receive(65536), max_bytes - len(buffer)
                    buffer.extend(chunk[:max(room, 0)])
                    truncated = truncated or len(chunk) > room

        deadline = started + timeout
        while True:
            drain()
            if channel.exit_status >= 0 or channel.closed:
                break
            if not self.transport.is_active():
                raise OutcomeUnknown(self.host, wire, "the connection was lost before the command's exit status "
                                                      "came back")
            if time.monotonic() >= deadline:
                raise OutcomeUnknown(self.host, wire, f"no exit status within {timeout:g}s (command_timeout)")
            channel.status_event.wait(0.05)
        settle = time.monotonic() + 2.0  # the output that follows the exit status, up to the channel's end
        while not (channel.closed or (channel.eof_received and not channel.recv_ready()
                                      and not channel.recv_stderr_ready())) and time.monotonic() < settle:
            drain()
            time.sleep(0.01)
        drain()
        status = channel.exit_status
        if status < 0:  # a dropped connection and a command killed by a signal look alike: assume nothing
            reason = ("the connection was lost before the command's exit status came back"
                      if not self.transport.is_active() else "the command ended without an exit status")
            raise OutcomeUnknown(self.host, wire, reason)
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if self.target.sudo and status == 1 and stderr.startswith("sudo:") and any(
                refusal in stderr for refusal in _SUDO_REFUSALS):
            raise RemoteError(f"host {self.target.where}: sudo asks user {self.target.user} for a password (sudo -n "
                              "refused at once); decom never types passwords: allow these commands without one "
                              "(NOPASSWD) or set sudo = false")
        return CommandResult(wire, status, stdout, stderr, round(time.monotonic() - started, 3), truncated)

    def alive(self) -> bool:
        return bool(self.transport.is_active())

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> SshExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
