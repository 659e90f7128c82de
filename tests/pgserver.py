"""A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a fresh temp folder.

The server listens on a Unix socket in that folder only (no TCP port, so parallel runs never collide)
and trusts local connections, under the role ``scenegrep``. PostgreSQL refuses to run as root: as root
the programs run as the ``postgres`` user (``runuser``) and the folder is handed to it.
:func:`start_server` raises :class:`PgUnavailable` with the reason when no server can be started (no
PostgreSQL installed, no ``postgres`` user, initdb failing), so callers can skip saying why.

``make test`` installs Debian's ``postgresql`` package when it is missing (the ``postgres`` target).
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROLE = "scenegrep"
PORT = 5432  # names the socket file only: the server opens no TCP port
_START_TIMEOUT_S = 60


class PgUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout), else the folder of an
    ``initdb`` on PATH, else None."""
    def version(initdb: str) -> int:
        name = Path(initdb).parts[-3]
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@dataclass
class PgServer:
    """A running throwaway cluster.

    Attributes:
        bindir: the PostgreSQL programs used. folder: the cluster's temp folder (data and socket).
        run_as: the user running the server (None: this process's user).
    """

    bindir: Path
    folder: Path
    run_as: str | None
    _admin: object = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server (over the Unix socket)."""
        return f"postgresql+psycopg://{ROLE}@/{database}?host={self.folder}&port={PORT}"

    def _connect_admin(self):  # noqa: ANN202 (a psycopg connection; psycopg is imported lazily)
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(
                host=str(self.folder), port=PORT, user=ROLE, dbname="postgres", autocommit=True
            )
        return self._admin

    def create_database(self, prefix: str = "t", template: str | None = None) -> str:
        """A new database with a unique name, empty or a copy of ``template``; returns the name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._connect_admin().execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending its remaining connections (a test's leftover reader, a killed writer's)."""
        self._connect_admin().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        _run(self, ["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def _run(server: PgServer, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(server.bindir / argv[0]), *argv[1:]]
    if server.run_as is not None:
        cmd = ["runuser", "-u", server.run_as, "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=_START_TIMEOUT_S)
    if check and done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split())[-400:]
        raise PgUnavailable(f"{argv[0]} failed ({done.returncode}): {said}")
    return done


def start_server(durable: bool = False) -> PgServer:
    """Start a cluster in a new temp folder; :class:`PgUnavailable` if it cannot be.

    ``durable``: keep PostgreSQL's default fsync / synchronous_commit (benchmarks); tests turn them off.
    """
    bindir = find_bindir()
    if bindir is None:
        raise PgUnavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; `make test` installs it as root)"
        )
    run_as = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PgUnavailable("running as root and there is no postgres user to run the server as") from None
        if shutil.which("runuser") is None:
            raise PgUnavailable("running as root and runuser is missing (PostgreSQL refuses to run as root)")
        run_as = "postgres"
    # directly under the temp dir: the postgres user must be able to reach it (pytest's folders are 0700)
    folder = Path(tempfile.mkdtemp(prefix="scenegrep-pg-"))
    if run_as is not None:
        os.chown(folder, pw.pw_uid, pw.pw_gid)
    server = PgServer(bindir, folder, run_as)
    try:
        _run(server, ["initdb", "-D", str(server.data), "-U", ROLE, "--auth=trust", "-E", "UTF8", "--no-sync"])
        options = f"-c listen_addresses='' -c unix_socket_directories={folder} -p {PORT} -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        _run(server, ["pg_ctl", "-D", str(server.data), "-l", str(folder / "server.log"), "-o", options, "-w", "start"])
    except (PgUnavailable, OSError, subprocess.SubprocessError) as exc:
        log_tail = ""
        if (folder / "server.log").is_file():
            log_tail = " ".join((folder / "server.log").read_text(errors="replace").split())[-300:]
        server.stop()
        raise PgUnavailable(f"{exc} {log_tail}".strip()) from None
    return server


# -- reading a test home's catalog, whatever its database -------------------------------------------


def home_catalog_url(home: Path) -> str:
    """The catalog URL a home uses (what every open resolves), password included."""
    from scenegrep.storage.homeconfig import resolve_catalog_url

    return resolve_catalog_url(home, None, create=False)[0].render_as_string(hide_password=False)


def on_postgresql(home: Path) -> bool:
    """Whether the home's catalog is a PostgreSQL database."""
    return home_catalog_url(home).startswith("postgresql")


def catalog_sql(home: Path, sql: str, params: dict | None = None) -> list[tuple]:
    """Run one SQL statement (``:name`` parameters) on a home's catalog in its own transaction; the rows."""
    from sqlalchemy import create_engine, text

    engine = create_engine(home_catalog_url(home))
    try:
        with engine.begin() as con:
            result = con.execute(text(sql), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()
