"""The throw-away SSH host `app1` that the shutdown and final_checks stages of plans/demo.toml act on.

    .venv/bin/python scripts/demo_hosts.py prepare --out demo-data/hosts   # keys, ssh_config, known_hosts
    .venv/bin/python scripts/demo_hosts.py start --out demo-data/hosts     # app1 up (root + sshd needed)
    .venv/bin/decom run plans/demo.toml                                    # ... shutdown, final checks
    .venv/bin/python scripts/demo_hosts.py stop --out demo-data/hosts      # stops what start started

`prepare` (no root needed; does nothing when its files exist; `make demo-data` runs it) writes what the
plan names, so `decom validate plans/demo.toml` passes even where the host cannot start: a client key
(keys/id_ed25519), the host's Ed25519 host key (keys/app1_host_ed25519_key), `ssh_config` (Host app1 on
127.0.0.1 at a free port, user decomtest, the client key) and `known_hosts` pinning that host key.

`start` runs the host the tests use (tests/ssh_hosts.py) at the places the static plan names: a real
sshd on the prepared port with the prepared host key, its root at /var/tmp/decom-demo/app1 (made fresh),
a running daemon (the legacy EDM web service) on 127.0.0.1:18431 with a pid file, a cron file with the
DIRECTUM exchange sync job, a fake signing key, and an access log with activity after the freeze. It
needs root (it creates the test users and a sudoers.d file) and /usr/sbin/sshd (`make services`):
without them it prints one "demo hosts: skipped: ..." line and exits 3, and `make demo` runs only the
stages that need no host. A port already in use fails `start` (exit 1) with one line naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import paramiko

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from ssh_hosts import SSHD, USER, FixedHost, SshdUnavailable, free_port, keygen, start_lab  # noqa: E402

HOST = "app1"
HOST_ROOT = Path("/var/tmp/decom-demo") / HOST   # plans/demo.toml names files under it
DAEMON_PORT = 18431                              # the legacy daemon's HTTP port in plans/demo.toml
ACCESS_LOG = "".join([
    '10.21.4.7 - - [20/Nov/2026:17:10:00 +0000] "GET /files/order-2026-114.pdf HTTP/1.1" 200 48211 "-" "Mozilla/5.0"\n',
    '203.0.113.17 - - [20/Nov/2026:18:35:00 +0000] "POST /login HTTP/1.1" 302 0 "-" "Mozilla/5.0"\n',
    *(f'203.0.113.17 - - [20/Nov/2026:18:36:{i:02d} +0000] "GET /files/doc-{i}.pdf HTTP/1.1" 200 91000 "-" "curl/8"\n'
      for i in range(45)),
])


def _files(out: Path) -> tuple[Path, Path, Path, Path]:
    """(client key, host key, ssh_config, known_hosts) in the prepared folder."""
    return (out / "keys" / "id_ed25519", out / "keys" / f"{HOST}_host_ed25519_key", out / "ssh_config",
            out / "known_hosts")


def prepare(out: Path) -> int:
    """Keys, ssh_config and known_hosts for app1; nothing when they exist. No root needed."""
    out = out.resolve()
    client, host_key, config, known = _files(out)
    if all(path.exists() for path in (client, host_key, config, known)):
        print(f"demo hosts: already prepared in {out}")
        return 0
    (out / "keys").mkdir(parents=True, exist_ok=True)
    for key, comment in ((client, "decom-demo"), (host_key, f"host-{HOST}")):
        if not key.exists():
            keygen(key, comment)
    port = free_port()
    config.write_text(f"# Written by scripts/demo_hosts.py prepare: the demo host {HOST} (plans/demo.toml).\n"
                      f"Host {HOST}\n    HostName 127.0.0.1\n    Port {port}\n    User {USER}\n"
                      f"    IdentityFile {client}\n    UserKnownHostsFile {known}\n", encoding="utf-8")
    kind, key = host_key.with_suffix(".pub").read_text(encoding="utf-8").split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {kind} {key}\n", encoding="utf-8")
    print(f"demo hosts: prepared {config} and {known} ({HOST} will listen on 127.0.0.1:{port})")
    return 0


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd and http.server bind
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def start(out: Path) -> int:
    out = out.resolve()
    if os.geteuid() != 0:
        print("demo hosts: skipped: starting a test sshd needs root (it creates test users and a sudoers.d file)")
        return 3
    if not os.access(SSHD, os.X_OK):
        print(f"demo hosts: skipped: {SSHD} is not installed (package openssh-server; run `make services`)")
        return 3
    client, host_key, config, known = _files(out)
    if not all(path.exists() for path in (client, host_key, config, known)):
        print(f"demo hosts: not prepared: run `scripts/demo_hosts.py prepare --out {out}` (make demo-data does)")
        return 1
    if (out / "hosts.json").exists():
        stop(out)  # left running by an interrupted demo
    port = int(paramiko.SSHConfig.from_path(str(config)).lookup(HOST)["port"])
    for number, what in ((port, f"the SSH port of {HOST} in {config}"),
                         (DAEMON_PORT, "the demo daemon's HTTP port in plans/demo.toml")):
        if _port_in_use(number):
            print(f"demo hosts: cannot start: 127.0.0.1:{number} ({what}) is in use; "
                  f"free it (ss -ltnp 'sport = :{number}') and run again")
            return 1
    if HOST_ROOT.exists():
        if not (HOST_ROOT / "sshd" / "sshd_config").exists() and any(HOST_ROOT.iterdir()):
            print(f"demo hosts: cannot start: {HOST_ROOT} exists and is not a demo host's root; move it away")
            return 1
        shutil.rmtree(HOST_ROOT)
    HOST_ROOT.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    HOST_ROOT.parent.chmod(0o755)  # the test user reads its authorized_keys under it
    try:
        lab = start_lab(out, (HOST,), fixed={HOST: FixedHost(HOST_ROOT, port, DAEMON_PORT, host_key)})
    except SshdUnavailable as exc:
        print(f"demo hosts: skipped: {exc} (run `make services`)")
        return 3
    host = lab.hosts[HOST]
    assert host.sshd is not None and host.daemon is not None
    (host.root / "log" / "access.log").write_text(ACCESS_LOG, encoding="utf-8")
    record = {"sshd_pid": host.sshd.pid, "daemon_pid": host.daemon.process.pid, "root": str(host.root),
              "sudoers": str(lab.sudoers), "port": host.port, "daemon_port": DAEMON_PORT}
    (out / "hosts.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(f"demo hosts: {HOST} listens on 127.0.0.1:{host.port} (sshd pid {host.sshd.pid}), its daemon on "
          f"127.0.0.1:{DAEMON_PORT}, root {host.root}")
    return 0


def _kill(pid: int, expected: str) -> None:
    """Stop a process this script started, by its pid, only if it is still that program; wait until it is gone."""
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if expected not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return  # exited; its parent (init) reaps it
        except OSError:
            return
        time.sleep(0.05)


def stop(out: Path) -> int:
    path = out / "hosts.json"
    if not path.exists():
        print("demo hosts: nothing to stop")
        return 0
    record = json.loads(path.read_text(encoding="utf-8"))
    _kill(record["sshd_pid"], f"sshd -D -e -f {record['root']}/")   # never another sshd that got the pid
    _kill(record["daemon_pid"], f"http.server {record['daemon_port']}")
    Path(record["sudoers"]).unlink(missing_ok=True)
    shutil.rmtree(record["root"], ignore_errors=True)
    with contextlib.suppress(OSError):
        Path(record["root"]).parent.rmdir()  # /var/tmp/decom-demo, when nothing else is in it
    path.unlink()
    print("demo hosts: stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["prepare", "start", "stop"])
    parser.add_argument("--out", type=Path, default=REPO / "demo-data" / "hosts")
    args = parser.parse_args()
    actions = {"prepare": prepare, "start": start, "stop": stop}
    return actions[args.action](args.out)


if __name__ == "__main__":
    sys.exit(main())
