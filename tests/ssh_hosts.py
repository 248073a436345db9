"""Throw-away SSH hosts for the shutdown and final-checks tests: real OpenSSH sshd processes, never mocks.

`start_lab` starts one `/usr/sbin/sshd -D -e -f <config>` per host on a free loopback port, each with
its own throw-away Ed25519 host key (ssh-keygen), PidFile and AuthorizedKeysFile under the host's
own root folder (`/tmp/decomhost-XXXX/`), UsePAM no and StrictModes no. sshd runs as root (as a real
one does); the tests log in as a dedicated user:

- `decomtest` has passwordless sudo (a file in /etc/sudoers.d that the lab writes and removes).
  decom wraps every command in `sh -c`, so the rule cannot be narrowed to one folder: it is ALL.
- `decomtest2` has sudo that asks for a password (no password is set, so it can never succeed):
  the "sudo needs a password" fault case.

The users are created with useradd when missing (kept afterwards; password field `*`, so key logins
work without PAM and no password login can). Each host's root holds what a legacy EDM host has:

- a real small daemon (`python -m http.server` on its own port, started as root, pid file in run/),
  stopped by the plan's custom stop command (`kill $(cat pidfile)`) and probed by its status command;
- a cron file `cron.d/edm-sync` with the exchange service's sync job and an unrelated job;
- a fake signing key `keys/exchange-signing.key`, and `quarantine/` for the remove_file action;
- `log/` for access and auth logs a test plants.

A caller that names the host in a static plan (scripts/demo_hosts.py for plans/demo.toml) gives it a
`FixedHost`: a fixed root folder, SSH port, daemon port and an existing host key; and keys already in
`<folder>/keys/` are reused. Tests give none: a fresh temp root, free ports and new keys.

Without sshd installed the caller fails the test (scripts/services.sh installs it): never a skip.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
USER = "decomtest"
PASSWORD_SUDO_USER = "decomtest2"
CRON_TEXT = """\
# DIRECTUM exchange service (DISI): subscribers and documents sync, auto-signing
SHELL=/bin/sh
MAILTO=edm-admins
*/5 * * * * root /opt/directum/disi/disi-sync --once >>/var/log/disi-sync.log 2>&1
30 2 * * * root /usr/sbin/logrotate /etc/logrotate.conf
"""


class SshdUnavailable(RuntimeError):
    """sshd is not installed or did not start; the fixture turns this into pytest.fail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str, banner: bool = False) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SshdUnavailable(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if not banner or sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SshdUnavailable(f"{what} did not answer on 127.0.0.1:{port} within 15s")


_USERS_READY: set[str] = set()


def ensure_user(name: str) -> None:
    if name in _USERS_READY:
        return
    try:
        pwd.getpwnam(name)
    except KeyError:
        done = subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-p", "*", name], capture_output=True, text=True)
        if done.returncode not in (0, 9):  # 9: created meanwhile by a concurrent test session
            raise SshdUnavailable(f"useradd {name} failed: {done.stderr.strip()}") from None
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)  # "!" would lock key logins too
    _USERS_READY.add(name)


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def _reuse_or_keygen(path: Path, comment: str) -> Path:
    return path if path.exists() else keygen(path, comment)


