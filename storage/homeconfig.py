"""``<home>/home.json``: which catalog database a home uses.

A home is two things: a folder (segment files, ``points/*.npz``) and a catalog database. By default the
catalog is the SQLite file ``<home>/catalog.sqlite`` and no ``home.json`` is written, so homes made before
this file existed keep working unchanged. A home created with another catalog URL (``postgresql+psycopg://
...`` for a catalog shared by many indexers and servers) records that URL here when it is created, and
every later open, writer or reader, on any machine that mounts the folder, reads it from here::

    {"format": 1, "catalog_url": "postgresql+psycopg://scenegrep@db.example/scenegrep"}

The file is written once, atomically (:func:`~scenegrep.storage.fileio.atomic_write`), and never changed:
asking to create a home with another URL than the one recorded is a :class:`CatalogUrlMismatchError`.
It holds the URL exactly as given, so a password in it is readable by everyone who can read the folder;
keep passwords out of the URL (``~/.pgpass`` or ``PGPASSWORD``, which libpq reads). Messages and logs
only ever show a URL through :func:`safe_url` (password hidden).

Imports SQLAlchemy's URL parser and the standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from scenegrep.storage.errors import StoreError
from scenegrep.storage.fileio import atomic_write

__all__ = [
    "HOME_CONFIG_FILE",
    "HomeConfig",
    "HomeConfigError",
    "CatalogUrlMismatchError",
    "parse_catalog_url",
    "safe_url",
    "read_config",
    "resolve_catalog_url",
    "record_catalog_url",
]

HOME_CONFIG_FILE = "home.json"
FORMAT = 1
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


class HomeConfigError(StoreError):
    """``home.json`` cannot be read or does not hold a usable configuration, or a catalog URL is not usable
    (subject: the file or the URL, password hidden)."""


class CatalogUrlMismatchError(HomeConfigError):
    """A catalog URL was asked for a home that already uses another catalog."""


@dataclass(frozen=True)
class HomeConfig:
    """What ``home.json`` records.

    Attributes:
        catalog_url: the catalog's SQLAlchemy URL as given when the home was created (it may hold a
            password: show it only through :func:`safe_url`).
    """

    catalog_url: str


def parse_catalog_url(url: str | URL) -> URL:
    """``url`` parsed, with ``postgresql://`` meaning psycopg 3 (the driver the ``postgres`` extra installs).

    Raises:
        HomeConfigError: not a URL, or a database other than SQLite and PostgreSQL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        # never echo a string that failed to parse: it may be a URL with a password in it
        raise HomeConfigError(
            "not a database URL (expected e.g. postgresql+psycopg://user@host/dbname or "
            "sqlite:////path/catalog.sqlite)",
            "--catalog-url",
        ) from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise HomeConfigError(
            f"unsupported catalog database {parsed.get_backend_name()!r} (use sqlite or postgresql)", safe_url(parsed)
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str | URL) -> str:
    """``url`` rendered with its password replaced by ``***`` (for messages and logs)."""
    return make_url(url).render_as_string(hide_password=True)


def default_catalog_url(root: Path) -> URL:
    """The SQLite catalog inside the home folder (used when no ``home.json`` exists)."""
    return URL.create("sqlite", database=str(root / "catalog.sqlite"))


def _identity(url: URL) -> URL:
    # the same catalog whether or not the password was spelled out (libpq may read it from ~/.pgpass)
    # (URL.set(password=None) would keep it: there None means "unchanged")
    return URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)


def read_config(root: Path) -> HomeConfig | None:
    """The home's recorded configuration, or None when it has no ``home.json`` (the SQLite default).

    Raises:
        HomeConfigError: the file is unreadable, not JSON, of a newer format, or its URL is not usable.
    """
    path = root / HOME_CONFIG_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HomeConfigError(f"cannot be read ({exc.strerror or exc})", path) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise HomeConfigError(f"not valid JSON ({exc})", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("catalog_url"), str):
        raise HomeConfigError('expected an object with a "catalog_url" string', path)
    if data.get("format") != FORMAT:
        raise HomeConfigError(f"format {data.get('format')!r} is not {FORMAT}; upgrade scenegrep", path)
    parse_catalog_url(data["catalog_url"])  # a hand-edited file fails here, naming the URL
    return HomeConfig(data["catalog_url"])


def _write_config(root: Path, config: HomeConfig) -> None:
    body = json.dumps({"format": FORMAT, "catalog_url": config.catalog_url}, indent=1) + "\n"
    atomic_write(root / HOME_CONFIG_FILE, lambda f: f.write(body.encode("utf-8")))


def resolve_catalog_url(root: Path, requested: str | None, *, create: bool) -> tuple[URL, bool]:
    """The catalog URL of the home at ``root``, and whether the caller must record it (:func:`record_catalog_url`)
    once that catalog is open: True only when this creates a home with a non-default catalog.

    Args:
        root: the home folder (it need not exist).
        requested: the URL asked for (None: whatever the home records, else the SQLite default).
        create: the caller is the writer and may create the home: an unrecorded non-default ``requested``
            is accepted if the home holds no catalog yet.

    Raises:
        CatalogUrlMismatchError: ``requested`` is not the catalog the home already uses, or (reader) the
            home records no such catalog.
        HomeConfigError: ``home.json`` or ``requested`` cannot be used.
    """
    config = read_config(root)
    recorded = parse_catalog_url(config.catalog_url) if config is not None else default_catalog_url(root)
    if requested is None:
        return recorded, False
    wanted = parse_catalog_url(requested)
    if _identity(wanted) == _identity(recorded):
        return recorded, False
    # not what the home records: only a new home may take it
    in_use = config is not None or (root / "catalog.sqlite").exists()
    if in_use or not create:
        raise CatalogUrlMismatchError(
            f"this home's catalog is {safe_url(recorded)}, not {safe_url(wanted)} "
            "(the catalog is chosen once, when the home is created; leave the option out or use another --home)",
            root,
        )
    return wanted, True


def record_catalog_url(root: Path, url: str) -> None:
    """Write ``home.json`` naming ``url`` (as given: never re-rendered, which could drop the password).
    Called once, by the writer that created the home, after the catalog opened."""
    _write_config(root, HomeConfig(url))
