"""The catalog: SQLAlchemy 2 models, connection setup and numbered migrations, on SQLite or PostgreSQL.

By default the catalog lives at ``<home>/catalog.sqlite``; a home created with a PostgreSQL URL
(storage/homeconfig.py) keeps it in that database instead. Every SQLite connection runs in WAL mode with
``foreign_keys=ON`` and ``synchronous=FULL`` (see :func:`_on_connect`). PostgreSQL connections run at
REPEATABLE READ, so one read transaction sees one commit, as SQLite's WAL snapshots do (segments,
tombstones and a filter's ids must agree, storage/segments.py). The schema is created and upgraded
only by :data:`MIGRATIONS`, never by ``metadata.create_all``: a migration is frozen once released, while
the models below describe the newest schema (a test checks that both agree). The migrations' SQL is
written for SQLite; :func:`_for_postgresql` translates each statement's types (and the two statements
whose SQL differs) for PostgreSQL.

Timestamps are stored as naive UTC and returned as aware UTC datetimes.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable, Iterator

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    bindparam,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from scenegrep.storage.errors import CatalogError, CatalogVersionError, StoreError
from scenegrep.storage.homeconfig import parse_catalog_url, safe_url
from scenegrep.storage.records import as_utc  # noqa: F401 (re-exported: its old home)

__all__ = [
    "Base",
    "EncoderRow",
    "ScanRow",
    "InstanceRow",
    "SegmentRow",
    "TombstoneRow",
    "StateRow",
    "VectorStoreRow",
    "VectorDeleteRow",
    "Catalog",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "utcnow",
    "catalog_error",
]

log = logging.getLogger(__name__)

STATUS_PENDING = "pending"
STATUS_INDEXED = "indexed"


def utcnow() -> datetime:
    """Current time as naive UTC (the form stored in the catalog)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


# -- models (the newest schema) ----------------------------------------------------------------------

#: every integer column: 64-bit like SQLite's INTEGER. PostgreSQL's INTEGER is 32-bit, and psycopg binds
#: parameters with the column's type, so a CRC-32 or a byte size above 2**31 needs BIGINT there.
INT = Integer().with_variant(BigInteger(), "postgresql")


class Base(DeclarativeBase):
    pass


class EncoderRow(Base):
    """The image/text encoder whose vectors the catalog holds (one per catalog)."""

    __tablename__ = "encoders"

    id: Mapped[int] = mapped_column(INT, primary_key=True)
    name: Mapped[str] = mapped_column(String, nullable=False)
    pretrained: Mapped[str | None] = mapped_column(String, nullable=True)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String, nullable=True)
    dim: Mapped[int] = mapped_column(INT, nullable=False)
    random_weights: Mapped[bool] = mapped_column(Boolean, nullable=False)
    details_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class ScanRow(Base):
    """One scan. ``status`` is 'pending' until the commit point of the write that adds it."""

    __tablename__ = "scans"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'indexed')", name="ck_scans_status"),
        # unique among indexed scans only, so a replacement can be written as pending beside the old one
        Index("ix_scans_name_indexed", "name", unique=True, sqlite_where=text("status = 'indexed'")),
        {"sqlite_autoincrement": True},  # scan ids name point files; never reuse them
    )

    id: Mapped[int] = mapped_column(INT, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, nullable=False)
    source_path: Mapped[str] = mapped_column(String, nullable=False)
    content_hash: Mapped[str] = mapped_column(String, nullable=False)
    layout: Mapped[str] = mapped_column(String, nullable=False)
    point_count: Mapped[int] = mapped_column(INT, nullable=False)
    frame_count: Mapped[int] = mapped_column(INT, nullable=False)
    tags_json: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    info_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    status: Mapped[str] = mapped_column(String, nullable=False, default=STATUS_PENDING)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    encoder_id: Mapped[int] = mapped_column(ForeignKey("encoders.id"), nullable=False)
    # the point file's size and CRC-32 (see storage/checksums.py); NULL for files written before schema 3
    points_size: Mapped[int | None] = mapped_column(INT, nullable=True)
    points_crc32: Mapped[int | None] = mapped_column(INT, nullable=True)


