"""Backup of ~1 GB of document bytes: decom's backup stage beside pg_dump, borg and restic, in one run.

Builds a scratch PostgreSQL database whose document bytes live in a bytea column (20,000 x 48 KiB of
random bytes by default, column storage EXTERNAL so PostgreSQL does not try to compress them), and
writes the same bytes as files into a content folder. Then times, one after the other, each as a
subprocess whose peak RSS is taken with os.wait4 (that process and the children it reaped, never the
PostgreSQL server):

  peers      pg_dump -Fc; pg_dump -Fd -j2 -Z0; borg create; restic backup (the last two of the folder)
  ceiling    psql \\copy (SELECT ...) TO file (FORMAT binary): the fastest the bytes leave PostgreSQL
             with --mariadb also mysql --quick ... -e 'SELECT id, data ...' > file: the same for MariaDB
  decom      decom run PLAN --stage backup, with the bytes read from PostgreSQL (sql_generic, blob
             content) and from the content folder (path content); with --mariadb also from MariaDB
  verify     restic check --read-data, borg check --verify-data, decom verify ARCHIVE --full

and prints seconds, MB/s of document content, speed relative to the fastest peer and peak RSS for
each, then the targets of the issue and whether they are met. Every command has a timeout and the
whole run has one too (--max-minutes); the scratch database and the temporary folders are removed
at the end unless --keep is given. borgbackup and restic are installed with apt-get if missing.

    .venv/bin/python -m benchmarks.backup_peers [--documents 20000] [--kib 48] [--repeat 1] [--mariadb] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

ADMIN = os.environ.get("DECOM_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIA_ADMIN = os.environ.get("DECOM_BENCH_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/mysql")

PEERS = ("pg_dump -Fc", "pg_dump -Fd -j2 -Z0", "borg create", "restic backup")
CEILING = "psql \\copy binary"
MARIA_CEILING = "mysql --quick (MariaDB)"  # the client's own read of the blob column: the MariaDB path's floor
RSS_LIMIT_MIB = 512
MB = 1e6

SCHEMA_SQL = [
    "CREATE EXTENSION IF NOT EXISTS pgcrypto",
    "CREATE TABLE doc_card (id integer PRIMARY KEY, title text NOT NULL, created timestamp NOT NULL)",
    """CREATE TABLE doc_file (id integer PRIMARY KEY, doc_id integer NOT NULL, ver_no integer NOT NULL,
                              orig_name text, fsize bigint NOT NULL, storage_path text NOT NULL,
                              created timestamp NOT NULL)""",
    "CREATE TABLE doc_blob (id integer PRIMARY KEY, data bytea NOT NULL)",
    # Out of line and never compressed: random bytes would not compress anyway, and the issue asks
    # for EXTERNAL so that no reader pays for a decompression attempt.
    "ALTER TABLE doc_blob ALTER COLUMN data SET STORAGE EXTERNAL",
]

# One batch of documents [lo, hi]: a card, one version pointing at a file path, and the bytes. The
# subquery refers to g, so PostgreSQL evaluates it per row (an uncorrelated one would run once and
# give every document the same bytes). gen_random_bytes returns at most 1024 bytes per call.
FILL_SQL = [
    """INSERT INTO doc_card (id, title, created)
       SELECT g, 'Benchmark document ' || g, TIMESTAMP '2012-01-01' + (g %% 4000) * INTERVAL '1 day'
       FROM generate_series(%(lo)s::int, %(hi)s::int) g""",
    """INSERT INTO doc_file (id, doc_id, ver_no, orig_name, fsize, storage_path, created)
       SELECT g, g, 1, 'document-' || g || '.bin', %(size)s::bigint,
              'store/' || lpad((g / 1000)::text, 4, '0') || '/' || lpad(g::text, 7, '0') || '.bin',
              TIMESTAMP '2012-01-01' + (g %% 4000) * INTERVAL '1 day'
       FROM generate_series(%(lo)s::int, %(hi)s::int) g""",
    """INSERT INTO doc_blob (id, data)
       SELECT g, (SELECT string_agg(gen_random_bytes(%(piece)s::int), ''::bytea)
                  FROM generate_series(1, %(pieces)s::int) WHERE g IS NOT NULL)
       FROM generate_series(%(lo)s::int, %(hi)s::int) g""",
]

MAPPING = """# Written by benchmarks/backup_peers.py: the benchmark's three tables as documents and versions.
[adapter]
description = "Backup benchmark source ({where})"
capabilities = ["{capability}"]

[entities.documents]
query = \"\"\"
SELECT d.id AS document_id, d.title AS title, d.created AS created_at
FROM doc_card d
\"\"\"

[entities.versions]
query = \"\"\"
SELECT v.id AS version_id, v.doc_id AS document_id, v.ver_no AS version_no, v.orig_name AS file_name,
       v.fsize AS size_bytes, {content_ref} AS content_ref, v.created AS created_at, 1 AS is_current
FROM doc_file v
\"\"\"

