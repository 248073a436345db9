"""One throw-away SSH host for the demo's shutdown and final_checks stages, and the plan that uses it.

    .venv/bin/python scripts/demo_hosts.py start --out demo-data/hosts   # host up; writes remote.toml
    .venv/bin/decom plan demo-data/hosts/remote.toml                     # lists the exact commands
    .venv/bin/decom run demo-data/hosts/remote.toml                      # shutdown, then final checks
    .venv/bin/python scripts/demo_hosts.py stop --out demo-data/hosts    # stops what start started

The host is the one the tests use (tests/ssh_hosts.py): a real sshd on a free loopback port with a
throw-away host key, a running daemon with a pid file and an HTTP port, a cron file with the DIRECTUM
exchange sync job, a fake signing key, and an access log with activity after the freeze. It needs root
(it creates the test users and a sudoers.d file) and /usr/sbin/sshd (`make services`); without them
`start` says so and exits 3, so `make demo` can skip the two stages with one clear line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from ssh_hosts import USER, SshdUnavailable, start_lab  # noqa: E402

ACCESS_LOG = "".join([
    '10.21.4.7 - - [20/Nov/2026:17:10:00 +0000] "GET /files/order-2026-114.pdf HTTP/1.1" 200 48211 "-" "Mozilla/5.0"\n',
    '203.0.113.17 - - [20/Nov/2026:18:35:00 +0000] "POST /login HTTP/1.1" 302 0 "-" "Mozilla/5.0"\n',
    *(f'203.0.113.17 - - [20/Nov/2026:18:36:{i:02d} +0000] "GET /files/doc-{i}.pdf HTTP/1.1" 200 91000 "-" "curl/8"\n'
      for i in range(45)),
])


def _plan(out: Path, lab: object, demo: Path) -> str:
    host = lab.hosts["app1"]  # type: ignore[attr-defined]
    daemon_port = host.daemon.port
    connection = (f'name = "app1"\naddress = "127.0.0.1"\nport = {host.port}\nuser = "{USER}"\n'
                  f'key_file = "{lab.client_key}"\nsudo = true')  # type: ignore[attr-defined]
    access_log = host.root / "log" / "access.log"
    return f"""# Written by scripts/demo_hosts.py for one throw-away host; `scripts/demo_hosts.py stop` removes it.
[plan]
name = "demo-remote"
owner = "Demo operator"
ticket = "DEMO-2"

[source]
adapter = "demo"
url = "sqlite:///{demo / 'legacy.sqlite'}"
content_root = "{demo / 'content'}"

[state]
folder = "remote.state"

[[stages]]
kind = "shutdown"
known_hosts = "known_hosts"
[[stages.hosts]]
{connection}
[[stages.hosts.actions]]
kind = "service"                 # the DIRECTUM exchange service (DISI)
name = "edm-web"
manager = "custom"
stop = '''{host.stop_command}'''
status = '''{host.status_command}'''
[[stages.hosts.actions]]
kind = "cron"
file = "{host.cron_file}"
pattern = "disi-sync"
[[stages.hosts.actions]]
kind = "port"
port = {daemon_port}
[[stages.hosts.actions]]
kind = "remove_file"             # the server-side signing key
path = "{host.key_file}"
mode = "quarantine"
quarantine_dir = "{host.quarantine}"

[[stages]]
kind = "final_checks"
known_hosts = "known_hosts"
freeze_at = 2026-11-20T18:00:00Z
users_inactive = false           # the demo's lock-down disables only the dormant and shared accounts
allowed_networks = ["10.0.0.0/8", "127.0.0.0/8"]
bulk_downloads_per_minute = 30
[[stages.hosts]]
{connection}
closed_ports = [{daemon_port}]
http = ["http://127.0.0.1:{daemon_port}/"]
processes = ["http.server {daemon_port}"]
jobs = [{{ file = "{host.cron_file}", pattern = "disi-sync" }}]
key_files = ["{host.key_file}"]
logs = [{{ path = "{access_log}", format = "combined" }}]

[[accept]]
stage = "final_checks"
match = "after the freeze in"
by = "Demo security officer"
reason = "the demo plants activity after the freeze (a shared account, a bulk download) to show the findings"
"""


def start(out: Path, demo: Path) -> int:
    if os.geteuid() != 0:
        print("demo hosts: skipped: starting a test sshd needs root (it creates test users and a sudoers.d file)")
        return 3
    if (out / "hosts.json").exists():
        stop(out)
    try:
        lab = start_lab(out / "lab", ("app1",))
    except SshdUnavailable as exc:
        print(f"demo hosts: skipped: {exc} (run `make services`)")
        return 3
    host = lab.hosts["app1"]
    assert host.sshd is not None and host.daemon is not None
    (host.root / "log" / "access.log").write_text(ACCESS_LOG, encoding="utf-8")
    lab.known_hosts(path=out / "known_hosts")
    (out / "remote.toml").write_text(_plan(out, lab, demo.resolve()), encoding="utf-8")
    shutil.rmtree(out / "remote.state", ignore_errors=True)
    record = {"sshd_pid": host.sshd.pid, "daemon_pid": host.daemon.process.pid, "root": str(host.root),
              "sudoers": str(lab.sudoers), "port": host.port}
    (out / "hosts.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(f"demo hosts: app1 listens on 127.0.0.1:{host.port} (sshd pid {host.sshd.pid}); plan: {out / 'remote.toml'}")
    return 0


def _kill(pid: int, expected: str) -> None:
    """Stop a process this script started, by its pid, only if it is still that program."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if expected in cmdline:
        os.kill(pid, signal.SIGTERM)


def stop(out: Path) -> int:
    path = out / "hosts.json"
    if not path.exists():
        print("demo hosts: nothing to stop")
        return 0
    record = json.loads(path.read_text(encoding="utf-8"))
    _kill(record["sshd_pid"], "sshd")
    _kill(record["daemon_pid"], "http.server")
    Path(record["sudoers"]).unlink(missing_ok=True)
    shutil.rmtree(record["root"], ignore_errors=True)
    path.unlink()
    print("demo hosts: stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--out", type=Path, default=REPO / "demo-data" / "hosts")
    parser.add_argument("--demo", type=Path, default=REPO / "demo-data", help="the demo EDM (decom demo build)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return start(args.out, args.demo) if args.action == "start" else stop(args.out)


if __name__ == "__main__":
    sys.exit(main())