class InstanceRow(Base):
    """One object instance of a scan: its point-index mask, box, and (if searchable) its vector."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_scan_mask", "scan_id", "mask_index", unique=True),
        # covers "searchable ids of these scans" (the rowid rides along): a filter never reads the rows,
        # whose blobs come before `searchable` and spill into overflow pages
        Index("ix_instances_scan_searchable", "scan_id", "searchable"),
        # covers every filter (storage/filters.py) and the id -> segment routing without reading the rows
        Index("ix_instances_filter", "scan_id", "searchable", "segment_id", "point_count", "extent"),
        Index("ix_instances_segment", "segment_id"),
        {"sqlite_autoincrement": True},  # instance ids are FAISS ids and may be cached by clients
    )

    id: Mapped[int] = mapped_column(INT, primary_key=True, autoincrement=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    mask_index: Mapped[int] = mapped_column(INT, nullable=False)
    point_count: Mapped[int] = mapped_column(INT, nullable=False)
    min_x: Mapped[float] = mapped_column(Float, nullable=False)
    min_y: Mapped[float] = mapped_column(Float, nullable=False)
    min_z: Mapped[float] = mapped_column(Float, nullable=False)
    max_x: Mapped[float] = mapped_column(Float, nullable=False)
    max_y: Mapped[float] = mapped_column(Float, nullable=False)
    max_z: Mapped[float] = mapped_column(Float, nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    point_indices: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # scenegrep.storage.maskcodec blob
    vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # float16 little endian
    searchable: Mapped[bool] = mapped_column(Boolean, nullable=False)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # JPEG
    best_frame: Mapped[int | None] = mapped_column(INT, nullable=True)
    # the live segment holding this instance's vector (NULL: unsearchable, or not committed yet)
    segment_id: Mapped[int | None] = mapped_column(ForeignKey("segments.id"), nullable=True)
    extent: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)  # the bbox's largest side


class SegmentRow(Base):
    """One live, immutable FAISS segment file (storage/segfiles.py). A row exists only while it is live."""

    __tablename__ = "segments"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(INT, primary_key=True, autoincrement=True)
    filename: Mapped[str] = mapped_column(String, nullable=False, unique=True)  # relative to <home>/vectors
    factory: Mapped[str] = mapped_column(String, nullable=False)  # FAISS factory string, e.g. "IVF1024,SQ8"
    ntotal: Mapped[int] = mapped_column(INT, nullable=False)  # vectors in the file (tombstoned included)
    min_id: Mapped[int] = mapped_column(INT, nullable=False)
    max_id: Mapped[int] = mapped_column(INT, nullable=False)
    size_bytes: Mapped[int] = mapped_column(INT, nullable=False)
    crc32: Mapped[int] = mapped_column(INT, nullable=False)  # of every byte
    edge_crc32: Mapped[int] = mapped_column(INT, nullable=False)  # of the first and last 64 KiB
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class TombstoneRow(Base):
    """A vector still in a segment file whose instance was removed or replaced; search skips it."""

    __tablename__ = "tombstones"
    __table_args__ = (Index("ix_tombstones_segment", "segment_id"),)

    id: Mapped[int] = mapped_column(INT, primary_key=True)  # the removed instance id (never reused)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"), nullable=False)


class StateRow(Base):
    """Store-wide counters; ``commit`` grows by one at every commit point (readers poll it to refresh)."""

    __tablename__ = "store_state"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[int] = mapped_column(INT, nullable=False)


class VectorStoreRow(Base):
    """Where the home's vectors live (storage/backends.py): ``uri`` (absent: the embedded FAISS segments),
    ``collection`` (the Milvus collection), and a migration's target while one is in progress."""

    __tablename__ = "vector_store"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class VectorDeleteRow(Base):
    """An instance id whose vector a commit removed but the external vector store (Milvus) may still hold;
    the row goes once the store's delete succeeded (storage/milvus.py)."""

    __tablename__ = "vector_deletes"

    id: Mapped[int] = mapped_column(INT, primary_key=True)


