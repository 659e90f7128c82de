"""Catalog lookups: the encoder, scans, instances and their blobs, and the searchable ids a filter allows.

Everything here reads; only indexed scans (and their instances) are ever visible, never pending ones.
Instance ids that cannot exist (outside SQLite's int64) are NotFoundError, like any unknown id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Row, case, func, select
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import STATUS_INDEXED, Catalog, EncoderRow, InstanceRow, ScanRow
from scenegrep.storage.errors import EncoderMismatchError, NotFoundError, StoreError
from scenegrep.storage.maskcodec import decode_indices
from scenegrep.storage.pointfiles import PointFiles
from scenegrep.storage.records import (
    EncoderIdentity,
    InstanceInfo,
    ScanInfo,
    blob_to_vector,
    instance_info_from_row,
    scan_info_from_row,
)

__all__ = ["CatalogReader", "searchable_ids", "indexed_scan_ids", "chunks", "storable_ids"]

IN_CHUNK = 900  # ids per SQL IN (...) list, below SQLite's oldest host-parameter limit (999)
_INT64 = (-(2**63), 2**63 - 1)  # SQLite INTEGER; a Python int outside it cannot even be bound

_INSTANCES = InstanceRow.__table__
_SCANS = ScanRow.__table__

# labelled as records.INSTANCE_INFO_FIELDS, which instance_info_from_row reads
_INFO_COLUMNS = (
    InstanceRow.id,
    InstanceRow.scan_id,
    ScanRow.name.label("scan_name"),
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
    InstanceRow.thumbnail.is_not(None).label("has_thumbnail"),
)


def chunks(ids: Sequence[int], n: int = IN_CHUNK) -> Iterable[list[int]]:
    """``ids`` in lists of at most ``n`` (for SQL ``IN`` lists)."""
    for start in range(0, len(ids), n):
        yield list(ids[start : start + n])


def _storable_id(id: int) -> int | None:
    """``int(id)`` if SQLite could hold it, else None (such an id names nothing)."""
    value = int(id)
    return value if _INT64[0] <= value <= _INT64[1] else None


def storable_ids(ids: Iterable[int]) -> list[int]:
    """The distinct ids SQLite could hold, sorted (others name nothing)."""
    return sorted({v for v in map(_storable_id, ids) if v is not None})


def searchable_ids(s: Session, scan_ids: Sequence[int] | None = None) -> np.ndarray:
    """(n,) int64 ids of the searchable instances of indexed scans (of ``scan_ids`` only, if given).

    One Core query on the session's connection, fetched at once as scalars: no ORM row objects and no
    row-at-a-time fetching, so 20k ids cost a few milliseconds.
    """
    stmt = (
        select(_INSTANCES.c.id)
        .join(_SCANS, _SCANS.c.id == _INSTANCES.c.scan_id)
        .where(_SCANS.c.status == STATUS_INDEXED, _INSTANCES.c.searchable.is_(True))
    )
    if scan_ids is not None:
        stmt = stmt.where(_INSTANCES.c.scan_id.in_(list(scan_ids)))
    # fetchall in one go: iterating the result would fetch (and wrap) one row at a time
    return np.array(s.connection().execute(stmt).scalars().all(), dtype=np.int64).reshape(-1)


def indexed_scan_ids(s: Session, names: Iterable[str]) -> dict[str, int]:
    """``{name: scan id}`` for these indexed scans, in the given order; NotFoundError names any unknown one."""
    wanted = list(dict.fromkeys(names))
    rows = dict(
        s.execute(select(ScanRow.name, ScanRow.id).where(ScanRow.name.in_(wanted), ScanRow.status == STATUS_INDEXED)).all()
    )
    missing = [n for n in wanted if n not in rows]
    if missing:
        raise NotFoundError(f"no indexed scan named {', '.join(map(repr, missing))}")
    return {n: rows[n] for n in wanted}


class CatalogReader:
    """Read-only queries on one catalog (plus the point files that complete a scan)."""

    def __init__(self, catalog: Catalog, points: PointFiles):
        self._catalog = catalog
        self._points = points

    # -- encoder ---------------------------------------------------------------------------------

    def encoder(self) -> EncoderIdentity | None:
        """The encoder recorded by the first committed index, or None for an empty home."""
        with self._catalog.transaction() as s:
            row = s.scalars(select(EncoderRow).order_by(EncoderRow.id).limit(1)).first()
            return None if row is None else EncoderIdentity.from_row(row)

    def check_encoder(self, encoder: EncoderIdentity) -> None:
        """Raise EncoderMismatchError unless the catalog has no encoder or the same one."""
        current = self.encoder()
        if current is not None and not current.matches(encoder):
            raise EncoderMismatchError(current.describe(), encoder.describe())

    # -- scans -----------------------------------------------------------------------------------

    @staticmethod
    def scan_row(s: Session, name: str) -> ScanRow | None:
        """The indexed scan row called ``name``, or None."""
        return s.scalars(select(ScanRow).where(ScanRow.name == name, ScanRow.status == STATUS_INDEXED)).first()

    @staticmethod
    def _scan_infos(s: Session, where: Any = None) -> list[ScanInfo]:
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
        return [scan_info_from_row(row, n, m) for row, n, m in s.execute(stmt)]

    def find_scan(self, name: str) -> ScanInfo | None:
        """The indexed scan called ``name``, or None; its ``problem`` says if its point file is damaged
        (every byte is checked against the recorded CRC-32: a few MB)."""
        with self._catalog.transaction() as s:
            found = self._scan_infos(s, ScanRow.name == name)
            row = self.scan_row(s, name)
            facts = (row.points_size, row.points_crc32) if row is not None else (None, None)
        if not found:
            return None
        found[0].problem = self._points.problem(found[0].id, *facts)
        return found[0]

    def scans(self) -> list[ScanInfo]:
        """All indexed scans, by name."""
        with self._catalog.transaction() as s:
            return self._scan_infos(s)

    def is_unchanged(self, name: str, content_hash: str) -> bool:
        """True when ``name`` is indexed with this ``content_hash`` and its point file is intact (re-indexing
        it would be a no-op). A damaged or missing point file makes it changed, so re-indexing repairs it."""
        scan = self.find_scan(name)
        return scan is not None and scan.content_hash == content_hash and scan.problem is None

    def scan_points(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) float32 xyz and (N, 3) uint8 rgb of an indexed scan; NotFoundError if unknown."""
        with self._catalog.transaction() as s:
            row = self.scan_row(s, name)
            if row is None:
                raise NotFoundError(f"no indexed scan named {name!r}")
            scan_id, facts = row.id, (row.points_size, row.points_crc32)
        return self._points.read(scan_id, *facts)

    # -- instances -------------------------------------------------------------------------------

    def instances_by_ids(self, ids: Iterable[int]) -> dict[int, InstanceInfo]:
        """Metadata of these instances of indexed scans, keyed by id (unknown ids are left out)."""
        wanted = storable_ids(ids)
        out: dict[int, InstanceInfo] = {}
        with self._catalog.transaction() as s:
            for chunk in chunks(wanted):  # one query unless more than IN_CHUNK ids
                stmt = (
                    select(*_INFO_COLUMNS)
                    .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
                    .where(InstanceRow.id.in_(chunk), ScanRow.status == STATUS_INDEXED)
                )
                out.update((r.id, instance_info_from_row(r)) for r in s.execute(stmt))
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
            row = self.scan_row(s, scan_name)
            if row is None:
                raise NotFoundError(f"no indexed scan named {scan_name!r}")
            stmt = (
                select(*_INFO_COLUMNS)
                .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
                .where(InstanceRow.scan_id == row.id)
                .order_by(InstanceRow.mask_index)
            )
            return [instance_info_from_row(r) for r in s.execute(stmt)]

    def instance_columns(self, id: int, *columns: Any) -> Row:
        """These columns of an instance of an indexed scan; NotFoundError if there is none."""
        key = _storable_id(id)
        r = None
        if key is not None:
            with self._catalog.transaction() as s:
                r = s.execute(
                    select(*columns)
                    .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
                    .where(InstanceRow.id == key, ScanRow.status == STATUS_INDEXED)
                ).first()
        if r is None:
            raise NotFoundError(f"no instance with id {id}")
        return r

    def instance_points(self, id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) uint32 point indices exactly as stored, their (n, 3) float32 xyz and (n, 3) uint8 rgb."""
        scan_id, blob, size, crc = self.instance_columns(
            id, InstanceRow.scan_id, InstanceRow.point_indices, ScanRow.points_size, ScanRow.points_crc32
        )
        try:
            idx = decode_indices(blob)
        except ValueError as exc:
            raise StoreError(f"instance {id}: its stored mask is damaged ({exc}); run verify") from exc
        xyz, rgb = self._points.read(scan_id, size, crc)
        if idx.size and int(idx[-1]) >= len(xyz):
            raise StoreError(
                f"instance {id}: point index {int(idx[-1])} is beyond {self._points.path(scan_id)} "
                f"({len(xyz)} points); run verify"
            )
        return idx, xyz[idx], rgb[idx]

    def instance_vector(self, id: int) -> np.ndarray | None:
        """(D,) float32 (from the stored float16 copy), or None for an unsearchable instance."""
        (blob,) = self.instance_columns(id, InstanceRow.vector)
        return None if blob is None else blob_to_vector(blob)

    def thumbnail(self, id: int) -> bytes | None:
        """The instance's JPEG thumbnail, or None."""
        (blob,) = self.instance_columns(id, InstanceRow.thumbnail)
        return blob

    def _blobs(self, ids: Iterable[int], column: Any) -> dict[int, bytes]:
        """``{id: blob}`` of one column for these instances of indexed scans (NULL blobs left out), in bulk."""
        wanted = storable_ids(ids)
        out: dict[int, bytes] = {}
        with self._catalog.transaction() as s:
            for chunk in chunks(wanted):
                stmt = (
                    select(_INSTANCES.c.id, column)
                    .join(_SCANS, _SCANS.c.id == _INSTANCES.c.scan_id)
                    .where(_INSTANCES.c.id.in_(chunk), _SCANS.c.status == STATUS_INDEXED, column.is_not(None))
                )
                out.update((int(i), b) for i, b in s.connection().execute(stmt).all())
        return out

    def instance_indices(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """``{id: sorted (n,) uint32 point indices}`` of each existing instance (unknown ids left out)."""
        out: dict[int, np.ndarray] = {}
        for iid, blob in self._blobs(ids, _INSTANCES.c.point_indices).items():
            try:
                out[iid] = decode_indices(blob)
            except ValueError as exc:
                raise StoreError(f"instance {iid}: its stored mask is damaged ({exc}); run verify") from exc
        return out

    def instance_vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """``{id: (D,) float32}`` from the stored float16 copies (unknown and unsearchable ids left out)."""
        return {i: blob_to_vector(b) for i, b in self._blobs(ids, _INSTANCES.c.vector).items()}