def fingerprint_of(public_key: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(public_key)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


@dataclass
class Daemon:
    """The legacy service: a real process with a pid file and a listening HTTP port."""

    process: subprocess.Popen[bytes]
    pid_file: Path
    port: int

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.running():
            self.process.terminate()
            self.process.wait(10)


@dataclass
class LabHost:
    name: str
    port: int
    root: Path
    host_key: Path
    sshd: subprocess.Popen[bytes] | None = None
    daemon: Daemon | None = None
    daemon_port: int | None = None   # the daemon's fixed HTTP port (None: a free port each start)

    @property
    def config(self) -> Path:
        return self.root / "sshd" / "sshd_config"

    @property
    def cron_file(self) -> Path:
        return self.root / "cron.d" / "edm-sync"

    @property
    def key_file(self) -> Path:
        return self.root / "keys" / "exchange-signing.key"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "edm-web.pid"

    @property
    def stop_command(self) -> str:
        return f"kill $(cat {self.pid_file}) && rm -f {self.pid_file}"

    @property
    def status_command(self) -> str:
        return f"test -f {self.pid_file} && kill -0 $(cat {self.pid_file})"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.host_key.with_suffix(".pub"))

    def known_hosts_line(self) -> str:
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}"

    def start_sshd(self, wait: bool = True) -> None:
        log = (self.root / "sshd" / "sshd.log").open("ab")
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_sshd()

    def wait_sshd(self) -> None:
        assert self.sshd is not None
        _wait_port(self.port, self.sshd, f"sshd of test host {self.name}", banner=True)

    def stop_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            self.sshd.wait(10)

    def new_host_key(self) -> None:
        """Reinstall the host: a new host key (the 'changed host key' case). Restart sshd to use it."""
        for path in (self.host_key, self.host_key.with_suffix(".pub")):
            path.unlink()
        keygen(self.host_key, f"host-{self.name}")

    def start_daemon(self, wait: bool = True) -> None:
        port = self.daemon_port or free_port()
        www = self.root / "www"
        process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                    "--directory", str(www)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=process.wait, daemon=True).start()  # reap it the moment the plan kills it
        self.pid_file.write_text(f"{process.pid}\n")
        self.daemon = Daemon(process, self.pid_file, port)
        if wait:
            self.wait_daemon()

    def wait_daemon(self) -> None:
        assert self.daemon is not None
        _wait_port(self.daemon.port, self.daemon.process, f"the daemon of test host {self.name}")


def _sshd_config(host: LabHost) -> str:
    folder = host.root / "sshd"
    return f"""\
Port {host.port}
ListenAddress 127.0.0.1
HostKey {host.host_key}
PidFile {folder / 'sshd.pid'}
AuthorizedKeysFile {folder}/authorized_keys.%u
AllowUsers {USER} {PASSWORD_SUDO_USER}
UsePAM no
StrictModes no
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
MaxStartups 100
MaxSessions 50
LogLevel VERBOSE
"""


@dataclass
class SshLab:
    folder: Path                 # the client side: keys/ and known_hosts files
    client_key: Path             # authorized for both users on every host
    stranger_key: Path           # authorized nowhere
    sudoers: Path
    hosts: dict[str, LabHost] = field(default_factory=dict)

    def known_hosts(self, *names: str, path: Path | None = None) -> Path:
        """A known_hosts file pinning the given hosts (default: all of them)."""
        target = path or self.folder / "known_hosts"
        target.write_text("".join(self.hosts[n].known_hosts_line() + "\n" for n in (names or self.hosts)))
        return target

    def close(self) -> None:
        for host in self.hosts.values():
            if host.daemon is not None:
                host.daemon.stop()
            host.stop_sshd()
            shutil.rmtree(host.root, ignore_errors=True)
        self.sudoers.unlink(missing_ok=True)


@dataclass(frozen=True)
class FixedHost:
    """A host at the places a static plan names: root folder (must not exist yet), ports, host key."""

    root: Path
    port: int
    daemon_port: int
    host_key: Path               # an existing private key, its .pub beside it; copied into root/sshd/