# -- migrations --------------------------------------------------------------------------------------

_V1_DDL = [
    """CREATE TABLE encoders (
        id INTEGER NOT NULL PRIMARY KEY,
        name VARCHAR NOT NULL,
        pretrained VARCHAR,
        checkpoint_sha256 VARCHAR,
        dim INTEGER NOT NULL,
        random_weights BOOLEAN NOT NULL,
        details_json TEXT NOT NULL,
        created_at DATETIME NOT NULL
    )""",
    """CREATE TABLE scans (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        name VARCHAR NOT NULL,
        source_path VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL,
        layout VARCHAR NOT NULL,
        point_count INTEGER NOT NULL,
        frame_count INTEGER NOT NULL,
        tags_json TEXT NOT NULL,
        info_json TEXT NOT NULL,
        status VARCHAR NOT NULL,
        indexed_at DATETIME,
        encoder_id INTEGER NOT NULL REFERENCES encoders (id),
        CONSTRAINT ck_scans_status CHECK (status IN ('pending', 'indexed'))
    )""",
    "CREATE UNIQUE INDEX ix_scans_name_indexed ON scans (name) WHERE status = 'indexed'",
    """CREATE TABLE instances (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        scan_id INTEGER NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
        mask_index INTEGER NOT NULL,
        point_count INTEGER NOT NULL,
        min_x FLOAT NOT NULL, min_y FLOAT NOT NULL, min_z FLOAT NOT NULL,
        max_x FLOAT NOT NULL, max_y FLOAT NOT NULL, max_z FLOAT NOT NULL,
        score FLOAT NOT NULL,
        point_indices BLOB NOT NULL,
        vector BLOB,
        searchable BOOLEAN NOT NULL,
        thumbnail BLOB,
        best_frame INTEGER
    )""",
    "CREATE UNIQUE INDEX ix_instances_scan_mask ON instances (scan_id, mask_index)",
    """CREATE TABLE generations (
        id INTEGER NOT NULL PRIMARY KEY,
        created_at DATETIME NOT NULL,
        filename VARCHAR NOT NULL,
        ntotal INTEGER NOT NULL,
        is_current BOOLEAN NOT NULL
    )""",
    "CREATE UNIQUE INDEX ix_generations_current ON generations (is_current) WHERE is_current = 1",
]


# -- the migrations' SQLite SQL in PostgreSQL ---------------------------------------------------------

# Type names, in order. INTEGER becomes BIGINT: SQLite's INTEGER is 64-bit and the catalog stores CRC-32s
# (up to 2**32 - 1) and byte sizes that overflow PostgreSQL's 32-bit one. An INTEGER PRIMARY KEY is a
# rowid in SQLite (assigned when left out, and with AUTOINCREMENT never reused): an identity column.
_PG_TYPES = [
    (
        re.compile(r"\bINTEGER NOT NULL PRIMARY KEY(?: AUTOINCREMENT)?"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bDATETIME\b"), "TIMESTAMP"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bFLOAT\b"), "DOUBLE PRECISION"),
]

# Statements whose SQL differs beyond type names: a boolean is not an integer in PostgreSQL, and its
# multi-argument max() is GREATEST.
_PG_STATEMENTS = {
    "CREATE UNIQUE INDEX ix_generations_current ON generations (is_current) WHERE is_current = 1":
        "CREATE UNIQUE INDEX ix_generations_current ON generations (is_current) WHERE is_current",
    "UPDATE instances SET extent = max(max_x - min_x, max_y - min_y, max_z - min_z)":
        "UPDATE instances SET extent = GREATEST(max_x - min_x, max_y - min_y, max_z - min_z)",
}


