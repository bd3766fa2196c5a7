"""A private PostgreSQL server for tests: its own data folder, port and socket, nobody else's.

`initdb` makes a cluster in a temporary folder, owned by the OS user `postgres` when the
tests run as root (PostgreSQL refuses to run as root), and `pg_ctl` starts it on a free port
of 127.0.0.1, its Unix socket in that folder. A role with a password, `hpo`, owns the
databases the tests create; they reach it over TCP with the password, as a user's
`--storage postgresql+psycopg://...` would. The superuser is reached through the socket.

    with PgServer() as pg:
        url = pg.create_database("study1")   # postgresql+psycopg://hpo:...@127.0.0.1:PORT/study1
        pg.stop()                            # an outage: every connection cut
        pg.start()                           # back, same port, same data

Needs Debian's postgresql (initdb and pg_ctl, in /usr/lib/postgresql/<version>/bin) and
psycopg 3 (hpo's `test` extra); `unavailable()` says why not when they are missing.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from raycluster import free_port

OWNER = "postgres"  # the OS user that runs the server when the tests run as root
ROLE = "hpo"


def bindir() -> Path | None:
    """The folder of PostgreSQL's server programs: pg_ctl's on PATH, else Debian's newest."""
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("initdb").exists():
        return Path(found).parent
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin")
                if (p / "pg_ctl").exists() and (p / "initdb").exists()]
    return max(versions, default=None,
               key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)])


def unavailable() -> str | None:
    """Why a test PostgreSQL cannot run here, or None when it can."""
    if bindir() is None:
        return ("PostgreSQL's server is not installed (no initdb and pg_ctl on PATH or in "
                "/usr/lib/postgresql/*/bin): apt-get install postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            return f"PostgreSQL refuses to run as root, and there is no OS user {OWNER!r}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed: pip install -e '.[test]'"
    return None


class PgServer:
    """One PostgreSQL server in a temporary folder; a context manager that stops it and
    removes the folder."""

    def __init__(self):
        self.bin = bindir()
        # short: the socket's path, like any Unix socket's, has at most 107 characters
        self.root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.owner = OWNER if os.geteuid() == 0 else None
        if self.owner:
            account = pwd.getpwnam(self.owner)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.root.chmod(0o700)
        self.running = False
        try:
            self._server("initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8",
                         "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
            # fsync off only: what a killed server wrote reaches the disk through the OS. A
            # commit must still be durable when it returns (synchronous_commit stays on), or
            # stop()'s crash would lose what the study was told it kept
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                           f"unix_socket_directories = '{self.root}'\n"
                           "fsync = off\nfull_page_writes = off\n")
            self.start()
            self.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
        except BaseException:
            self.shutdown()
            raise

    def _server(self, program: str, *args, check: bool = True) -> subprocess.CompletedProcess:
        """Run one of PostgreSQL's programs as the server's owner."""
        return subprocess.run([str(self.bin / program), *map(str, args)], user=self.owner,
                              cwd=self.root, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=check)

    def start(self) -> None:
        """Start the server (again) and wait until it takes connections."""
        try:
            self._server("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"pg_ctl start failed: {exc.stderr}\n{self.logs()}") from None
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: `immediate` cuts every connection at once, as a crash would."""
        self._server("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def sql(self, statement: str, database: str = "postgres") -> None:
        """Run `statement` as the superuser, outside a transaction (CREATE DATABASE...)."""
        import psycopg

        with psycopg.connect(host=str(self.root), port=self.port, user="postgres",
                             dbname=database, autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str) -> str:
        """A new empty database owned by the role `hpo`; its SQLAlchemy URL."""
        self.sql(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url(name)

    def url(self, database: str, password: str | None = None,
            driver: str = "postgresql+psycopg") -> str:
        """The URL a user would pass to --storage: the role, its password, TCP."""
        return (f"{driver}://{ROLE}:{self.password if password is None else password}"
                f"@127.0.0.1:{self.port}/{database}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def shutdown(self) -> None:
        """Stop the server, whatever its state, and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            result = self._server("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop",
                                  check=False)
            if result.returncode and (self.data / "postmaster.pid").exists():
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
