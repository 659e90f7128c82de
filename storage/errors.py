"""Typed errors of the storage layer.

Every message is one line, so the CLI can show ``str(err)`` as is. Input validation problems that are
plain programming errors (wrong shape, wrong dtype) stay ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations

from pathlib import Path

from scenegrep.errors import ScenegrepError

__all__ = [
    "StoreError",
    "EncoderMismatchError",
    "NotFoundError",
    "ScanExistsError",
    "CatalogVersionError",
    "VectorIndexError",
    "StoreLockedError",
    "CatalogError",
    "FileAccessError",
]


class StoreError(ScenegrepError):
    """Base class of every storage error."""


class EncoderMismatchError(StoreError):
    """The catalog was indexed with another encoder than the one requested.

    Attributes:
        catalog: one-line description of the catalog's encoder.
        requested: one-line description of the requested encoder.
    """

    def __init__(self, catalog: str, requested: str):
        self.catalog = catalog
        self.requested = requested
        super().__init__(
            f"this home was indexed with {catalog} but {requested} was requested; use another --home or the same model"
        )


class NotFoundError(StoreError, LookupError):
    """An unknown scan name or instance id."""


class ScanExistsError(StoreError):
    """A scan with that name is already indexed and replacing it was not asked for."""


class CatalogVersionError(StoreError):
    """The catalog's schema is newer than this code knows (or cannot be upgraded read-only)."""


class VectorIndexError(StoreError):
    """A FAISS generation file is unreadable or does not fit the catalog."""


class StoreLockedError(StoreError):
    """Another process holds the home's writer lock."""


class CatalogError(StoreError):
    """The catalog cannot be used: damaged, not a catalog, or not accessible (a file, or a database server
    that cannot be reached or refuses the login).

    Attributes:
        path: the catalog file, or the catalog database's URL (a string, its password hidden).
        sqlite_error: SQLite's error name (e.g. ``SQLITE_NOTADB``, ``SQLITE_CORRUPT``), or None if unknown.
    """

    def __init__(self, path: Path | str, problem: str, sqlite_error: str | None = None):
        # a URL stays a string: Path() would fold its "//"
        self.path: Path | str = path if isinstance(path, str) and "://" in path else Path(path)
        self.sqlite_error = sqlite_error
        super().__init__(problem, self.path)


class FileAccessError(StoreError):
    """The operating system refused a file operation on the home (permissions, a full disk, a read-only
    file system, a file that vanished). Attributes: path (None when the OS named none), errno."""

    def __init__(self, exc: OSError, home: Path | str | None = None):
        self.path = exc.filename if exc.filename is not None else home
        self.errno = exc.errno
        problem = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