def _for_postgresql(stmt: str) -> str:
    """One migration statement (SQLite SQL) as PostgreSQL runs it."""
    stmt = _PG_STATEMENTS.get(stmt, stmt)
    for pattern, replacement in _PG_TYPES:
        stmt = pattern.sub(replacement, stmt)
    return stmt


def _run(conn: Connection, stmt: str) -> None:
    """Run one migration statement in the connection's dialect."""
    conn.exec_driver_sql(_for_postgresql(stmt) if conn.dialect.name == "postgresql" else stmt)


def _migrate_v1(conn: Connection) -> None:
    for stmt in _V1_DDL:
        _run(conn, stmt)


def _migrate_v2(conn: Connection) -> None:
    _run(conn, "CREATE INDEX ix_instances_scan_searchable ON instances (scan_id, searchable)")


_V3_DDL = [
    """CREATE TABLE segments (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        filename VARCHAR NOT NULL UNIQUE,
        factory VARCHAR NOT NULL,
        ntotal INTEGER NOT NULL,
        min_id INTEGER NOT NULL,
        max_id INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        crc32 INTEGER NOT NULL,
        edge_crc32 INTEGER NOT NULL,
        created_at DATETIME NOT NULL
    )""",
    """CREATE TABLE tombstones (
        id INTEGER NOT NULL PRIMARY KEY,
        segment_id INTEGER NOT NULL REFERENCES segments (id) ON DELETE CASCADE
    )""",
    "CREATE INDEX ix_tombstones_segment ON tombstones (segment_id)",
    "CREATE TABLE store_state (key VARCHAR NOT NULL PRIMARY KEY, value INTEGER NOT NULL)",
    # the commit counter continues the generation numbers, so `stats` keeps counting up
    "INSERT INTO store_state (key, value) VALUES ('commit', (SELECT COALESCE(MAX(id), 0) FROM generations))",
    "ALTER TABLE instances ADD COLUMN segment_id INTEGER REFERENCES segments (id)",
    "ALTER TABLE instances ADD COLUMN extent FLOAT NOT NULL DEFAULT 0",
    "UPDATE instances SET extent = max(max_x - min_x, max_y - min_y, max_z - min_z)",
    "CREATE INDEX ix_instances_filter ON instances (scan_id, searchable, segment_id, point_count, extent)",
    "CREATE INDEX ix_instances_segment ON instances (segment_id)",
    "ALTER TABLE scans ADD COLUMN points_size INTEGER",
    "ALTER TABLE scans ADD COLUMN points_crc32 INTEGER",
    # the old generation file becomes a stray: the next writer's recovery sees searchable instances
    # without a segment and writes segments for them from the catalog's float16 vectors
    "DROP TABLE generations",
]


def _migrate_v3(conn: Connection) -> None:
    for stmt in _V3_DDL:
        _run(conn, stmt)


_V4_DDL = [
    "CREATE TABLE vector_store (key VARCHAR NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE vector_deletes (id INTEGER NOT NULL PRIMARY KEY)",
]


def _migrate_v4(conn: Connection) -> None:
    for stmt in _V4_DDL:
        _run(conn, stmt)


Migration = tuple[int, str, Callable[[Connection], None]]