def _host(name: str, lab: SshLab, start: bool, fixed: FixedHost | None = None) -> LabHost:
    if fixed is None:
        root = Path(tempfile.mkdtemp(prefix="decomhost-"))
    else:
        root = fixed.root
        root.mkdir(parents=True)
    root.chmod(0o755)
    for sub in ("sshd", "cron.d", "keys", "run", "www", "log"):
        (root / sub).mkdir(mode=0o755)
    host_key = root / "sshd" / "host_ed25519_key"
    if fixed is None:
        host = LabHost(name, free_port(), root, keygen(host_key, f"host-{name}"))
    else:
        shutil.copyfile(fixed.host_key, host_key)
        shutil.copyfile(fixed.host_key.with_suffix(".pub"), host_key.with_suffix(".pub"))
        host_key.chmod(0o600)
        host = LabHost(name, fixed.port, root, host_key, daemon_port=fixed.daemon_port)
    public = lab.client_key.with_suffix(".pub").read_text()
    for user in (USER, PASSWORD_SUDO_USER):
        (root / "sshd" / f"authorized_keys.{user}").write_text(public)
    host.config.write_text(_sshd_config(host))
    host.cron_file.write_text(CRON_TEXT)
    host.key_file.write_text("-----BEGIN PRIVATE KEY-----\n" + secrets.token_hex(48) + "\n-----END PRIVATE KEY-----\n")
    host.key_file.chmod(0o600)
    (root / "www" / "index.html").write_text(f"<h1>EDM on {name}</h1>\n")
    if start:
        host.start_sshd(wait=False)
        host.start_daemon(wait=False)
    return host


def start_lab(folder: Path, names: tuple[str, ...] = ("app1", "app2", "db1"), *, start: bool = True,
              fixed: Mapping[str, FixedHost] | None = None) -> SshLab:
    """Hosts with sshd and daemon running (start=False: configured only, nothing listening: a host that is down).
    `fixed` places the hosts it names (see FixedHost); keys already in `folder/keys/` are reused."""
    if not os.access(SSHD, os.X_OK) or shutil.which("sudo") is None:
        raise SshdUnavailable(f"{SSHD} or sudo is not installed (package openssh-server, sudo)")
    for user in (USER, PASSWORD_SUDO_USER):
        ensure_user(user)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    folder.mkdir(parents=True, exist_ok=True)
    keys = folder / "keys"
    keys.mkdir(exist_ok=True)
    sudoers = Path("/etc/sudoers.d") / f"decom-test-{secrets.token_hex(6)}"  # no '.' in the name, or sudo skips it
    lab = SshLab(folder, _reuse_or_keygen(keys / "id_ed25519", "decom-test"),
                 _reuse_or_keygen(keys / "stranger", "stranger"), sudoers)
    rule = f"{USER} ALL=(root) NOPASSWD: ALL\n{PASSWORD_SUDO_USER} ALL=(root) ALL\n"
    staged = folder / "sudoers.check"
    staged.write_text(rule)
    subprocess.run(["visudo", "-cqf", str(staged)], check=True)
    sudoers.write_text(rule)
    sudoers.chmod(0o440)
    try:
        for name in names:
            lab.hosts[name] = _host(name, lab, start, (fixed or {}).get(name))
        for host in lab.hosts.values() if start else ():
            host.wait_sshd()
            host.wait_daemon()
    except BaseException:
        lab.close()
        raise
    return lab


def shutdown_actions(host: LabHost, *, stop: str | None = None, status: str | None = None, key_mode: str = "quarantine",
            port: bool = True) -> str:
    """A shutdown stage's standard actions for a lab host (plan TOML): daemon, cron entry, its port,
    the signing key."""
    key = ('mode = "shred"' if key_mode == "shred" else f'mode = "quarantine"\nquarantine_dir = "{host.quarantine}"')
    text = f"""
[[stages.hosts.actions]]
kind = "service"
name = "edm-web"
manager = "custom"
stop = '''{stop or host.stop_command}'''
status = '''{status or host.status_command}'''

[[stages.hosts.actions]]
kind = "cron"
file = "{host.cron_file}"
pattern = "disi-sync"
"""
    if port:
        assert host.daemon is not None
        text += f'\n[[stages.hosts.actions]]\nkind = "port"\nport = {host.daemon.port}\n'
    return text + f'\n[[stages.hosts.actions]]\nkind = "remove_file"\npath = "{host.key_file}"\n{key}\n'
