"""The SQLite catalog: SQLAlchemy 2 models, connection setup and numbered migrations.

The catalog lives at ``<home>/catalog.sqlite``. Every connection runs in WAL mode with
``foreign_keys=ON`` and ``synchronous=FULL`` (see :func:`_on_connect`). The schema is created and upgraded
only by :data:`MIGRATIONS`, never by ``metadata.create_all``: a migration is frozen once released, while
the models below describe the newest schema (a test checks that both agree).

Timestamps are stored as naive UTC and returned as aware UTC datetimes.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable, Iterator

from sqlalchemy import (
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
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from scenegrep.storage.errors import CatalogVersionError, StoreError

__all__ = [
    "Base",
    "EncoderRow",
    "ScanRow",
    "InstanceRow",
    "GenerationRow",
    "Catalog",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "utcnow",
]

log = logging.getLogger(__name__)

STATUS_PENDING = "pending"
STATUS_INDEXED = "indexed"


def utcnow() -> datetime:
    """Current time as naive UTC (the form stored in the catalog)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored naive-UTC timestamp as an aware UTC datetime."""
    return None if value is None else value.replace(tzinfo=timezone.utc)


# -- models (the newest schema) ----------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class EncoderRow(Base):
    """The image/text encoder whose vectors the catalog holds (one per catalog)."""

    __tablename__ = "encoders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, nullable=False)
    pretrained: Mapped[str | None] = mapped_column(String, nullable=True)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String, nullable=True)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
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

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, nullable=False)
    source_path: Mapped[str] = mapped_column(String, nullable=False)
    content_hash: Mapped[str] = mapped_column(String, nullable=False)
    layout: Mapped[str] = mapped_column(String, nullable=False)
    point_count: Mapped[int] = mapped_column(Integer, nullable=False)
    frame_count: Mapped[int] = mapped_column(Integer, nullable=False)
    tags_json: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    info_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    status: Mapped[str] = mapped_column(String, nullable=False, default=STATUS_PENDING)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    encoder_id: Mapped[int] = mapped_column(ForeignKey("encoders.id"), nullable=False)


class InstanceRow(Base):
    """One object instance of a scan: its point-index mask, box, and (if searchable) its vector."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_scan_mask", "scan_id", "mask_index", unique=True),
        {"sqlite_autoincrement": True},  # instance ids are FAISS ids and may be cached by clients
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    mask_index: Mapped[int] = mapped_column(Integer, nullable=False)
    point_count: Mapped[int] = mapped_column(Integer, nullable=False)
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
    best_frame: Mapped[int | None] = mapped_column(Integer, nullable=True)


class GenerationRow(Base):
    """One written FAISS index file. Exactly one row is current; older rows are history."""

    __tablename__ = "generations"
    __table_args__ = (Index("ix_generations_current", "is_current", unique=True, sqlite_where=text("is_current = 1")),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the generation number N
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    filename: Mapped[str] = mapped_column(String, nullable=False)  # relative to <home>/vectors
    ntotal: Mapped[int] = mapped_column(Integer, nullable=False)
    is_current: Mapped[bool] = mapped_column(Boolean, nullable=False)


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


def _migrate_v1(conn: Connection) -> None:
    for stmt in _V1_DDL:
        conn.exec_driver_sql(stmt)


Migration = tuple[int, str, Callable[[Connection], None]]

#: Ordered (version, description, apply(connection)) steps; each runs in its own transaction together
#: with the ``schema_version`` row that records it. Append new steps; never edit released ones.
MIGRATIONS: list[Migration] = [
    (1, "initial schema", _migrate_v1),
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


class Catalog:
    """Engine + sessions + migrations for one ``catalog.sqlite``.

    Use :meth:`open`; :meth:`transaction` yields an ORM session inside one SQLite transaction.
    """

    def __init__(self, path: Path, engine: Engine):
        self.path = path
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, path: Path | str, *, migrate: bool = True) -> Catalog:
        """Open (and with ``migrate``, create or upgrade) the catalog at ``path``.

        Raises:
            CatalogVersionError: the catalog is newer than this code, or older and ``migrate`` is False.
            StoreError: ``migrate`` is False and the file does not exist.
        """
        path = Path(path)
        if not migrate and not path.exists():
            raise StoreError(f"no catalog at {path}")
        engine = create_engine(f"sqlite:///{path}")
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)
        catalog = cls(path, engine)
        try:
            catalog._check_and_migrate(migrate)
        except BaseException:
            engine.dispose()
            raise
        return catalog

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One SQLite transaction: committed on normal exit, rolled back on an exception."""
        with self._sessions() as session, session.begin():
            yield session

    def schema_version(self) -> int:
        """Highest applied migration (0 for an empty file)."""
        with self.engine.connect() as conn:
            return self._version(conn)

    @staticmethod
    def _version(conn: Connection) -> int:
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).first()
        if exists is None:
            return 0
        return int(conn.exec_driver_sql("SELECT COALESCE(MAX(version), 0) FROM schema_version").scalar_one())

    def _check_and_migrate(self, migrate: bool) -> None:
        with self.engine.connect() as conn:
            current = self._version(conn)
        if current > SCHEMA_VERSION:
            raise CatalogVersionError(
                f"{self.path} has schema version {current} but this scenegrep knows up to {SCHEMA_VERSION}; "
                "upgrade scenegrep"
            )
        pending = [m for m in MIGRATIONS if m[0] > current]
        if pending and not migrate:
            raise CatalogVersionError(
                f"{self.path} has schema version {current} (current is {SCHEMA_VERSION}); "
                "open it once for writing to upgrade"
            )
        for version, description, apply in pending:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(_SCHEMA_VERSION_DDL)
                apply(conn)
                conn.exec_driver_sql(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (version, description, utcnow().isoformat(sep=" ")),
                )
            log.info("catalog %s: applied migration %d (%s)", self.path, version, description)