#: Ordered (version, description, apply(connection)) steps; each runs in its own transaction together
#: with the ``schema_version`` row that records it. Append new steps; never edit released ones.
MIGRATIONS: list[Migration] = [
    (1, "initial schema", _migrate_v1),
    (2, "covering index of searchable instances by scan", _migrate_v2),
    (3, "segments, tombstones and the commit counter replace generations; extent; point file checksums", _migrate_v3),
    (4, "the vector store's URI (FAISS segments or Milvus) and Milvus deletes not yet applied", _migrate_v4),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_SCHEMA_VERSION_DDL = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at DATETIME NOT NULL
)"""


# -- connection --------------------------------------------------------------------------------------


def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 (DBAPI objects)
    # Let SQLAlchemy's "begin" hook emit BEGIN itself: the sqlite3 module otherwise starts transactions
    # only before DML, so DDL in migrations would run outside any transaction.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA foreign_keys=ON")  # needed for ON DELETE CASCADE; per connection in SQLite
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the single writer
        # FULL: the commit point must survive power loss, since old generation files are deleted after it
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=10000")  # brief waits for a reader's checkpoint, not forever
    finally:
        cur.close()


def _on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


# SQLite result codes meaning the file itself is bad (not a busy or full disk): say so
_DAMAGED = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}


def catalog_error(where: Path | str, exc: DBAPIError) -> CatalogError:
    """A one-line :class:`CatalogError` naming ``where`` (the SQLite file, or the URL with its password
    hidden) for a driver error (never the SQL statement)."""
    orig = exc.orig if exc.orig is not None else exc
    name = getattr(orig, "sqlite_errorname", None)
    problem = str(orig).strip() or type(orig).__name__
    if name in _DAMAGED:
        problem = f"{problem}; the catalog is damaged or not a scenegrep catalog (move it away and re-index)"
    return CatalogError(where, problem, name)


def _target_url(target: Path | str | URL) -> URL:
    """A catalog given as an SQLite file path or as a URL (a string with ``://``, or a URL object)."""
    if isinstance(target, URL) or (isinstance(target, str) and "://" in target):
        return parse_catalog_url(target)
    return URL.create("sqlite", database=str(Path(target)))


#: seconds a PostgreSQL connection attempt may take before it is an error (unless the URL sets it)
PG_CONNECT_TIMEOUT_S = 10


class Catalog:
    """Engine + sessions + migrations for one catalog database (an SQLite file or a PostgreSQL database).

    Use :meth:`open` (or :meth:`connect`, then :meth:`prepare`); :meth:`transaction` yields an ORM session
    inside one database transaction. Driver errors (a damaged file, a full disk, a lock held too long, a
    refused connection or login) come out as :class:`CatalogError` naming the file or the URL.

    Attributes:
        url: the SQLAlchemy URL (may hold a password: show :attr:`where` instead).
        path: the SQLite file, or None for a server database.
        where: what messages name: the SQLite file, or the URL with its password hidden.
        dialect: ``"sqlite"`` or ``"postgresql"``.
    """

    def __init__(self, url: URL, engine: Engine):
        self.url = url
        self.dialect = url.get_backend_name()
        self.path: Path | None = Path(url.database) if self.dialect == "sqlite" and url.database else None
        self.where: Path | str = self.path if self.path is not None else safe_url(url)
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def connect(cls, target: Path | str | URL, *, migrate: bool = True) -> Catalog:
        """The catalog at ``target`` (an SQLite path, or a URL), with nothing read or written yet.

        Raises:
            StoreError: not ``migrate`` and the SQLite file does not exist.
            CatalogError: not ``migrate`` and the SQLite file is empty; the URL's driver is not installed.
            HomeConfigError: ``target`` is not a supported URL.
        """
        url = _target_url(target)
        if url.get_backend_name() == "sqlite":
            path = Path(url.database or "")
            if not migrate and not path.exists():
                raise StoreError(f"no catalog at {path}")
            if not migrate and path.stat().st_size == 0:
                # checked before connecting: connecting would turn the empty file into a WAL database
                raise CatalogError(path, "empty file, not an initialised scenegrep catalog")
            engine = create_engine(url)
            event.listen(engine, "connect", _on_connect)
            event.listen(engine, "begin", _on_begin)
            return cls(url, engine)
        connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        try:
            engine = create_engine(
                url, isolation_level="REPEATABLE READ", pool_pre_ping=True, connect_args=connect_args
            )
        except (ImportError, NoSuchModuleError) as exc:
            raise CatalogError(
                safe_url(url), f"{exc}; install the PostgreSQL driver with pip install 'scenegrep[postgres]'"
            ) from None
        return cls(url, engine)

    @classmethod
    def open(cls, target: Path | str | URL, *, migrate: bool = True) -> Catalog:
        """Open (and with ``migrate``, create or upgrade) the catalog at ``target`` (an SQLite path or a URL).

        Raises:
            CatalogVersionError: the catalog is newer than this code, or older and ``migrate`` is False.
            CatalogError: the file is damaged, not an SQLite database, or cannot be opened; the database
                cannot be reached or refuses the login.
            StoreError: ``migrate`` is False and the file does not exist.
        """
        catalog = cls.connect(target, migrate=migrate)
        catalog.prepare(migrate)
        return catalog

    def prepare(self, migrate: bool = True) -> None:
        """Check the schema version and (with ``migrate``) apply pending migrations; disposes the engine
        when it raises."""
        try:
            self._check_and_migrate(migrate)
        except DBAPIError as exc:
            self.engine.dispose()
            raise catalog_error(self.where, exc) from exc
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One database transaction: committed on normal exit, rolled back on an exception."""
        try:
            with self._sessions() as session, session.begin():
                yield session
        except DBAPIError as exc:
            raise catalog_error(self.where, exc) from exc

    def guard_commits(self, check: Callable[[Session], None]) -> None:
        """Run ``check(session)`` inside every transaction of this catalog just before it commits; an
        exception it raises rolls the transaction back (the PostgreSQL writer lock's fence, storage/home.py)."""
        event.listen(self._sessions, "before_commit", check)

    def schema_version(self) -> int:
        """Highest applied migration (0 for an empty file or database)."""
        try:
            with self.engine.connect() as conn:
                return self._version(conn)
        except DBAPIError as exc:
            raise catalog_error(self.where, exc) from exc

    def database_size(self) -> int:
        """Bytes the catalog database takes on its server (PostgreSQL only)."""
        try:
            with self.engine.connect() as conn:
                return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())
        except DBAPIError as exc:
            raise catalog_error(self.where, exc) from exc

    @staticmethod
    def _version(conn: Connection) -> int:
        if not inspect(conn).has_table("schema_version"):
            return 0
        return int(conn.exec_driver_sql("SELECT COALESCE(MAX(version), 0) FROM schema_version").scalar_one())

    def _check_and_migrate(self, migrate: bool) -> None:
        with self.engine.connect() as conn:
            current = self._version(conn)
        if current > SCHEMA_VERSION:
            raise CatalogVersionError(
                f"{self.where} has schema version {current} but this scenegrep knows up to {SCHEMA_VERSION}; "
                "upgrade scenegrep"
            )
        pending = [m for m in MIGRATIONS if m[0] > current]
        if current == 0 and not migrate:
            raise CatalogError(self.where, "holds no scenegrep schema, not an initialised scenegrep catalog")
        if pending and not migrate:
            raise CatalogVersionError(
                f"{self.where} has schema version {current} (current is {SCHEMA_VERSION}); "
                "open it once for writing to upgrade"
            )
        for version, description, apply in pending:
            with self.engine.begin() as conn:
                _run(conn, _SCHEMA_VERSION_DDL)
                apply(conn)
                conn.execute(_RECORD_VERSION, {"version": version, "description": description, "applied_at": utcnow()})
            log.info("catalog %s: applied migration %d (%s)", self.where, version, description)


# a DateTime parameter: SQLAlchemy writes SQLite's text form itself, PostgreSQL gets a timestamp
_RECORD_VERSION = text(
    "INSERT INTO schema_version (version, description, applied_at) VALUES (:version, :description, :applied_at)"
).bindparams(bindparam("applied_at", type_=DateTime()))