[content]
{content}
"""


class BenchmarkTimeout(Exception):
    """The whole run took longer than --max-minutes."""


class CommandFailed(Exception):
    """A timed or helper command exited non-zero or ran out of time; the message is one line."""


@dataclass
class Result:
    label: str
    command: str = ""
    seconds: float | None = None                       # the median of the runs
    runs: list[float] = field(default_factory=list)    # seconds of each run
    peak_mib: float | None = None                      # the highest of the runs
    output_bytes: int | None = None
    error: str | None = None


# --- running commands -----------------------------------------------------------------------

_running: dict[int, subprocess.Popen[bytes]] = {}


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """Stop a command we started, with everything it started (it runs in its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            child.poll()  # reap the launcher, or its group never empties
            try:
                os.killpg(child.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _failure_line(log: Path) -> str:
    """The line that says why a command failed: decom's `decom: error: ...` line, the text of a
    usage-error box, or else the last line of its output."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("$ ")]
    for line in lines:
        if line.startswith("decom:"):
            return line
    boxed = [line.strip("│╭╮╰╯─ ").strip() for line in lines if line.startswith("│")]
    if boxed:
        return "decom: " + " ".join(part for part in boxed if part)
    return lines[-1] if lines else "(no output)"


# Peak RSS: os.wait4 reports the larger of the child's own peak and the RSS its memory image had
# when it called exec. A child forked (or vforked) straight from this process would therefore show
# this process's own peak (~80 MiB: psycopg, SQLAlchemy, the source build) for every small tool. So a
# minimal interpreter (-I -S, no site-packages) forks the command, waits for it with os.wait4 and
# reports its seconds and peak RSS on a pipe; what that leaves in the figure is the launcher's
# few MiB at fork time (printed as the floor).
LAUNCHER = r"""
import os, sys, time
fd, argv = int(sys.argv[1]), sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"{argv[0]}: {exc}\n".encode())
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
os.write(fd, f"{time.perf_counter() - started} {usage.ru_maxrss}\n".encode())
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def timed(argv: list[str], *, log: Path, timeout: float, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one command and the children it reaped, measured by os.wait4 in
    the launcher above. Output goes to `log`. Raises CommandFailed on a non-zero exit or a timeout."""
    read_end, write_end = os.pipe()
    try:
        with log.open("ab") as out:
            out.write(f"$ {shlex.join(argv)}\n".encode())
            out.flush()
            child = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, str(write_end), *argv],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                                     pass_fds=(write_end,))
        os.close(write_end)
        write_end = -1
        _running[child.pid] = child
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _kill_group(child)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            child.wait()
        except BaseException:
            _kill_group(child)
            child.wait()
            raise
        finally:
            timer.cancel()
            _running.pop(child.pid, None)
        report = os.read(read_end, 200).decode().split()
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if expired.is_set():
        raise CommandFailed(f"timed out after {timeout:.0f} s (output in {log.name})")
    if child.returncode != 0 or len(report) != 2:
        raise CommandFailed(f"exit {child.returncode}: {_failure_line(log)}")
    return float(report[0]), int(report[1]) / 1024


def rss_floor(logs: Path) -> float:
    """Peak RSS the launcher reports for a command that allocates nothing."""
    return timed(["true"], log=logs / "floor.log", timeout=30)[1]


def helper(argv: list[str], *, log: Path, timeout: float, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> None:
    """An untimed step (repository init, key generation): same rules, figures thrown away."""
    timed(argv, log=log, timeout=timeout, env=env, cwd=cwd)


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum((Path(d) / f).stat().st_size for d, _, files in os.walk(path) for f in files)


# --- the source --------------------------------------------------------------------------------

def remove_scratch(admin: str, name: str, work: Path, keep: bool) -> None:
    """Drop the scratch PostgreSQL database and the work folder, or with `keep` say where they are."""
    if keep:
        print(f"kept: database {name}, work folder {work}")
        return
    shutil.rmtree(work, ignore_errors=True)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection string (psycopg, pg_dump, psql)."""
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def fill_rows(conn: psycopg.Connection[Any], first: int, last: int, kib: int, batch: int = 2000) -> None:
    """Documents `first`..`last` (one version of `kib` KiB of random bytes each) into the tables of
    SCHEMA_SQL, then hint bits set, frozen and flushed, so that no timed reader pays for it."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    for lo in range(first, last + 1, batch):
        hi = min(last, lo + batch - 1)
        with conn.transaction():
            for statement in FILL_SQL:
                conn.execute(statement, {"lo": lo, "hi": hi, "size": kib * 1024, "piece": 1024, "pieces": kib})
    conn.execute("DROP EXTENSION pgcrypto")  # not part of the legacy system: keep it out of the dumps
    conn.execute("VACUUM (FREEZE, ANALYZE)")
    conn.execute("CHECKPOINT")


def build_source(conninfo: str, documents: int, kib: int, content: Path, timeout: float,
                 maria: dict[str, Any] | None) -> None:
    """Fill the scratch database server-side, then write the same bytes to files (and MariaDB)."""
    size = kib * 1024
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = '{int(timeout)}s'")
        for statement in SCHEMA_SQL:
            conn.execute(statement)
        fill_rows(conn, 1, documents, kib)
        maria_conn = None
        if maria is not None:
            import pymysql
            maria_conn = pymysql.connect(**maria)
        try:
            # Read the bytes back in batches (binary results: no hex decoding) and write the files.
            with conn.transaction(), conn.cursor(name="bytes", binary=True) as cursor:
                cursor.itersize = 256
                cursor.execute("""SELECT b.id, f.storage_path, b.data, c.title, c.created, f.orig_name, f.created
                                  FROM doc_blob b JOIN doc_file f ON f.id = b.id JOIN doc_card c ON c.id = b.id
                                  ORDER BY b.id""")
                pending: list[tuple[Any, ...]] = []
                made: set[Path] = set()
                for doc_id, storage_path, data, title, card_created, orig_name, file_created in cursor:
                    path = content.joinpath(*storage_path.split("/"))
                    if path.parent not in made:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        made.add(path.parent)
                    path.write_bytes(data)
                    if maria_conn is not None:
                        pending.append((doc_id, storage_path, bytes(data), title, card_created, orig_name,
                                        file_created))
                        if len(pending) * size >= 8 * 1024 * 1024:
                            _maria_insert(maria_conn, pending, size)
                            pending = []
                if maria_conn is not None and pending:
                    _maria_insert(maria_conn, pending, size)
        finally:
            if maria_conn is not None:
                maria_conn.close()
    os.sync()


def _maria_create(admin: dict[str, Any], name: str) -> dict[str, Any]:
    import pymysql
    with pymysql.connect(**admin) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    params = {**admin, "database": name, "autocommit": False}
    with pymysql.connect(**params) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE doc_card (id INT PRIMARY KEY, title VARCHAR(255) NOT NULL, "
                    "created DATETIME NOT NULL) ENGINE=InnoDB")
        cur.execute("CREATE TABLE doc_file (id INT PRIMARY KEY, doc_id INT NOT NULL, ver_no INT NOT NULL, "
                    "orig_name VARCHAR(255), fsize BIGINT NOT NULL, storage_path VARCHAR(255) NOT NULL, "
                    "created DATETIME NOT NULL) ENGINE=InnoDB")
        cur.execute("CREATE TABLE doc_blob (id INT PRIMARY KEY, data LONGBLOB NOT NULL) ENGINE=InnoDB")
    return params


def _maria_insert(conn: Any, rows: list[tuple[Any, ...]], size: int) -> None:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO doc_card (id, title, created) VALUES (%s, %s, %s)",
                        [(r[0], r[3], r[4]) for r in rows])
        cur.executemany("INSERT INTO doc_file (id, doc_id, ver_no, orig_name, fsize, storage_path, created) "
                        "VALUES (%s, %s, 1, %s, %s, %s, %s)", [(r[0], r[0], r[5], size, r[1], r[6]) for r in rows])
        for row in rows:  # one statement per blob keeps every packet below max_allowed_packet
            cur.execute("INSERT INTO doc_blob (id, data) VALUES (%s, %s)", (row[0], row[2]))
    conn.commit()


def _maria_params(url: str) -> dict[str, Any]:
    parsed = sa.engine.make_url(url)
    return {"host": parsed.host or "127.0.0.1", "port": parsed.port or 3306, "user": parsed.username or "root",
            "password": parsed.password or "", "charset": "utf8mb4"}


# --- the peers ---------------------------------------------------------------------------------

def ensure_packages(logs: Path) -> list[str]:
    """Install borgbackup and restic from Debian if missing; returns what is still missing."""
    wanted = {"borg": "borgbackup", "restic": "restic"}
    missing = [pkg for tool, pkg in wanted.items() if shutil.which(tool) is None]
    if not missing:
        return []
    print(f"installing Debian packages {' '.join(missing)} with apt-get (not found on PATH)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", *missing]
    try:
        helper(install, log=logs / "apt-get.log", timeout=600, env=env)
    except CommandFailed:
        try:  # package lists may be missing or stale on a fresh machine
            helper([*sudo, "apt-get", "update", "-q"], log=logs / "apt-get.log", timeout=300, env=env)
            helper(install, log=logs / "apt-get.log", timeout=600, env=env)
        except CommandFailed as exc:
            print(f"  apt-get failed: {exc}")
    return [pkg for tool, pkg in wanted.items() if shutil.which(tool) is None]


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


COLD = {"checks": False}  # --cold-checks: drop the page cache before every verification


def drop_page_cache() -> None:
    """Empty the kernel's page cache (root only), so the next command reads from the disk."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n", encoding="ascii")
    except OSError as exc:
        raise CommandFailed(f"--cold-checks needs root to write /proc/sys/vm/drop_caches ({exc.strerror})") from None


def attempt(result: Result, argv: list[str], output: Path | None, *, log: Path, timeout: float,
            env: dict[str, str] | None = None, cwd: Path | None = None, shown: str | None = None,
            check: bool = False) -> bool:
    """One timed run of a command, added to `result` (seconds: the median of its runs, peak RSS: the
    highest). False, with result.error set, if it failed. A `check` starts from an empty page cache
    with --cold-checks."""
    result.command = shown or shlex.join(argv)
    os.sync()  # the previous command's dirty pages are not this one's to write
    if check and COLD["checks"]:
        try:
            drop_page_cache()
        except CommandFailed as exc:
            result.error = str(exc)
            return False
    try:
        seconds, peak = timed(argv, log=log, timeout=timeout, env=env, cwd=cwd)
    except CommandFailed as exc:
        result.error = str(exc)
        return False
    result.runs.append(seconds)
    result.seconds = statistics.median(result.runs)
    result.peak_mib = max(result.peak_mib or 0.0, peak)
    if output is not None and output.exists():
        result.output_bytes = size_of(output)
    return True


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


Rounds = Iterator[None]  # one timed command per next(): `repeat` backup rounds, then `repeat` check rounds


def repository_backup_and_check(made: Result, checked: Result, out: Path, log: Path, runs: int, timeout: float,
                                work: Path, *, env: Callable[[int], dict[str, str]], init: Callable[[Path], list[str]],
                                backup: Callable[[Path], list[str]], check: Callable[[Path], list[str]],
                                name: str, package: str, installed: bool) -> Rounds:
    """A repository tool (borg, restic): `runs` backups, each into a new repository (a second backup into
    the same one would only add what changed), then `runs` checks of the last repository. Yields after
    each round, timed or skipped after a failure, so that rounds stay aligned with the other commands.
    Without the Debian `package` (not `installed`) it runs nothing and says so in both results."""
    last: tuple[Path, dict[str, str]] | None = None
    failed = not installed
    for i in range(runs):
        if not failed:
            repo, environment = out / f"{name}-repo-{i}", env(i)
            try:
                helper(init(repo), log=log, timeout=120, env=environment)
                ok = attempt(made, backup(repo), repo, log=log, timeout=timeout, env=environment, cwd=work)
            except CommandFailed as exc:
                made.error, ok = f"{name} init: {exc}", False
            if last is not None:
                remove(last[0])
            last, failed = ((repo, environment), False) if ok else (None, True)
            if not ok:
                remove(repo)
        yield
    for _ in range(runs):
        if last is not None and not attempt(checked, check(last[0]), None, log=log, timeout=timeout, env=last[1],
                                            check=True):
            remove(last[0])
            last = None
        yield
    if last is not None:
        remove(last[0])
    for result in (made, checked):
        if not installed:
            result.error = f"{package} is not installed"
        elif not result.runs and result.error is None:
            result.error = "its backup did not succeed"


def run_peers(work: Path, logs: Path, pg_env: dict[str, str], database: str, timeout: float, repeat: int,
              missing: list[str], maria: dict[str, Any] | None = None,
              ) -> tuple[list[Result], list[Result], list[Rounds]]:
    """The peers' backups and checks, each `repeat` times into fresh outputs (a second restic or borg
    backup into the same repository would only add what changed), as rounds for `interleave`. With
    `maria` (the MariaDB copy's connection), also the mysql client reading its blob column to a file:
    what the server and its protocol allow, as psql's \\copy is for PostgreSQL."""
    out = work / "peers"
    out.mkdir()
    fc, fd, ceiling = Result("pg_dump -Fc"), Result("pg_dump -Fd -j2 -Z0"), Result(CEILING)
    copy = "\\copy (SELECT id, data FROM doc_blob) TO '{}' WITH (FORMAT binary)"
    target = str(out / "content.copy")
    dumps = [  # result, argv, output, log, shown, environment
        (fc, ["pg_dump", "-Fc", "-f", str(out / "db.dump"), database], out / "db.dump", "pg_dump-Fc.log", None,
         pg_env),
        (fd, ["pg_dump", "-Fd", "-j2", "-Z0", "-f", str(out / "db.dir"), database], out / "db.dir",
         "pg_dump-Fd.log", None, pg_env),
        (ceiling, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-c",
                   copy.format(target.replace("'", "''"))], out / "content.copy", "psql-copy.log",
         f'psql -X -q -v ON_ERROR_STOP=1 -d {database} -c "{copy.format(target)}"', pg_env)]

    def dump(result: Result, argv: list[str], output: Path, log: str, shown: str | None,
             env: dict[str, str]) -> Rounds:
        for _ in range(repeat):
            if result.error is None:
                attempt(result, argv, output, log=logs / log, timeout=timeout, env=env, shown=shown)
                remove(output)
            yield

    extra: list[Result] = []
    if maria is not None:
        client = Result(MARIA_CEILING)
        extra.append(client)
        query = "SELECT id, data FROM doc_blob"
        options = [f"--host={maria['host']}", f"--port={maria['port']}", f"--user={maria['user']}", "--quick",
                   "--raw", "--batch", "--skip-column-names", f"--database={maria['database']}", "-e", query]
        output = out / "content.tsv"
        if shutil.which("mysql") is None:
            client.error = "the mysql client is not installed"
        else:  # sh only redirects the output to the file (its $0), as psql's \copy writes one
            dumps.append((client, ["sh", "-c", 'exec mysql "$@" > "$0"', str(output), *options], output,
                          "mysql-quick.log", shlex.join(["mysql", *options]) + f" > {output}",
                          {"MYSQL_PWD": str(maria.get("password") or "")}))
    rounds = [dump(*d) for d in dumps]
    passphrase, password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    create, check_borg = Result("borg create"), Result("borg check --verify-data")
    # Its own config, cache and security folders for each repository, never ~/.config/borg.
    rounds.append(repository_backup_and_check(
        create, check_borg, out, logs / "borg.log", repeat, timeout, work,
        env=lambda i: {"BORG_PASSPHRASE": passphrase, "BORG_BASE_DIR": str(work / f"borg-{i}")},
        init=lambda repo: ["borg", "init", "--encryption=repokey-blake2", str(repo)],
        backup=lambda repo: ["borg", "create", "--compression", "lz4", f"{repo}::bench", "content"],
        check=lambda repo: ["borg", "check", "--verify-data", str(repo)], name="borg",
        package="borgbackup", installed="borgbackup" not in missing))
    backup, check_restic = Result("restic backup"), Result("restic check --read-data")
    rounds.append(repository_backup_and_check(
        backup, check_restic, out, logs / "restic.log", repeat, timeout, work,
        env=lambda i: {"RESTIC_PASSWORD": password, "RESTIC_CACHE_DIR": str(work / f"restic-cache-{i}"),
                       "RESTIC_PROGRESS_FPS": "0.2"},
        init=lambda repo: ["restic", "-r", str(repo), "init"],
        backup=lambda repo: ["restic", "-r", str(repo), "backup", "content"],
        check=lambda repo: ["restic", "-r", str(repo), "check", "--read-data"], name="restic",
        package="restic", installed="restic" not in missing))
    return [fc, fd, ceiling, *extra, create, backup], [check_restic, check_borg], rounds


def interleave(rounds: list[Rounds], count: int) -> None:
    """Run the commands round by round (each command once per round, in order), so that a machine that
    is slower for a few minutes slows every command alike instead of a few: ratios stay comparable."""
    for _ in range(count):
        for one in rounds:
            next(one, None)
    for one in rounds:  # each one's clean-up after its last round
        for _ in one:
            pass


# --- decom -------------------------------------------------------------------------------------

def decom_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from decom.cli import main; main()", "--quiet", *args]


def write_plan(folder: Path, name: str, url: str, mapping: str, content_root: Path | None, keys: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "mapping.toml").write_text(mapping, encoding="utf-8")
    root = f"content_root = {json.dumps(str(content_root))}\n" if content_root is not None else ""
    plan = folder / "plan.toml"
    plan.write_text(f"""# Written by benchmarks/backup_peers.py
[plan]
name = {json.dumps(name)}
owner = "benchmark"

[source]
adapter = "sql_generic"
url = {json.dumps(url)}
mapping = "mapping.toml"
{root}
[archive]
target = "archives"
recipients = [{json.dumps(str(keys / "auditor.pub"))}]
signing_key_file = {json.dumps(str(keys / "signing.key"))}

[[stages]]
kind = "backup"
verify_after = "none"   # verification is timed on its own below, as restic check and borg check are
""", encoding="utf-8")
    return plan


def run_decom(work: Path, logs: Path, pg_url: str, maria_url: str | None, timeout: float, repeat: int,
              bulk: bool) -> tuple[list[Result], list[Result], list[Rounds], str | None]:
    """decom backup of each source variant (each run with a fresh plan folder: new state, new archive),
    then decom verify --full of the last archive, as rounds for `interleave`. The fourth value is the
    decom error line when decom could not run at all (e.g. a command that does not exist yet)."""
    keys = work / "keys"
    keys.mkdir()
    try:
        helper(decom_argv("keys", "generate", "--kind", "recipient", "--out", str(keys / "auditor")),
               log=logs / "decom-keys.log", timeout=120)
        helper(decom_argv("keys", "generate", "--kind", "signing", "--out", str(keys / "signing")),
               log=logs / "decom-keys.log", timeout=120)
    except CommandFailed as exc:
        return [], [], [], f"`decom keys generate` failed, {exc}"
    for needed in ("auditor.key", "auditor.pub", "signing.key", "signing.pub"):
        if not (keys / needed).is_file():
            return [], [], [], f"`decom keys generate` wrote no {keys / needed}"

    blob_content = 'kind = "blob"\nquery = "SELECT data FROM doc_blob WHERE id = :content_ref"'
    if bulk:  # the blobs of many versions per query (docs/generic-sql-adapter.md)
        blob_content += '\nbulk_query = "SELECT id AS content_ref, data FROM doc_blob"'
    variants = [
        ("decom backup (PostgreSQL)", "bench-postgres", pg_url,
         MAPPING.format(where="PostgreSQL bytea", capability="content_blobs", content_ref="v.id",
                        content=blob_content), None),
        ("decom backup (content folder)", "bench-folder", pg_url,
         MAPPING.format(where="PostgreSQL, files in a folder", capability="content_files",
                        content_ref="v.storage_path", content='kind = "path"'), work / "content"),
    ]
    if maria_url is not None:
        variants.append(("decom backup (MariaDB)", "bench-mariadb", maria_url,
                         MAPPING.format(where="MariaDB LONGBLOB", capability="content_blobs",
                                        content_ref="v.id", content=blob_content), None))
    backups: list[Result] = []
    verifies: list[Result] = []

    def variant(backup: Result, verify: Result, name: str, url: str, mapping: str, root: Path | None) -> Rounds:
        archive: Path | None = None
        failed = False
        for i in range(repeat):
            if not failed:
                folder = work / f"{name}-{i + 1}"
                plan = write_plan(folder, name, url, mapping, root, keys)
                ok = attempt(backup, decom_argv("run", str(plan), "--stage", "backup"), None,
                             log=logs / f"{name}.log", timeout=timeout,
                             shown=f"decom run {plan.relative_to(work)} --stage backup")
                if archive is not None:
                    remove(archive.parent.parent)  # the previous run's plan folder, archive and state
                archive = None
                found = [p for p in (folder / "archives").iterdir() if p.is_dir()] \
                    if ok and (folder / "archives").is_dir() else []
                if ok and len(found) != 1:
                    backup.error = f"expected one archive folder under {folder / 'archives'}, found {len(found)}"
                if ok and len(found) == 1:
                    archive = found[0]
                    backup.output_bytes = size_of(archive)
                failed = archive is None
            yield
        for _ in range(repeat):
            if archive is not None:
                argv = decom_argv("verify", str(archive), "--full", "--key-file", str(keys / "auditor.key"),
                                  "--signer-key", str(keys / "signing.pub"))
                shown = (f"decom verify {archive.relative_to(work)} --full --key-file keys/auditor.key "
                         "--signer-key keys/signing.pub")
                if not attempt(verify, argv, None, log=logs / f"{name}-verify.log", timeout=timeout, shown=shown,
                               check=True):
                    remove(archive.parent.parent)
                    archive = None
            yield
        if archive is not None:
            remove(archive.parent.parent)
        if not verify.runs and verify.error is None:
            verify.error = "its backup did not succeed"

    rounds: list[Rounds] = []
    for label, name, url, mapping, root in variants:
        backup, verify = Result(label), Result(label.replace("backup", "verify --full"))
        backups.append(backup)
        verifies.append(verify)
        rounds.append(variant(backup, verify, name, url, mapping, root))
    return backups, verifies, rounds, None


# --- report --------------------------------------------------------------------------------------

def mbps(content_bytes: int, result: Result) -> float | None:
    return content_bytes / result.seconds / MB if result.seconds else None


def print_table(title: str, results: list[Result], content_bytes: int, reference: Result | None,
                reference_name: str) -> None:
    print(f"\n{title}")
    print(f"  {'':<38} {'seconds':>8} {'MB/s':>8} {'speed ÷ ' + reference_name:>22} {'peak RSS':>11} "
          f"{'output':>9}")
    for r in results:
        if r.seconds is None:
            print(f"  {r.label:<38} FAILED: {r.error}")
            continue
        speed = mbps(content_bytes, r)
        ratio = (f"{reference.seconds / r.seconds:.2f}x" if reference is not None and reference.seconds
                 else "-")
        output = f"{r.output_bytes / MB:,.0f} MB" if r.output_bytes is not None else "-"
        runs = f"  (runs: {', '.join(f'{x:.1f}' for x in r.runs)} s)" if len(r.runs) > 1 else ""
        print(f"  {r.label:<38} {r.seconds:8.1f} {speed:8.1f} {ratio:>22} {r.peak_mib or 0.0:7,.0f} MiB "
              f"{output:>9}{runs}")
        if r.error:
            print(f"  {'':<38} then FAILED: {r.error}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def per_round_ratios(decom: Result, peers: list[Result]) -> list[float]:
    """The fastest peer's time over decom's, round by round (the rounds run one after the other, so a
    machine whose speed drifts over the run moves both sides of each ratio alike). Empty unless every
    command has a time for every round."""
    count = len(decom.runs)
    if not peers or any(len(p.runs) != count for p in peers):
        return []
    return [min(p.runs[i] for p in peers) / decom.runs[i] for i in range(count)]


def print_targets(backups: list[Result], decom_backups: list[Result], decom_verifies: list[Result],
                  checks: list[Result], content_bytes: int, decom_error: str | None) -> None:
    by_label = {r.label: r for r in [*backups, *decom_backups, *decom_verifies, *checks]}
    peers = [r for r in backups if r.label in PEERS and r.seconds]
    fastest = min(peers, key=lambda r: r.seconds or 0.0) if peers else None
    ceiling = by_label.get(CEILING)
    pg = by_label.get("decom backup (PostgreSQL)")
    folder = by_label.get("decom backup (content folder)")
    maria = by_label.get("decom backup (MariaDB)")
    verify = by_label.get("decom verify --full (PostgreSQL)")
    restic_check = by_label.get("restic check --read-data")

    def why(**needed: Result | None) -> str:
        """'not measured (...)' naming the first figure the target needs that is missing."""
        for name, result in needed.items():
            if result is None or result.seconds is None:
                if decom_error and name.startswith("decom"):
                    return f"not measured ({decom_error})"
                reason = result.error if result is not None and result.error else "not run"
                return f"not measured ({name.replace('_', ' ')}: {reason})"
        return ""

    print("\ntargets (from the issue)")
    line = "  backup >= 1.6x the fastest peer (pg_dump -Fc, pg_dump -Fd, borg, restic): "
    if pg is None or pg.seconds is None or fastest is None or fastest.seconds is None:
        peer = f"fastest peer {fastest.label}, {mbps(content_bytes, fastest):.1f} MB/s; " if fastest else ""
        print(line + peer + why(decom_backup=pg, peers=fastest))
    else:
        ratio = fastest.seconds / pg.seconds
        print(line + f"{mbps(content_bytes, pg):.1f} MB/s = {ratio:.2f}x {fastest.label} "
              f"({mbps(content_bytes, fastest):.1f} MB/s): {verdict(ratio >= 1.6)}")
        rounds = per_round_ratios(pg, peers)
        if len(rounds) > 1:
            print("  (beside it, not the target's measure: round by round, decom against that round's fastest "
                  f"peer: {', '.join(f'{r:.2f}x' for r in rounds)})")
    line = "  backup >= 90 % of psql \\copy binary (aimed for): "
    if pg is None or pg.seconds is None or ceiling is None or ceiling.seconds is None:
        ceil = f"\\copy {mbps(content_bytes, ceiling):.1f} MB/s; " if ceiling and ceiling.seconds else ""
        print(line + ceil + why(decom_backup=pg, copy_binary=ceiling))
    else:
        share = ceiling.seconds / pg.seconds
        print(line + f"{share:.0%} of {mbps(content_bytes, ceiling):.1f} MB/s: {verdict(share >= 0.9)}")
    measured = [r for r in [*decom_backups, *decom_verifies] if r.peak_mib is not None]
    line = f"  peak RSS <= {RSS_LIMIT_MIB} MiB (every decom process): "
    if not measured:
        print(line + why(decom_backup=pg))
    else:
        worst = max(measured, key=lambda r: r.peak_mib or 0.0)
        print(line + f"highest {worst.peak_mib:,.0f} MiB ({worst.label}): "
              f"{verdict((worst.peak_mib or 0.0) <= RSS_LIMIT_MIB)}")
    line = "  decom verify --full at least as fast as restic check --read-data: "
    if verify is None or verify.seconds is None or restic_check is None or restic_check.seconds is None:
        ref = f"restic check {restic_check.seconds:.1f} s; " if restic_check and restic_check.seconds else ""
        print(line + ref + why(decom_backup=pg, decom_verify=verify, restic_check=restic_check))
    else:
        print(line + f"{verify.seconds:.1f} s vs {restic_check.seconds:.1f} s: "
              f"{verdict(verify.seconds <= restic_check.seconds)}")
    for name, other in (("content-folder", folder), ("MariaDB", maria)):
        line = f"  {name} path within 2x of the PostgreSQL path: "
        if pg is None or pg.seconds is None or other is None or other.seconds is None:
            print(line + (why(decom_backup=pg, decom_other_backup=other) if other or name != "MariaDB"
                          else "not measured (run with --mariadb)"))
        else:
            print(line + f"{other.seconds:.1f} s vs {pg.seconds:.1f} s ({other.seconds / pg.seconds:.2f}x): "
                  f"{verdict(other.seconds <= 2 * pg.seconds)}")
    client = by_label.get(MARIA_CEILING)
    if maria is not None and maria.seconds and client is not None and client.seconds:
        print(f"  (beside it, not a target: the MariaDB path took {maria.seconds / client.seconds:.2f}x the time of "
              f"{MARIA_CEILING}, {client.seconds:.1f} s)")
    print("  quick verify of 10,000 files in under 2 s: benchmarks/verify_quick.py")


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20_000, help="documents, one version each")
    parser.add_argument("--kib", type=int, default=48, help="bytes of each document, in KiB")
    parser.add_argument("--mariadb", action="store_true",
                        help="also load the bytes into MariaDB (DECOM_BENCH_MARIADB) and back them up with decom")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each command, each into a fresh output; the median is shown")
    parser.add_argument("--per-version-query", action="store_true",
                        help="blob mappings without [content] bulk_query: one query per version")
    parser.add_argument("--skip-peers", action="store_true", help="only the decom part")
    parser.add_argument("--skip-decom", action="store_true", help="only the peers")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed to each command (default: 60 + 1 s per 4 MB of content)")
    parser.add_argument("--max-minutes", type=float, default=30, help="the whole run stops after this")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database(s) and the work folder")
    parser.add_argument("--cold-checks", action="store_true",
                        help="drop the page cache before every verification (as on an auditor's machine; needs root)")
    args = parser.parse_args()
    COLD["checks"] = args.cold_checks
    if args.documents < 1 or args.kib < 1 or args.repeat < 1:
        parser.error("--documents, --kib and --repeat must be positive")

    content_bytes = args.documents * args.kib * 1024
    timeout = args.timeout or 60 + content_bytes / (4 * MB)

    def out_of_time(signum: int, frame: Any) -> None:
        raise BenchmarkTimeout(f"the benchmark ran longer than --max-minutes {args.max_minutes:g}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.max_minutes * 60))

    try:  # before the database: a --workdir that does not exist must not leave a database behind
        work_root = tempfile.mkdtemp(prefix="decom-backup-bench-", dir=args.workdir)
    except OSError as exc:
        raise SystemExit(f"backup_peers: cannot make a work folder in {args.workdir}: {exc.strerror}") from None
    name = f"decom_backup_bench_{uuid.uuid4().hex[:8]}"
    admin = libpq_url(ADMIN)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except BaseException:
        shutil.rmtree(work_root, ignore_errors=True)
        raise
    pg_url = sa.engine.make_url(ADMIN).set(database=name).render_as_string(hide_password=False)
    parsed = sa.engine.make_url(pg_url)
    pg_env = {"PGHOST": parsed.host or "127.0.0.1", "PGPORT": str(parsed.port or 5432),
              "PGUSER": parsed.username or "postgres"}
    if parsed.password:
        pg_env["PGPASSWORD"] = parsed.password
    maria_admin = _maria_params(MARIA_ADMIN) if args.mariadb else None
    maria_url: str | None = None
    work = Path(work_root)
    failed = False
    try:
        logs = work / "logs"
        logs.mkdir()
        maria_params = None
        if maria_admin is not None:
            maria_params = _maria_create(maria_admin, name)
            maria_url = (sa.engine.make_url(MARIA_ADMIN).set(database=name, query={"charset": "utf8mb4"})
                         .render_as_string(hide_password=False))
        started = time.perf_counter()
        build_source(libpq_url(pg_url), args.documents, args.kib, work / "content", timeout, maria_params)
        print(f"source: {args.documents:,} documents x {args.kib} KiB = {content_bytes / MB:,.0f} MB of random "
              f"bytes in PostgreSQL database {name} (bytea, storage EXTERNAL) and in {work / 'content'}"
              f"{' and in MariaDB' if maria_params else ''}, built in {time.perf_counter() - started:.1f} s")
        print(f"work folder {work}; each command's output in {logs} (kept with --keep); "
              f"per-command timeout {timeout:.0f} s; "
              "sync before every timed command")
        print(f"seconds: {'the median of ' + str(args.repeat) + ' runs' if args.repeat > 1 else 'one run'}; "
              "peak RSS: the highest, of the command and the children it reaped (not the PostgreSQL server), "
              f"floor of the measuring launcher {rss_floor(logs):.1f} MiB")

        missing = [] if args.skip_peers else ensure_packages(logs)
        print("tools: " + "; ".join(tool_version(argv) for argv in
                                    (["pg_dump", "--version"], ["borg", "--version"], ["restic", "version"])))
        backups: list[Result] = []
        checks: list[Result] = []
        rounds: list[Rounds] = []
        if not args.skip_peers:
            backups, checks, rounds = run_peers(work, logs, pg_env, name, timeout, args.repeat, missing,
                                                maria_params)
        decom_backups: list[Result] = []
        decom_verifies: list[Result] = []
        decom_error = "--skip-decom" if args.skip_decom else None
        if not args.skip_decom:
            print("decom reads blob content with "
                  + ("one query per version (--per-version-query)" if args.per_version_query
                     else "[content] bulk_query (many versions per query)"))
            decom_backups, decom_verifies, decom_rounds, decom_error = run_decom(
                work, logs, pg_url, maria_url, timeout, args.repeat, bulk=not args.per_version_query)
            rounds += decom_rounds
        print(f"order: {args.repeat} round(s) of every backup in the order of the table, then "
              f"{args.repeat} round(s) of every check"
              + (", each check from an empty page cache (--cold-checks)" if args.cold_checks else ""))
        interleave(rounds, 2 * args.repeat)

        peers = [r for r in backups if r.label in PEERS and r.seconds]
        fastest = min(peers, key=lambda r: r.seconds or 0.0) if peers else None
        print_table(f"backup of {content_bytes / MB:,.0f} MB of document content (MB = 10^6 bytes)",
                    [*backups, *decom_backups], content_bytes, fastest, "fastest peer")
        if decom_error:
            print(f"  {'decom backup':<38} NOT RUN: {decom_error}")
        restic_check = next((r for r in checks if r.label == "restic check --read-data" and r.seconds), None)
        print_table("verification of the backup just made", [*checks, *decom_verifies], content_bytes,
                    restic_check, "restic check")
        if decom_error:
            print(f"  {'decom verify --full':<38} NOT RUN: {decom_error}")
        print("\ncommands (relative paths are in the work folder):")
        for r in [*backups, *checks, *decom_backups, *decom_verifies]:
            if r.command:
                print(f"  {r.label:<38} {r.command.replace(str(work) + '/', '')}")
        print_targets(backups, decom_backups, decom_verifies, checks, content_bytes, decom_error)
        failed = any(r.error for r in [*backups, *checks, *decom_backups, *decom_verifies]) or (
            decom_error is not None and not args.skip_decom)
        if decom_error and not args.skip_decom:
            print(f"\ndecom part did not run: {decom_error}", file=sys.stderr)
        for r in [*decom_backups, *decom_verifies]:
            if r.error and r.error != "its backup did not succeed":
                print(f"{r.label} failed: {r.error}", file=sys.stderr)
    except BenchmarkTimeout as exc:
        print(f"\nstopped: {exc}", file=sys.stderr)
        failed = True
    finally:
        signal.alarm(0)
        for child in list(_running.values()):
            _kill_group(child)
        remove_scratch(admin, name, work, args.keep)
        if not args.keep and maria_admin is not None:
            import pymysql
            with pymysql.connect(**maria_admin) as mconn, mconn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
