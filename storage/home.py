"""A home folder: where each file lives, the single writer's lock, and opening its catalog.

Layout::

    <home>/catalog.sqlite        scans, instances (masks, float16 vectors, thumbnails), generations
    <home>/vectors/gen-<N>.faiss the current FAISS generation (VectorIndex file)
    <home>/points/<scan_id>.npz  xyz (N,3) float32 and rgb (N,3) uint8 of each scan
    <home>/.lock                 writer lock (fcntl.flock), holding the writer's pid for humans

A writer creates the folders, takes the lock without waiting (a second writer gets StoreLockedError) and
opens the catalog creating / migrating it. A reader takes no lock, creates nothing and needs an existing
catalog at the current schema version.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from scenegrep.storage.catalog import Catalog
from scenegrep.storage.errors import CatalogError, StoreError, StoreLockedError

__all__ = ["HomeLayout", "WriterLock", "open_home", "CATALOG_FILE", "LOCK_FILE"]

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


def open_home(home: Path | str, *, read_only: bool) -> tuple[HomeLayout, Catalog, WriterLock | None]:
    """Open a home's catalog: as the writer (create, lock, migrate) or as a reader (no lock, no writes).

    Returns:
        ``(layout, catalog, lock)``; ``lock`` is None for a reader. Nothing is left open on failure.

    Raises:
        StoreLockedError: another writer holds the home.
        CatalogVersionError: the catalog is newer than this code (or older, read-only).
        CatalogError: the catalog file is damaged or not a catalog, or (writer) it is missing or empty
            while vector / point files remain.
        StoreError: ``read_only`` and there is no catalog.
    """
    layout = HomeLayout(Path(home).expanduser())
    if read_only:
        if not layout.catalog.exists():
            raise StoreError(
                f"no scenegrep catalog in {layout.root} "
                "(index scans first with `scenegrep index`, or point --home elsewhere)"
            )
        return layout, Catalog.open(layout.catalog, migrate=False), None
    layout.create()
    lock = WriterLock.acquire(layout)
    try:
        _refuse_lost_catalog(layout)
        catalog = Catalog.open(layout.catalog)
    except BaseException:
        lock.release()
        raise
    return layout, catalog, lock


def _refuse_lost_catalog(layout: HomeLayout) -> None:
    """A writer would start a fresh catalog and recovery would then delete every vector and point file as
    orphaned: refuse when the catalog is missing or empty but files are there.

    An empty main file is a blank database even in WAL mode: SQLite writes page 1 to the main file when it
    switches a new database to WAL, before any commit goes to the ``-wal`` file.
    """
    if layout.catalog.exists() and layout.catalog.stat().st_size > 0:
        return
    leftovers = [f for folder in (layout.vectors, layout.points) for f in folder.iterdir()]
    if leftovers:
        raise CatalogError(
            layout.catalog,
            f"{'empty' if layout.catalog.exists() else 'missing'} catalog, yet {len(leftovers)} vector/point "
            f"file(s) remain (e.g. {leftovers[0]}): it was truncated or deleted. Nothing was changed; restore "
            "it, or move the home aside and re-index",
        )
