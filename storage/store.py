"""Store = catalog + FAISS generations + per-scan point files, with one commit point per write.

Layout of a home folder::

    <home>/catalog.sqlite        scans, instances (masks, float16 vectors, thumbnails), generations
    <home>/vectors/gen-<N>.faiss the current FAISS generation (VectorIndex file)
    <home>/points/<scan_id>.npz  xyz (N,3) float32 and rgb (N,3) uint8 of each scan
    <home>/.lock                 writer lock (fcntl.flock)

A write (``add_scans`` / ``remove_scan``) follows DESIGN.md "Storage: one commit point":

1. one SQLite transaction writes the new scans as ``pending`` with their instances; point files are
   written atomically;
2. the next FAISS generation is built on a copy of the in-memory index and written atomically to
   ``vectors/gen-<N+1>.faiss``;
3. one SQLite transaction makes generation N+1 current, marks the new scans ``indexed`` and deletes the
   replaced / removed scans. That commit is the commit point; afterwards the old generation file and
   the dropped point files are deleted.

Anything that fails before the commit point is undone before the error propagates, so the previous
state stays fully usable; a crash is undone by the recovery that runs whenever a writer opens the home.

The FAISS index holds the float16-rounded vectors (as float32), exactly what the catalog stores, so a
rebuild from the catalog reproduces it bit for bit.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import Row, case, delete, func, select, update
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import (
    STATUS_INDEXED,
    STATUS_PENDING,
    Catalog,
    EncoderRow,
    GenerationRow,
    InstanceRow,
    ScanRow,
    as_utc,
    utcnow,
)
from scenegrep.storage.errors import (
    EncoderMismatchError,
    NotFoundError,
    ScanExistsError,
    StoreError,
    StoreLockedError,
    VectorIndexError,
)
from scenegrep.storage.maskcodec import decode_indices, encode_indices
from scenegrep.storage.vectors import VectorIndex, atomic_write

__all__ = ["Store", "EncoderIdentity", "ScanEntry", "InstanceEntry", "ScanInfo", "InstanceInfo"]

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
LOCK_FILE = ".lock"
_UNIT_TOL = 1e-2  # accepted |norm - 1| of an instance vector (encoders may compute in half precision)
_IN_CHUNK = 900  # ids per SQL IN (...) list, below SQLite's oldest host-parameter limit (999)


# -- records -----------------------------------------------------------------------------------------


@dataclass
class EncoderIdentity:
    """Which model produced the catalog's vectors.

    Attributes:
        name: model / architecture name, e.g. "ViT-B-32".
        pretrained: pretrained tag or local checkpoint directory; None for none.
        checkpoint_sha256: hex SHA-256 of the weights file, None if unknown.
        dim: embedding dimension D.
        random_weights: True when the weights were randomly initialised (tests / demos only).
        details: free JSON-serialisable extras (image mean/std, ...); not part of :meth:`matches`.
    """

    name: str
    pretrained: str | None
    checkpoint_sha256: str | None
    dim: int
    random_weights: bool
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("encoder name must not be empty")
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim <= 0:
            raise ValueError(f"encoder dim must be a positive int, got {self.dim!r}")
        self.dim = int(self.dim)
        self.random_weights = bool(self.random_weights)
        self.details = dict(self.details)

    def matches(self, other: EncoderIdentity) -> bool:
        """Same model: equal name, pretrained, checkpoint_sha256, dim and random_weights."""
        return (self.name, self.pretrained, self.checkpoint_sha256, self.dim, self.random_weights) == (
            other.name,
            other.pretrained,
            other.checkpoint_sha256,
            other.dim,
            other.random_weights,
        )

    def describe(self) -> str:
        """One line, e.g. ``ViT-B-32 (pretrained=openai, sha256=0123abcd..., dim=512)``."""
        parts = [f"pretrained={self.pretrained}" if self.pretrained else "no pretrained weights"]
        if self.checkpoint_sha256:
            parts.append(f"sha256={self.checkpoint_sha256[:12]}...")
        parts.append(f"dim={self.dim}")
        if self.random_weights:
            parts.append("RANDOM WEIGHTS")
        return f"{self.name} ({', '.join(parts)})"


@dataclass
class ScanEntry:
    """A scan to store. Arrays are converted and checked on construction.

    Attributes:
        name: unique name among indexed scans.
        source_path: where the scan was read from.
        content_hash: hash of the scan's inputs, for :meth:`Store.is_unchanged`.
        layout: reader layout name (e.g. "scannet").
        points: (N, 3) float32 xyz.
        colors: (N, 3) uint8 rgb (integer input in 0..255 is converted).
        frame_count: number of RGB-D frames.
        tags: free labels.
        info: free JSON-serialisable metadata.
    """

    name: str
    source_path: str
    content_hash: str
    layout: str
    points: np.ndarray
    colors: np.ndarray
    frame_count: int
    tags: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("scan name must be a non-empty string")
        pts = np.asarray(self.points)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"scan {self.name}: points must have shape (N, 3), got {pts.shape}")
        pts = np.ascontiguousarray(pts, dtype=np.float32)
        if not np.isfinite(pts).all():
            raise ValueError(f"scan {self.name}: points must be finite")
        cols = np.asarray(self.colors)
        if cols.shape != pts.shape:
            raise ValueError(f"scan {self.name}: colors must have shape {pts.shape}, got {cols.shape}")
        # silently casting floats in [0, 1] would store black; accept only integer rgb
        bad_dtype = cols.dtype.kind not in "iu"
        if cols.dtype != np.uint8 and (bad_dtype or (cols.size and (cols.min() < 0 or cols.max() > 255))):
            raise ValueError(f"scan {self.name}: colors must be uint8 (or integers in 0..255), got {cols.dtype}")
        self.points = pts
        self.colors = np.ascontiguousarray(cols, dtype=np.uint8)
        self.frame_count = int(self.frame_count)
        self.tags = [str(t) for t in self.tags]
        self.source_path = str(self.source_path)


@dataclass
class InstanceEntry:
    """One instance of a scan to store. Arrays are converted and checked on construction.

    Attributes:
        point_indices: (n,) uint32, sorted ascending, unique, n >= 1; indices into the scan's points.
        score: proposal confidence.
        vector: (D,) float32 unit-norm, or None when the instance has no feature (stored, listed, but
            never searchable; it is never stored as zeros).
        thumbnail: JPEG bytes or None.
        best_frame: index of the frame the feature came from, or None.
    """

    point_indices: np.ndarray
    score: float
    vector: np.ndarray | None = None
    thumbnail: bytes | None = None
    best_frame: int | None = None

    def __post_init__(self) -> None:
        idx = np.asarray(self.point_indices)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"point_indices must be a non-empty 1-D array, got shape {idx.shape}")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"point_indices must have an integer dtype, got {idx.dtype}")
        if int(idx.min()) < 0 or int(idx.max()) > 2**32 - 1:
            raise ValueError("point_indices must be in [0, 2**32)")
        if idx.size > 1 and (np.diff(idx.astype(np.int64)) <= 0).any():
            raise ValueError("point_indices must be sorted ascending without duplicates")
        self.point_indices = np.ascontiguousarray(idx, dtype=np.uint32)
        self.score = float(self.score)
        if self.vector is not None:
            vec = np.asarray(self.vector)
            if vec.ndim != 1:
                raise ValueError(f"vector must be 1-D (D,), got shape {vec.shape}")
            vec = np.ascontiguousarray(vec, dtype=np.float32)
            norm = float(np.linalg.norm(vec))
            if not np.isfinite(vec).all() or abs(norm - 1.0) > _UNIT_TOL:
                raise ValueError(f"vector must be finite and unit-norm, got norm {norm:.4g}")
            self.vector = vec
        if self.thumbnail is not None and not isinstance(self.thumbnail, (bytes, bytearray, memoryview)):
            raise TypeError(f"thumbnail must be bytes or None, got {type(self.thumbnail).__name__}")
        if self.thumbnail is not None:
            self.thumbnail = bytes(self.thumbnail)
        self.best_frame = None if self.best_frame is None else int(self.best_frame)


@dataclass
class ScanInfo:
    """An indexed scan as listed by the store.

    Attributes:
        id: catalog id (also the point file name).
        name, source_path, layout, content_hash: as given in :class:`ScanEntry`.
        point_count: N. frame_count: number of frames.
        instances: number of instances; searchable: how many of them have a vector.
        status: 'indexed' (listings never show pending scans).
        indexed_at: commit time, aware UTC.
        tags, info: as given.
    """

    id: int
    name: str
    source_path: str
    layout: str
    content_hash: str
    point_count: int
    frame_count: int
    instances: int
    searchable: int
    status: str
    indexed_at: datetime | None
    tags: list[str]
    info: dict[str, Any]


@dataclass
class InstanceInfo:
    """An instance's metadata (no blobs).

    Attributes:
        id: instance id (the FAISS id). scan_id, scan_name: its scan.
        mask_index: position in the scan's instance list as added.
        point_count: number of points in the mask.
        bbox: (6,) float32 ``[min_x, min_y, min_z, max_x, max_y, max_z]`` of the mask's points.
        score: proposal confidence. searchable: has a vector.
        best_frame: frame of the feature or None. has_thumbnail: a thumbnail is stored.
    """

    id: int
    scan_id: int
    scan_name: str
    mask_index: int
    point_count: int
    bbox: np.ndarray
    score: float
    searchable: bool
    best_frame: int | None
    has_thumbnail: bool


# -- helpers -----------------------------------------------------------------------------------------


def _vec_to_blob(vec: np.ndarray) -> bytes:
    return vec.astype("<f2").tobytes()


def _blob_to_vec(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, "<f2").astype(np.float32)


def _chunks(ids: Sequence[int], n: int = _IN_CHUNK) -> Iterable[list[int]]:
    for start in range(0, len(ids), n):
        yield list(ids[start : start + n])


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # leftovers are removed by the next writer's recovery
        log.warning("could not delete %s: %s", path, exc)


def _acquire_lock(home: Path) -> int:
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(
            f"{home} is being written by another scenegrep process (lock {path}); wait for it to finish"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # for humans wondering who holds it
    return fd


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from exc


def _scan_info(row: ScanRow, instances: int, searchable: int) -> ScanInfo:
    return ScanInfo(
        id=row.id,
        name=row.name,
        source_path=row.source_path,
        layout=row.layout,
        content_hash=row.content_hash,
        point_count=row.point_count,
        frame_count=row.frame_count,
        instances=int(instances),
        searchable=int(searchable or 0),
        status=row.status,
        indexed_at=as_utc(row.indexed_at),
        tags=json.loads(row.tags_json),
        info=json.loads(row.info_json),
    )


def _encoder_identity(row: EncoderRow) -> EncoderIdentity:
    return EncoderIdentity(
        name=row.name,
        pretrained=row.pretrained,
        checkpoint_sha256=row.checkpoint_sha256,
        dim=row.dim,
        random_weights=row.random_weights,
        details=json.loads(row.details_json),
    )


_INFO_COLUMNS = (
    InstanceRow.id,
    InstanceRow.scan_id,
    ScanRow.name,
    InstanceRow.mask_index,
    InstanceRow.point_count,
    InstanceRow.min_x,
    InstanceRow.min_y,
    InstanceRow.min_z,
    InstanceRow.max_x,
    InstanceRow.max_y,
    InstanceRow.max_z,
    InstanceRow.score,
    InstanceRow.searchable,
    InstanceRow.best_frame,
    InstanceRow.thumbnail.is_not(None),
)


def _instance_info(r: Row) -> InstanceInfo:
    return InstanceInfo(
        id=r[0],
        scan_id=r[1],
        scan_name=r[2],
        mask_index=r[3],
        point_count=r[4],
        bbox=np.array(r[5:11], dtype=np.float32),
        score=float(r[11]),
        searchable=bool(r[12]),
        best_frame=r[13],
        has_thumbnail=bool(r[14]),
    )


# -- the store ---------------------------------------------------------------------------------------


class Store:
    """A scenegrep home folder. Open with :meth:`open`; use as a context manager or call :meth:`close`.

    A writer (the default) holds ``<home>/.lock`` until closed, runs recovery on open and may call
    ``add_scans`` / ``remove_scan``. ``read_only=True`` takes no lock, never writes, and reloads the FAISS
    generation whenever a writer has committed a new one. Not safe for concurrent calls from threads.
    """

    def __init__(self, home: Path, catalog: Catalog, lock_fd: int | None):
        self.home = home
        self._catalog = catalog
        self._lock_fd = lock_fd
        self._index: VectorIndex | None = None
        self._generation: int | None = None
        self._gen_filename: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(cls, home: Path | str, *, read_only: bool = False) -> Store:
        """Open ``home``, creating it (writer only) with ``catalog.sqlite``, ``vectors/`` and ``points/``.

        Raises:
            StoreLockedError: another writer holds the home.
            CatalogVersionError: the catalog is newer than this code.
            StoreError: ``read_only`` and there is no catalog.
        """
        home = Path(home).expanduser()
        if read_only:
            if not (home / CATALOG_FILE).exists():
                raise StoreError(f"no scenegrep catalog in {home} (index scans first with `scenegrep index`, or point --home elsewhere)")
            store = cls(home, Catalog.open(home / CATALOG_FILE, migrate=False), None)
            try:
                store._load_current()
            except BaseException:
                store.close()
                raise
            return store
        for folder in (home, home / "vectors", home / "points"):
            folder.mkdir(parents=True, exist_ok=True)
        lock_fd = _acquire_lock(home)
        try:
            catalog = Catalog.open(home / CATALOG_FILE)
        except BaseException:
            os.close(lock_fd)
            raise
        store = cls(home, catalog, lock_fd)
        try:
            store._recover()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Release the catalog and the writer lock (idempotent)."""
        self._catalog.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        self._index = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def read_only(self) -> bool:
        return self._lock_fd is None

    @property
    def _vectors_dir(self) -> Path:
        return self.home / "vectors"

    @property
    def _points_dir(self) -> Path:
        return self.home / "points"

    def _points_path(self, scan_id: int) -> Path:
        return self._points_dir / f"{scan_id}.npz"

    def _require_writer(self) -> None:
        if self._lock_fd is None:
            raise StoreError(f"{self.home} was opened read-only")

    # -- encoder ---------------------------------------------------------------------------------

    def encoder(self) -> EncoderIdentity | None:
        """The encoder recorded by the first committed index, or None for an empty home."""
        with self._catalog.transaction() as s:
            row = s.scalars(select(EncoderRow).order_by(EncoderRow.id).limit(1)).first()
            return None if row is None else _encoder_identity(row)

    def check_encoder(self, encoder: EncoderIdentity) -> None:
        """Raise EncoderMismatchError unless the catalog has no encoder or the same one."""
        current = self.encoder()
        if current is not None and not current.matches(encoder):
            raise EncoderMismatchError(current.describe(), encoder.describe())

    # -- scans -----------------------------------------------------------------------------------

    def _scan_row(self, s: Session, name: str) -> ScanRow | None:
        return s.scalars(select(ScanRow).where(ScanRow.name == name, ScanRow.status == STATUS_INDEXED)).first()

    def _scan_infos(self, s: Session, where: Any = None) -> list[ScanInfo]:
        stmt = (
            select(
                ScanRow,
                func.count(InstanceRow.id),
                func.count(case((InstanceRow.searchable.is_(True), InstanceRow.id))),
            )
            .outerjoin(InstanceRow, InstanceRow.scan_id == ScanRow.id)
            .where(ScanRow.status == STATUS_INDEXED)
            .group_by(ScanRow.id)
            .order_by(ScanRow.name)
        )
        if where is not None:
            stmt = stmt.where(where)
        return [_scan_info(row, n, m) for row, n, m in s.execute(stmt)]

    def find_scan(self, name: str) -> ScanInfo | None:
        """The indexed scan called ``name``, or None."""
        with self._catalog.transaction() as s:
            found = self._scan_infos(s, ScanRow.name == name)
        return found[0] if found else None

    def scans(self) -> list[ScanInfo]:
        """All indexed scans, by name."""
        with self._catalog.transaction() as s:
            return self._scan_infos(s)

    def is_unchanged(self, name: str, content_hash: str) -> bool:
        """True when ``name`` is indexed with this ``content_hash`` (re-indexing it would be a no-op)."""
        with self._catalog.transaction() as s:
            row = self._scan_row(s, name)
            return row is not None and row.content_hash == content_hash

    def scan_points(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) float32 xyz and (N, 3) uint8 rgb of an indexed scan; NotFoundError if unknown."""
        with self._catalog.transaction() as s:
            row = self._scan_row(s, name)
            if row is None:
                raise NotFoundError(f"no indexed scan named {name!r}")
            scan_id = row.id
        return self._load_points(scan_id)

    def _load_points(self, scan_id: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._points_path(scan_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["xyz"], data["rgb"]
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"cannot read point file {path}: {exc}") from exc

    def _write_points(self, scan_id: int, entry: ScanEntry) -> None:
        def write(f: BinaryIO) -> None:
            np.savez(f, xyz=entry.points, rgb=entry.colors)

        atomic_write(self._points_path(scan_id), write)

    # -- instances -------------------------------------------------------------------------------

    def instances_by_ids(self, ids: Iterable[int]) -> dict[int, InstanceInfo]:
        """Metadata of these instances of indexed scans, keyed by id (unknown ids are left out)."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, InstanceInfo] = {}
        with self._catalog.transaction() as s:
            for chunk in _chunks(wanted):  # one query unless more than _IN_CHUNK ids
                stmt = (
                    select(*_INFO_COLUMNS)
                    .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
                    .where(InstanceRow.id.in_(chunk), ScanRow.status == STATUS_INDEXED)
                )
                out.update((r[0], _instance_info(r)) for r in s.execute(stmt))
        return out

    def instance(self, id: int) -> InstanceInfo:
        """Metadata of one instance; NotFoundError if unknown."""
        found = self.instances_by_ids([id])
        if int(id) not in found:
            raise NotFoundError(f"no instance with id {id}")
        return found[int(id)]

    def instances(self, scan_name: str) -> list[InstanceInfo]:
        """All instances of an indexed scan, by mask_index; NotFoundError if the scan is unknown."""
        with self._catalog.transaction() as s:
            row = self._scan_row(s, scan_name)
            if row is None:
                raise NotFoundError(f"no indexed scan named {scan_name!r}")
            stmt = (
                select(*_INFO_COLUMNS)
                .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
                .where(InstanceRow.scan_id == row.id)
                .order_by(InstanceRow.mask_index)
            )
            return [_instance_info(r) for r in s.execute(stmt)]

    def _instance_column(self, id: int, *columns: Any) -> Row:
        with self._catalog.transaction() as s:
            r = s.execute(
                select(*columns)
                .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
                .where(InstanceRow.id == int(id), ScanRow.status == STATUS_INDEXED)
            ).first()
        if r is None:
            raise NotFoundError(f"no instance with id {id}")
        return r

    def instance_points(self, id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) uint32 point indices exactly as stored, their (n, 3) float32 xyz and (n, 3) uint8 rgb."""
        scan_id, blob = self._instance_column(id, InstanceRow.scan_id, InstanceRow.point_indices)
        idx = decode_indices(blob)
        xyz, rgb = self._load_points(scan_id)
        return idx, xyz[idx], rgb[idx]

    def instance_vector(self, id: int) -> np.ndarray | None:
        """(D,) float32 (from the stored float16 copy), or None for an unsearchable instance."""
        (blob,) = self._instance_column(id, InstanceRow.vector)
        return None if blob is None else _blob_to_vec(blob)

    def thumbnail(self, id: int) -> bytes | None:
        """The instance's JPEG thumbnail, or None."""
        (blob,) = self._instance_column(id, InstanceRow.thumbnail)
        return blob

    # -- search ----------------------------------------------------------------------------------

    def _searchable_ids(self, s: Session, scan_ids: Sequence[int] | None = None) -> np.ndarray:
        stmt = (
            select(InstanceRow.id)
            .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
            .where(ScanRow.status == STATUS_INDEXED, InstanceRow.searchable.is_(True))
        )
        if scan_ids is not None:
            stmt = stmt.where(InstanceRow.scan_id.in_(list(scan_ids)))
        return np.fromiter(s.scalars(stmt), dtype=np.int64)

    def search(self, queries: np.ndarray, k: int, scans: list[str] | None = None) -> list[list[tuple[int, float]]]:
        """Top-``k`` instances per query by cosine similarity, best first.

        Args:
            queries: (q, D) or (D,) float32; each row is L2-normalised here (a zero row is a ValueError).
            k: results per query (>= 1); fewer come back when fewer instances are searchable.
            scans: restrict to these indexed scans (NotFoundError names any unknown one).

        Returns:
            One list per query of ``(instance_id, score)``; only instances of indexed scans, never -1 ids.
        """
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise ValueError(f"queries must have shape (q, D) or (D,), got {np.shape(queries)}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if not np.isfinite(q).all() or (norms == 0).any():
            raise ValueError("queries must be finite and non-zero")
        q = q / norms
        if self.read_only:
            self._refresh()
        if self._index is None:  # nothing indexed yet
            return [[] for _ in range(q.shape[0])]
        allowed: np.ndarray | None = None
        with self._catalog.transaction() as s:
            if scans is not None:
                names = list(dict.fromkeys(scans))
                rows = dict(
                    s.execute(
                        select(ScanRow.name, ScanRow.id).where(
                            ScanRow.name.in_(names), ScanRow.status == STATUS_INDEXED
                        )
                    ).all()
                )
                missing = [n for n in names if n not in rows]
                if missing:
                    raise NotFoundError(f"no indexed scan named {', '.join(map(repr, missing))}")
                allowed = self._searchable_ids(s, list(rows.values()))
            scores, ids = self._index.search(q, k, allowed)
            if allowed is None:
                # The join with indexed scans of DESIGN.md. It only bites for a read-only store whose
                # generation is a step behind a writer; then search again within the valid ids.
                hit = np.unique(ids[ids >= 0]).tolist()
                valid: set[int] = set()
                for chunk in _chunks(hit):
                    valid.update(
                        s.scalars(
                            select(InstanceRow.id)
                            .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
                            .where(
                                InstanceRow.id.in_(chunk),
                                ScanRow.status == STATUS_INDEXED,
                                InstanceRow.searchable.is_(True),
                            )
                        )
                    )
                if len(valid) < len(hit):
                    log.debug("vector index is behind the catalog; searching within indexed ids")
                    scores, ids = self._index.search(q, k, self._searchable_ids(s))
        return [
            [(int(i), float(d)) for i, d in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(ids, scores)
        ]

    # -- writes ----------------------------------------------------------------------------------

    def add_scans(
        self,
        batch: list[tuple[ScanEntry, list[InstanceEntry]]],
        encoder: EncoderIdentity,
        replace: bool = False,
    ) -> list[int]:
        """Store scans with their instances as one generation (see the module docstring).

        Args:
            batch: (scan, instances) pairs; instance i of a scan gets mask_index i.
            encoder: the model of the vectors; recorded on the first write, checked on later ones.
            replace: replace indexed scans of the same names instead of raising ScanExistsError.

        Returns:
            The new scan ids, in batch order.

        Raises:
            EncoderMismatchError, ScanExistsError, ValueError (bad batch: duplicate names, a vector of the
            wrong dimension, a point index out of range). Any error before the commit point leaves the
            previous state unchanged.
        """
        self._require_writer()
        self.check_encoder(encoder)
        names = [scan.name for scan, _ in batch]
        if len(set(names)) != len(names):
            raise ValueError("a batch must not hold two scans of the same name")
        # prepare every row before writing anything: bad input fails with nothing to undo
        prepared: list[tuple[ScanEntry, list[dict[str, Any]]]] = []
        for scan, instances in batch:
            if not isinstance(scan, ScanEntry):
                raise TypeError(f"expected ScanEntry, got {type(scan).__name__}")
            rows = []
            for mask_index, inst in enumerate(instances):
                if not isinstance(inst, InstanceEntry):
                    raise TypeError(f"expected InstanceEntry, got {type(inst).__name__}")
                if int(inst.point_indices[-1]) >= len(scan.points):
                    raise ValueError(
                        f"scan {scan.name} instance {mask_index}: point index {int(inst.point_indices[-1])} "
                        f">= point count {len(scan.points)}"
                    )
                if inst.vector is not None and inst.vector.shape != (encoder.dim,):
                    raise ValueError(
                        f"scan {scan.name} instance {mask_index}: vector has shape {inst.vector.shape}, "
                        f"the encoder's dim is {encoder.dim}"
                    )
                pts = scan.points[inst.point_indices]
                lo, hi = pts.min(axis=0), pts.max(axis=0)
                rows.append(
                    dict(
                        mask_index=mask_index,
                        point_count=int(inst.point_indices.size),
                        min_x=float(lo[0]),
                        min_y=float(lo[1]),
                        min_z=float(lo[2]),
                        max_x=float(hi[0]),
                        max_y=float(hi[1]),
                        max_z=float(hi[2]),
                        score=inst.score,
                        point_indices=encode_indices(inst.point_indices),
                        vector=None if inst.vector is None else _vec_to_blob(inst.vector),
                        searchable=inst.vector is not None,
                        thumbnail=inst.thumbnail,
                        best_frame=inst.best_frame,
                    )
                )
            _json(scan.info, f"scan {scan.name} info")
            prepared.append((scan, rows))
        details_json = _json(encoder.details, "encoder details")
        with self._catalog.transaction() as s:
            replaced = {
                row.name: row.id
                for row in s.scalars(select(ScanRow).where(ScanRow.name.in_(names), ScanRow.status == STATUS_INDEXED))
            }
        if replaced and not replace:
            raise ScanExistsError(
                f"scan {', '.join(sorted(map(repr, replaced)))} is already indexed; pass replace to re-index it"
            )
        if not batch:
            return []

        new_ids: list[int] = []
        created_encoder: int | None = None
        try:
            # step 1: pending rows, then point files
            new_ids_vecs: list[tuple[int, bytes]] = []
            with self._catalog.transaction() as s:
                enc_row = s.scalars(select(EncoderRow).order_by(EncoderRow.id).limit(1)).first()
                if enc_row is None:
                    enc_row = EncoderRow(
                        name=encoder.name,
                        pretrained=encoder.pretrained,
                        checkpoint_sha256=encoder.checkpoint_sha256,
                        dim=encoder.dim,
                        random_weights=encoder.random_weights,
                        details_json=details_json,
                        created_at=utcnow(),
                    )
                    s.add(enc_row)
                    s.flush()
                    created_encoder = enc_row.id
                for scan, rows in prepared:
                    scan_row = ScanRow(
                        name=scan.name,
                        source_path=scan.source_path,
                        content_hash=scan.content_hash,
                        layout=scan.layout,
                        point_count=len(scan.points),
                        frame_count=scan.frame_count,
                        tags_json=_json(scan.tags, "tags"),
                        info_json=_json(scan.info, "info"),
                        status=STATUS_PENDING,
                        encoder_id=enc_row.id,
                    )
                    s.add(scan_row)
                    s.flush()
                    new_ids.append(scan_row.id)
                    inst_rows = [InstanceRow(scan_id=scan_row.id, **r) for r in rows]
                    s.add_all(inst_rows)
                    s.flush()  # AUTOINCREMENT assigns the ids
                    new_ids_vecs.extend((r.id, r.vector) for r in inst_rows if r.vector is not None)
            for scan_id, (scan, _) in zip(new_ids, prepared):
                self._write_points(scan_id, scan)

            # step 2: next generation on a copy, so the live index stays the committed one
            index = self._index.copy() if self._index is not None else VectorIndex(encoder.dim)
            if replaced:
                with self._catalog.transaction() as s:
                    index.remove(self._searchable_ids(s, list(replaced.values())))
            if new_ids_vecs:
                ids = np.array([i for i, _ in new_ids_vecs], dtype=np.int64)
                vecs = np.stack([_blob_to_vec(b) for _, b in new_ids_vecs])
                index.add(ids, vecs)

            # step 3: the commit point
            def apply(s: Session) -> None:
                if replaced:  # first: names are unique among indexed scans
                    s.execute(delete(ScanRow).where(ScanRow.id.in_(list(replaced.values()))))
                s.execute(
                    update(ScanRow).where(ScanRow.id.in_(new_ids)).values(status=STATUS_INDEXED, indexed_at=utcnow())
                )

            self._publish(index, apply)
        except BaseException:
            self._undo_pending(new_ids, created_encoder)
            raise
        for scan_id in replaced.values():
            _unlink_quietly(self._points_path(scan_id))
        log.info(
            "indexed %d scan(s) (%d replaced), %d vectors in generation %s",
            len(new_ids),
            len(replaced),
            self._index.ntotal if self._index else 0,
            self._generation,
        )
        return new_ids

    def remove_scan(self, name: str) -> int:
        """Remove an indexed scan: a generation without its vectors, then its rows and point file.

        Returns:
            The number of instances removed (searchable or not).
        """
        self._require_writer()
        with self._catalog.transaction() as s:
            row = self._scan_row(s, name)
            if row is None:
                raise NotFoundError(f"no indexed scan named {name!r}")
            scan_id = row.id
            count = s.scalar(select(func.count()).where(InstanceRow.scan_id == scan_id)) or 0
            drop = self._searchable_ids(s, [scan_id])
        assert self._index is not None  # an indexed scan implies a loaded generation
        index = self._index.copy()
        index.remove(drop)
        self._publish(index, lambda s: s.execute(delete(ScanRow).where(ScanRow.id == scan_id)))
        _unlink_quietly(self._points_path(scan_id))
        log.info("removed scan %s (%d instances)", name, count)
        return int(count)

    def _publish(self, index: VectorIndex, apply: Callable[[Session], None]) -> None:
        """Write ``index`` as generation N+1 and commit it together with ``apply`` (the commit point).

        On success the live index becomes ``index`` and the old generation file is deleted. On failure
        the new file is deleted unless the commit did land (then it counts as success).
        """
        with self._catalog.transaction() as s:
            gen = int(s.scalar(select(func.max(GenerationRow.id))) or 0) + 1
        filename = f"gen-{gen}.faiss"
        path = self._vectors_dir / filename
        try:
            index.save(path)
            self._commit_generation(gen, filename, index.ntotal, apply)
        except BaseException:
            if not self._is_current_generation(gen):
                _unlink_quietly(path)
                raise
            log.warning("generation %d was committed although the commit reported an error", gen)
        old = self._gen_filename
        self._index, self._generation, self._gen_filename = index, gen, filename
        if old is not None and old != filename:
            _unlink_quietly(self._vectors_dir / old)

    def _commit_generation(self, gen: int, filename: str, ntotal: int, apply: Callable[[Session], None]) -> None:
        with self._catalog.transaction() as s:
            # retire the old row first: the partial unique index allows one current generation
            s.execute(update(GenerationRow).where(GenerationRow.is_current.is_(True)).values(is_current=False))
            s.add(GenerationRow(id=gen, filename=filename, ntotal=ntotal, is_current=True, created_at=utcnow()))
            s.flush()
            apply(s)

    def _is_current_generation(self, gen: int) -> bool:
        try:
            with self._catalog.transaction() as s:
                return s.scalar(select(GenerationRow.id).where(GenerationRow.is_current.is_(True))) == gen
        except Exception as exc:  # unknown: treat as not committed; recovery rebuilds a missing file
            log.warning("cannot read the current generation: %s", exc)
            return False

    def _undo_pending(self, scan_ids: list[int], created_encoder: int | None) -> None:
        """Remove what a failed add_scans wrote before its commit point (best effort, never raises)."""
        try:
            with self._catalog.transaction() as s:
                if scan_ids:
                    s.execute(delete(ScanRow).where(ScanRow.id.in_(scan_ids), ScanRow.status == STATUS_PENDING))
                if created_encoder is not None:
                    in_use = s.scalar(select(func.count()).where(ScanRow.encoder_id == created_encoder))
                    if not in_use:
                        s.execute(delete(EncoderRow).where(EncoderRow.id == created_encoder))
                live = set(s.scalars(select(ScanRow.id).where(ScanRow.id.in_(scan_ids)))) if scan_ids else set()
        except Exception as exc:  # the next writer's recovery deletes pending scans
            log.warning("could not undo pending scans %s: %s", scan_ids, exc)
            return
        for scan_id in scan_ids:
            if scan_id not in live:
                _unlink_quietly(self._points_path(scan_id))

    # -- open: load and recover ------------------------------------------------------------------

    def _current_generation(self, s: Session) -> GenerationRow | None:
        return s.scalars(select(GenerationRow).where(GenerationRow.is_current.is_(True))).first()

    def _load_current(self) -> None:
        """Load the current generation (or none) into memory."""
        enc = self.encoder()
        with self._catalog.transaction() as s:
            cur = self._current_generation(s)
            gen, filename = (cur.id, cur.filename) if cur is not None else (None, None)
        if enc is None:
            self._index, self._generation, self._gen_filename = None, gen, filename
        elif filename is None:
            self._index, self._generation, self._gen_filename = VectorIndex(enc.dim), None, None
        else:
            index = VectorIndex.load(self._vectors_dir / filename, enc.dim)
            self._index, self._generation, self._gen_filename = index, gen, filename

    def _refresh(self) -> None:
        """Read-only stores: follow a writer's newer generation (its old file may vanish meanwhile)."""
        for attempt in range(3):
            with self._catalog.transaction() as s:
                cur = self._current_generation(s)
            if (cur.id if cur is not None else None) == self._generation and (self._index is not None or cur is None):
                return
            try:
                self._load_current()
                return
            except VectorIndexError:
                if attempt == 2:
                    raise

    def _recover(self) -> None:
        """Undo an interrupted write and check the FAISS generation against the catalog."""
        with self._catalog.transaction() as s:
            pending = s.scalars(select(ScanRow.name).where(ScanRow.status == STATUS_PENDING)).all()
            if pending:
                log.warning(
                    "recovery: deleting %d scan(s) left pending by an interrupted write: %s",
                    len(pending),
                    ", ".join(pending),
                )
                s.execute(delete(ScanRow).where(ScanRow.status == STATUS_PENDING))
            if s.scalar(select(func.count(GenerationRow.id))) == 0 and s.scalar(select(func.count(ScanRow.id))) == 0:
                # an encoder recorded by a first write that never reached its commit point
                s.execute(delete(EncoderRow))
            cur = self._current_generation(s)
            current_file = cur.filename if cur is not None else None
            scan_ids = set(s.scalars(select(ScanRow.id)))
        for f in self._vectors_dir.iterdir():
            if f.name != current_file:
                log.warning("recovery: deleting %s (no current generation points to it)", f)
                _unlink_quietly(f)
        for f in self._points_dir.iterdir():
            if not (f.suffix == ".npz" and f.stem.isdigit() and int(f.stem) in scan_ids):
                log.warning("recovery: deleting %s (no scan row)", f)
                _unlink_quietly(f)

        enc = self.encoder()
        if enc is None:
            self._index, self._generation, self._gen_filename = None, None, None
            return
        with self._catalog.transaction() as s:
            expected = self._searchable_ids(s)
        problem = None
        if current_file is None:
            problem = "no current generation"
        else:
            try:
                self._load_current()
            except VectorIndexError as exc:
                problem = str(exc)
            else:
                assert self._index is not None
                if self._index.ntotal != expected.size:
                    problem = (
                        f"generation {self._generation} holds {self._index.ntotal} vectors, "
                        f"the catalog {expected.size} searchable instances"
                    )
                elif not np.array_equal(np.sort(self._index.ids()), np.sort(expected)):
                    problem = f"generation {self._generation} holds other ids than the catalog"
        if problem is not None:
            log.warning("recovery: %s; rebuilding the vector index from the catalog", problem)
            self._rebuild(enc.dim)

    def _rebuild(self, dim: int) -> None:
        """Build a new generation from the catalog's float16 vectors."""
        with self._catalog.transaction() as s:
            rows = s.execute(
                select(InstanceRow.id, InstanceRow.vector)
                .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
                .where(ScanRow.status == STATUS_INDEXED, InstanceRow.searchable.is_(True))
                .order_by(InstanceRow.id)
            ).all()
            cur = self._current_generation(s)
        index = VectorIndex(dim)
        if rows:
            index.add(np.array([r[0] for r in rows], np.int64), np.stack([_blob_to_vec(r[1]) for r in rows]))
        # the live file may be unreadable; _publish deletes whatever _gen_filename names after the commit
        self._gen_filename = cur.filename if cur is not None else None
        self._publish(index, lambda s: None)
        log.warning("recovery: wrote generation %d with %d vectors", self._generation, index.ntotal)

    # -- reporting -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: scans, instances, searchable, vectors, dim, encoder, generation, bytes_*."""
        if self.read_only:
            self._refresh()
        enc = self.encoder()
        with self._catalog.transaction() as s:
            indexed = select(ScanRow.id).where(ScanRow.status == STATUS_INDEXED)
            n_scans = s.scalar(select(func.count()).select_from(indexed.subquery())) or 0
            n_inst = s.scalar(select(func.count(InstanceRow.id)).where(InstanceRow.scan_id.in_(indexed))) or 0
            n_search = (
                s.scalar(
                    select(func.count(InstanceRow.id)).where(
                        InstanceRow.scan_id.in_(indexed), InstanceRow.searchable.is_(True)
                    )
                )
                or 0
            )

        def size(paths: Iterable[Path]) -> int:
            return sum(p.stat().st_size for p in paths if p.is_file())

        catalog = self.home / CATALOG_FILE
        return {
            "home": str(self.home),
            "scans": int(n_scans),
            "instances": int(n_inst),
            "searchable": int(n_search),
            "vectors": self._index.ntotal if self._index is not None else 0,
            "dim": enc.dim if enc is not None else None,
            "encoder": enc.describe() if enc is not None else None,
            "generation": self._generation,
            "bytes_catalog": size(
                [catalog, catalog.with_name(CATALOG_FILE + "-wal"), catalog.with_name(CATALOG_FILE + "-shm")]
            ),
            "bytes_vectors": size(self._vectors_dir.iterdir()),
            "bytes_points": size(self._points_dir.iterdir()),
        }

    def verify(self) -> list[str]:
        """Check every invariant the store relies on; returns one line per problem (empty = healthy).

        Decodes every mask, so it reads the whole catalog.
        """
        problems: list[str] = []
        enc = self.encoder()
        with self._catalog.transaction() as s:
            cur = self._current_generation(s)
            pending = s.scalars(select(ScanRow.name).where(ScanRow.status == STATUS_PENDING)).all()
            problems += [f"scan {n!r} is pending (a write in progress or interrupted)" for n in pending]
            scans = {r.id: r for r in s.scalars(select(ScanRow).where(ScanRow.status == STATUS_INDEXED))}
            expected = self._searchable_ids(s)
            if scans and enc is None:
                problems.append("scans exist but no encoder is recorded")
            if cur is None:
                if scans:
                    problems.append("indexed scans exist but there is no current generation")
            else:
                try:
                    disk = VectorIndex.load(self._vectors_dir / cur.filename, enc.dim if enc else 0)
                except VectorIndexError as exc:
                    disk = None
                    problems.append(str(exc))
                if disk is not None:
                    if disk.ntotal != cur.ntotal:
                        problems.append(f"{cur.filename} holds {disk.ntotal} vectors, its row says {cur.ntotal}")
                    if not np.array_equal(np.sort(disk.ids()), np.sort(expected)):
                        problems.append(
                            f"{cur.filename} ids differ from the {expected.size} searchable instances of indexed scans"
                        )
            if self._index is not None and self._generation != (cur.id if cur else None):
                problems.append(f"the loaded generation {self._generation} is not the current one")

            for scan_id, scan in scans.items():
                try:
                    xyz, rgb = self._load_points(scan_id)
                except StoreError as exc:
                    problems.append(str(exc))
                else:
                    if xyz.shape != (scan.point_count, 3) or rgb.shape != (scan.point_count, 3):
                        problems.append(
                            f"scan {scan.name!r}: point file shapes {xyz.shape}/{rgb.shape} "
                            f"do not match point_count {scan.point_count}"
                        )
            stmt = select(
                InstanceRow.id,
                InstanceRow.scan_id,
                InstanceRow.point_count,
                InstanceRow.point_indices,
                InstanceRow.vector,
                InstanceRow.searchable,
            ).where(InstanceRow.scan_id.in_(list(scans)))
            vec_bytes = 2 * enc.dim if enc else None
            for iid, scan_id, count, blob, vec, searchable in s.execute(stmt):
                try:
                    idx = decode_indices(blob)
                except ValueError as exc:
                    problems.append(f"instance {iid}: {exc}")
                    continue
                if idx.size != count:
                    problems.append(f"instance {iid}: mask has {idx.size} points, row says {count}")
                if idx.size and int(idx[-1]) >= scans[scan_id].point_count:
                    problems.append(f"instance {iid}: point index {int(idx[-1])} out of range")
                if bool(searchable) != (vec is not None):
                    problems.append(
                        f"instance {iid}: searchable={bool(searchable)} but vector is "
                        f"{'missing' if vec is None else 'present'}"
                    )
                if vec is not None and vec_bytes is not None and len(vec) != vec_bytes:
                    problems.append(f"instance {iid}: vector of {len(vec)} bytes, expected {vec_bytes}")
            all_ids = set(s.scalars(select(ScanRow.id)))
        for f in self._vectors_dir.iterdir():
            if cur is None or f.name != cur.filename:
                problems.append(f"stray file {f}")
        for f in self._points_dir.iterdir():
            if not (f.suffix == ".npz" and f.stem.isdigit() and int(f.stem) in all_ids):
                problems.append(f"stray file {f}")
        return problems
