"""A home folder: where each file lives, the single writer's lock, and opening its catalog.

Layout::

    <home>/catalog.sqlite        scans, instances (masks, float16 vectors, thumbnails), segments (SQLite default)
    <home>/home.json             the catalog's URL, when it is not the SQLite default (storage/homeconfig.py)
    <home>/vectors/seg-*.faiss   the live FAISS segment files (storage/segfiles.py)
    <home>/points/<scan_id>.npz  xyz (N,3) float32 and rgb (N,3) uint8 of each scan
    <home>/.lock                 writer lock of an SQLite home (fcntl.flock), holding the writer's pid for humans

The folder is the home's file store in every deployment: with a PostgreSQL catalog, every indexer and
server of the deployment mounts the same folder (NFS or another shared file system), at any path.

A writer creates the folders, takes the lock without waiting (a second writer gets StoreLockedError) and
opens the catalog creating / migrating it. The lock of an SQLite home is an ``flock`` on ``<home>/.lock``;
that of a PostgreSQL home is a session advisory lock in the catalog database (:class:`AdvisoryWriterLock`),
so a writer on another machine is refused as well. A reader takes no lock, creates nothing and needs an
existing catalog at the current schema version.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import Catalog, catalog_error
from scenegrep.storage.errors import CatalogError, StoreError, StoreLockedError
from scenegrep.storage.homeconfig import record_catalog_url, resolve_catalog_url

__all__ = [
    "HomeLayout",
    "WriterLock",
    "AdvisoryWriterLock",
    "HomeLock",
    "open_home",
    "advisory_key",
    "CATALOG_FILE",
    "LOCK_FILE",
]

CATALOG_FILE = "catalog.sqlite"
LOCK_FILE = ".lock"
VECTORS_DIR = "vectors"
POINTS_DIR = "points"


@dataclass(frozen=True)
class HomeLayout:
    """The paths of one home folder.

    Attributes:
        root: the home folder itself (``~`` expanded).
    """

    root: Path

    @property
    def catalog(self) -> Path:
        return self.root / CATALOG_FILE

    @property
    def catalog_files(self) -> list[Path]:
        """The catalog and SQLite's WAL / shared-memory companions."""
        return [self.catalog, self.root / (CATALOG_FILE + "-wal"), self.root / (CATALOG_FILE + "-shm")]

    @property
    def vectors(self) -> Path:
        return self.root / VECTORS_DIR

    @property
    def points(self) -> Path:
        return self.root / POINTS_DIR

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    def create(self) -> None:
        """Create the home and its sub-folders (mode from the umask, as ``mkdir`` does)."""
        for folder in (self.root, self.vectors, self.points):
            folder.mkdir(parents=True, exist_ok=True)


