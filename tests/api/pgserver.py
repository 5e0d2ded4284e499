"""A throw-away PostgreSQL server for the tests: Debian's ``postgresql`` package (``.ci/run``
installs it), ``initdb`` and ``pg_ctl`` in a temporary folder, listening only on a Unix
socket in that folder (no port to collide with), started once per test process and stopped
(``pg_ctl stop -m immediate``, then the folder removed) when the process exits.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user the
package creates (or a ``retwin-pg`` user made here when there is none), via ``runuser``.

:func:`server` gives the running server; :meth:`PgServer.new_database` a fresh, empty
database and its SQLAlchemy URL (psycopg 3), so every test starts from nothing.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgServer", "server"]

#: The role the tests connect as (a superuser made by initdb; trust auth on the socket).
ROLE = "retwin"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    if which:
        return Path(which).resolve().parent
    raise RuntimeError("PostgreSQL is not installed (no pg_ctl): apt-get install postgresql "
                       "(.ci/run does)")


def _run_as() -> list[str]:
    """The command prefix that runs a server program as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "retwin-pg"):
        try:
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"]
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "retwin-pg"], check=True,
                   capture_output=True)
    return ["runuser", "-u", "retwin-pg", "--"]


@dataclass
class PgServer:
    """A running server: its folder, socket folder and the ``postgres`` database's URL."""

    root: Path
    bindir: Path
    prefix: list[str]
    proc_ok: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{ROLE}@/{database}?host={self.socket_dir}"

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data),
                               *args], capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        self.root.chmod(0o755)
        if self.prefix:
            user = self.prefix[2]
            shutil.chown(self.root, user=user)
        init = subprocess.run(
            [*self.prefix, str(self.bindir / "initdb"), "-D", str(self.data), "-U", ROLE,
             "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        opts = (f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
                "-c shared_buffers=32MB")
        started = self._ctl("start", "-w", "-t", "60", "-l", str(self.root / "server.log"),
                            "-o", opts)
        if started.returncode != 0:
            log = (self.root / "server.log")
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n"
                               f"{text}")
        self.proc_ok = True

    def stop(self) -> None:
        if self.proc_ok:
            self._ctl("stop", "-m", "immediate", "-w", "-t", "30")
            self.proc_ok = False
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(host=str(self.socket_dir), user=ROLE, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`new_database` (its connections are ended)."""
        import psycopg

        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        with psycopg.connect(host=str(self.socket_dir), user=ROLE, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_lock = threading.Lock()
_server: PgServer | None = None


def server() -> PgServer:
    """The test process's PostgreSQL server, started on first use."""
    global _server
    with _lock:
        if _server is None:
            root = Path(tempfile.mkdtemp(prefix="retwin-pg-"))
            srv = PgServer(root, _bindir(), _run_as())
            try:
                srv.start()
            except BaseException:
                srv.stop()
                raise
            atexit.register(srv.stop)
            _server = srv
        return _server