class WriterLock:
    """The exclusive, non-blocking ``flock`` on ``<home>/.lock`` that makes one process the writer."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, layout: HomeLayout) -> WriterLock:
        """Take the lock now or raise StoreLockedError (never waits)."""
        fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"{layout.root} is being written by another scenegrep process (lock {layout.lock}); "
                "wait for it to finish"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for humans wondering who holds it
        return cls(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock and close (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def advisory_key(url: URL) -> int:
    """The advisory lock key of the catalog database at ``url``: a signed 64-bit hash of its database
    name, so every writer of that catalog, from any machine, asks for the same lock."""
    digest = hashlib.blake2b(f"scenegrep writer:{url.database}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryWriterLock:
    """The PostgreSQL writer lock: ``pg_try_advisory_lock`` held by a dedicated connection for the writer's
    lifetime. The server drops it when that connection ends, so a killed writer never leaves it behind."""

    def __init__(self, conn: Connection, key: int, pid: int):
        self._conn: Connection | None = conn
        self.key = key
        self.pid = pid  # the lock connection's server process: the lock lives and dies with it

    @classmethod
    def acquire(cls, catalog: Catalog, root: Path) -> AdvisoryWriterLock:
        """Take the lock now or raise StoreLockedError (never waits); CatalogError if the database cannot
        be reached."""
        key = advisory_key(catalog.url)
        try:
            # autocommit: a session lock needs no transaction, and an open one would pin an old snapshot
            conn = catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError as exc:
            raise catalog_error(catalog.where, exc) from exc
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one()
        except DBAPIError as exc:
            conn.invalidate()
            raise catalog_error(catalog.where, exc) from exc
        except BaseException:
            conn.invalidate()
            raise
        if not got:
            conn.close()
            raise StoreLockedError(
                f"{root} is being written by another scenegrep process (advisory lock {key} in "
                f"{catalog.where}); wait for it to finish"
            )
        try:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        except DBAPIError as exc:
            conn.invalidate()
            raise catalog_error(catalog.where, exc) from exc
        return cls(conn, key, int(pid))

    @property
    def held(self) -> bool:
        return self._conn is not None

    def check(self, s: Session) -> None:
        """Fence every commit of the writer (Catalog.guard_commits): its transaction must still see this
        lock granted to the lock's own connection. If that connection dropped (a server restart, a network
        cut), the lock went with it and another writer may hold it now: the commit is refused, not merged
        into the other writer's state."""
        if self._conn is None:
            return
        held = s.connection().execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = :pid "
                "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = :key"
            ),
            {"pid": self.pid, "key": self.key},
        ).scalar_one()
        if not held:
            raise StoreLockedError(
                f"lost the writer lock (advisory lock {self.key}; its connection ended): this write was not "
                "committed; open the home again"
            )

    def release(self) -> None:
        """End the lock's connection, which releases the lock (idempotent)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            # closed, not returned to the pool: a pooled connection would keep the session lock
            conn.invalidate()
            conn.close()


HomeLock = WriterLock | AdvisoryWriterLock


def open_home(
    home: Path | str, *, read_only: bool, catalog_url: str | None = None
) -> tuple[HomeLayout, Catalog, HomeLock | None]:
    """Open a home's catalog: as the writer (create, lock, migrate) or as a reader (no lock, no writes).

    ``catalog_url``: the catalog database of a home this call creates (recorded in ``home.json``); for an
    existing home it must name the catalog the home already uses (None: whatever it uses).

    Returns:
        ``(layout, catalog, lock)``; ``lock`` is None for a reader. Nothing is left open on failure.

    Raises:
        StoreLockedError: another writer holds the home.
        CatalogVersionError: the catalog is newer than this code (or older, read-only).
        CatalogError: the catalog is damaged or not a catalog, or its database cannot be reached; or
            (writer) it is missing or empty while vector / point files remain.
        CatalogUrlMismatchError: ``catalog_url`` is not the catalog the home uses.
        StoreError: ``read_only`` and there is no catalog.
    """
    layout = HomeLayout(Path(home).expanduser())
    if read_only:
        url, _ = resolve_catalog_url(layout.root, catalog_url, create=False)
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
            raise StoreError(
                f"no scenegrep catalog in {layout.root} "
                "(index scans first with `scenegrep index`, or point --home elsewhere)"
            )
        return layout, Catalog.open(url, migrate=False), None
    created = not layout.root.exists()
    layout.create()
    try:
        return _open_writer(layout, catalog_url)
    except BaseException:
        if created:
            _remove_unused_home(layout)
        raise


def _remove_unused_home(layout: HomeLayout) -> None:
    """Remove the empty folders of a home whose first open failed, so a mistyped database URL leaves
    nothing behind. Anything in them stays, the SQLite lock file included: another process may hold it."""
    for folder in (layout.vectors, layout.points, layout.root):
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): keep what is there
            pass


def _open_writer(layout: HomeLayout, catalog_url: str | None) -> tuple[HomeLayout, Catalog, HomeLock]:
    """The writer half of :func:`open_home`, once the home's folders exist."""
    url, new = resolve_catalog_url(layout.root, catalog_url, create=True)
    if url.get_backend_name() == "sqlite":
        lock: HomeLock = WriterLock.acquire(layout)
        catalog: Catalog | None = None
        try:
            _refuse_lost_catalog(layout, Path(url.database or ""))
            catalog = Catalog.open(url)
            if new:
                record_catalog_url(layout.root, str(catalog_url))
        except BaseException:
            if catalog is not None:
                catalog.close()
            lock.release()
            raise
        return layout, catalog, lock
    catalog = Catalog.connect(url)
    try:
        lock = AdvisoryWriterLock.acquire(catalog, layout.root)
    except BaseException:
        catalog.close()
        raise
    catalog.guard_commits(lock.check)
    try:
        if catalog.schema_version() == 0:
            _refuse_lost_files(layout, catalog.where, "empty")
        catalog.prepare(migrate=True)
        if new:  # recorded only once the catalog opened: a mistyped URL leaves the home as it was
            record_catalog_url(layout.root, str(catalog_url))
    except BaseException:
        lock.release()
        catalog.close()
        raise
    return layout, catalog, lock


def _refuse_lost_catalog(layout: HomeLayout, path: Path) -> None:
    """A writer would start a fresh catalog and recovery would then delete every vector and point file as
    orphaned: refuse when the catalog is missing or empty but files are there.

    An empty main file is a blank database even in WAL mode: SQLite writes page 1 to the main file when it
    switches a new database to WAL, before any commit goes to the ``-wal`` file.
    """
    if path.exists() and path.stat().st_size > 0:
        return
    _refuse_lost_files(layout, path, "empty" if path.exists() else "missing")


def _refuse_lost_files(layout: HomeLayout, where: Path | str, state: str) -> None:
    """Raise CatalogError when vector or point files remain beside a catalog that is ``state``."""
    leftovers = [f for folder in (layout.vectors, layout.points) for f in folder.iterdir()]
    if leftovers:
        raise CatalogError(
            where,
            f"{state} catalog, yet {len(leftovers)} vector/point "
            f"file(s) remain (e.g. {leftovers[0]}): it was truncated or deleted. Nothing was changed; restore "
            "it, or move the home aside and re-index",
        )
