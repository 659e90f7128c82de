"""The write protocol: adding (or replacing) scans and removing one, each with one commit point.

Following DESIGN.md "Storage: one commit point, cost by the batch", a write

1. checks and converts the whole batch before touching anything (bad input fails with nothing to undo);
2. writes the new scans as ``pending`` with their instances in one SQLite transaction (bulk INSERTs:
   one statement per scan for all its instances), then their point files atomically;
3. stages the batch's vectors with the home's vector backend (storage/backends.py): the embedded
   backend writes one new immutable segment file (storage/segfiles.py), Milvus inserts them under a
   recorded id range (storage/milvus.py); then commits in one transaction that also makes the new scans
   ``indexed``, points their instances at the segment (embedded), records the vectors of replaced scans
   as deleted (tombstones, or Milvus deletes to apply) and deletes those scans (:meth:`Segments.commit`:
   the commit point). Removing a scan writes no file at all: recorded deletes and a delete, one transaction.
4. after the commit, the backend's follow-up: the automatic merge policy (storage/merge.py) may merge
   small segments; Milvus applies the committed deletes.

Anything that fails before the commit point is undone before the error propagates, so the previous
state stays usable; a crash is undone by the recovery that runs when the next writer opens the home.
Segments hold the float16-rounded vectors the catalog stores, so any segment can be rebuilt from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import (
    STATUS_INDEXED,
    STATUS_PENDING,
    Catalog,
    EncoderRow,
    InstanceRow,
    ScanRow,
    TombstoneRow,
    utcnow,
)
from scenegrep.storage.backends import VectorBackend, VectorBatch, scan_fields
from scenegrep.storage.errors import NotFoundError, ScanExistsError, StoreError
from scenegrep.storage.indextypes import factory_for
from scenegrep.storage.pointfiles import PointFiles
from scenegrep.storage.reads import CatalogReader, chunks
from scenegrep.storage.segfiles import SegmentMeta, write_segment
from scenegrep.storage.segments import Segments
from scenegrep.storage.records import (
    EncoderIdentity,
    InstanceEntry,
    ScanEntry,
    instance_row_values,
    stored_vectors,
)

__all__ = ["Writer"]

log = logging.getLogger(__name__)


@dataclass
class _PreparedScan:
    """One scan of a batch, converted to catalog values before anything is written.

    Attributes:
        entry: the scan as given.
        values: its ``scans`` columns (status and encoder added at insert time).
        instances: the ``instances`` columns of each instance, in mask_index order (scan_id added later).
        vector_masks: (m,) mask indices of the instances with a vector, ascending.
        vectors: (m, D) float32, the float16-rounded vectors of those instances (what FAISS will hold).
    """

    entry: ScanEntry
    values: dict[str, Any]
    instances: list[dict[str, Any]]
    vector_masks: np.ndarray
    vectors: np.ndarray


def _prepare(scan: ScanEntry, instances: list[InstanceEntry], dim: int) -> _PreparedScan:
    if not isinstance(scan, ScanEntry):
        raise TypeError(f"expected ScanEntry, got {type(scan).__name__}")
    rows: list[dict[str, Any]] = []
    masks: list[int] = []
    vecs: list[np.ndarray] = []
    for mask_index, inst in enumerate(instances):
        if not isinstance(inst, InstanceEntry):
            raise TypeError(f"expected InstanceEntry, got {type(inst).__name__}")
        rows.append(instance_row_values(scan, mask_index, inst, dim))
        if inst.vector is not None:
            masks.append(mask_index)
            vecs.append(inst.vector)
    vectors = stored_vectors(np.stack(vecs)) if vecs else np.zeros((0, dim), np.float32)
    return _PreparedScan(scan, scan.row_values(), rows, np.array(masks, np.int64), vectors)


def _batch(prepared: list[_PreparedScan], ids: np.ndarray) -> VectorBatch:
    """The staged vectors of a batch with the filterable fields of each (scan name, tags, point count,
    extent, proposer), in the order of ``ids``."""
    scans: list[str] = []
    tags: list[list[str]] = []
    proposers: list[str] = []
    points: list[int] = []
    extents: list[float] = []
    for p in prepared:
        scan_tags, proposer = scan_fields(p.entry.tags, p.entry.info)
        n = int(p.vector_masks.size)
        scans += [p.entry.name] * n
        tags += [scan_tags] * n
        proposers += [proposer] * n
        for m in p.vector_masks.tolist():
            points.append(int(p.instances[m]["point_count"]))
            extents.append(float(p.instances[m]["extent"]))
    dim = prepared[0].vectors.shape[1] if prepared else 0
    vectors = np.concatenate([p.vectors for p in prepared]) if prepared else np.zeros((0, dim), np.float32)
    return VectorBatch(ids, vectors, scans, tags, np.array(points, np.int64), np.array(extents, np.float64), proposers)


class Writer:
    """Writes of one home (the store holds the writer lock while this exists)."""

    def __init__(
        self, catalog: Catalog, points: PointFiles, segments: Segments, reader: CatalogReader, vectors: VectorBackend
    ):
        self._catalog = catalog
        self._points = points
        self._segments = segments
        self._reader = reader
        self._vectors = vectors

    def add_scans(
        self,
        batch: list[tuple[ScanEntry, list[InstanceEntry]]],
        encoder: EncoderIdentity,
        replace: bool = False,
    ) -> list[int]:
        """Store scans with their instances in one commit (see the module docstring).

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
        self._reader.check_encoder(encoder)
        names = [scan.name for scan, _ in batch]
        if len(set(names)) != len(names):
            raise ValueError("a batch must not hold two scans of the same name")
        prepared = [_prepare(scan, instances, encoder.dim) for scan, instances in batch]
        encoder_values = encoder.row_values()
        with self._catalog.transaction() as s:
            replaced = dict(
                s.execute(select(ScanRow.name, ScanRow.id).where(ScanRow.name.in_(names), ScanRow.status == STATUS_INDEXED)).all()
            )
        if replaced and not replace:
            raise ScanExistsError(
                f"scan {', '.join(sorted(map(repr, replaced)))} is already indexed; pass replace to re-index it"
            )
        if not batch:
            return []

        new_ids: list[int] = []
        created_encoder: list[int] = []
        staged: Any = None
        try:
            # step 1: pending rows, then point files
            with self._catalog.transaction() as s:
                encoder_id = self._encoder_id(s, encoder_values, created_encoder)
                for scan in prepared:
                    new_ids.append(self._insert_pending(s, scan, encoder_id))
                new_vector_ids = self._vector_ids(s, new_ids, prepared)
            facts = [self._points.write(i, p.entry.points, p.entry.colors) for i, p in zip(new_ids, prepared)]

            # step 2: the batch's vectors, staged (one new segment file, or a Milvus insert)
            staged = self._vectors.stage(_batch(prepared, new_vector_ids))

            # step 3: the commit point
            def apply(s: Session, segment_ids: list[int]) -> None:
                if replaced:  # first: names are unique among indexed scans
                    self._vectors.record_deletes(s, list(replaced.values()))
                    s.execute(delete(ScanRow).where(ScanRow.id.in_(list(replaced.values()))))
                for scan_id, fact in zip(new_ids, facts):
                    s.execute(
                        update(ScanRow)
                        .where(ScanRow.id == scan_id)
                        .values(
                            status=STATUS_INDEXED,
                            indexed_at=utcnow(),
                            points_size=fact.size,
                            points_crc32=fact.crc32,
                        )
                    )
                if segment_ids:
                    s.execute(
                        update(InstanceRow)
                        .where(InstanceRow.scan_id.in_(new_ids), InstanceRow.searchable.is_(True))
                        .values(segment_id=segment_ids[0])
                    )

            self._vectors.commit(apply, staged)
        except BaseException:
            self._undo_pending(new_ids, created_encoder[0] if created_encoder else None)
            self._vectors.abort(staged)  # also after a stage that failed half-way (Milvus reads its record)
            raise
        for scan_id in replaced.values():
            self._points.delete(scan_id)
        log.info(
            "indexed %d scan(s) (%d replaced): %d vectors in a new segment, commit %s",
            len(new_ids),
            len(replaced),
            new_vector_ids.size,
            self._segments.snapshot.commit if self._segments.snapshot else None,
        )
        self._vectors.after_commit()
        return new_ids

    @staticmethod
    def _encoder_id(s: Session, values: dict[str, Any], created: list[int]) -> int:
        """The catalog's encoder row id, inserting it on the first write (its id is appended to ``created``)."""
        existing = s.scalar(select(EncoderRow.id).order_by(EncoderRow.id).limit(1))
        if existing is not None:
            return int(existing)
        new_id = int(s.execute(insert(EncoderRow).values(**values, created_at=utcnow()).returning(EncoderRow.id)).scalar_one())
        created.append(new_id)
        return new_id

    @staticmethod
    def _insert_pending(s: Session, scan: _PreparedScan, encoder_id: int) -> int:
        """Insert a pending scan row and all its instance rows (one executemany); returns the scan id."""
        scan_id = int(
            s.execute(
                insert(ScanRow)
                .values(**scan.values, status=STATUS_PENDING, encoder_id=encoder_id)
                .returning(ScanRow.id)
            ).scalar_one()
        )
        if scan.instances:
            s.connection().execute(insert(InstanceRow.__table__), [{**r, "scan_id": scan_id} for r in scan.instances])
        return scan_id

    @staticmethod
    def _vector_ids(s: Session, scan_ids: list[int], prepared: list[_PreparedScan]) -> np.ndarray:
        """The instance ids AUTOINCREMENT gave the vectors of ``prepared``, in the order of its vectors."""
        table = InstanceRow.__table__
        got: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for chunk in chunks(scan_ids):
            rows = (
                s.connection()
                .execute(
                    select(table.c.scan_id, table.c.mask_index, table.c.id)
                    .where(table.c.scan_id.in_(chunk), table.c.searchable.is_(True))
                    .order_by(table.c.scan_id, table.c.mask_index)
                )
                .all()
            )
            # flattened: numpy reads a list of Row objects one element at a time (slow)
            arr = np.fromiter(chain.from_iterable(rows), np.int64, count=3 * len(rows)).reshape(-1, 3)
            for scan_id in chunk:
                mine = arr[arr[:, 0] == scan_id]
                got[scan_id] = (mine[:, 1], mine[:, 2])
        ids: list[np.ndarray] = []
        for scan_id, scan in zip(scan_ids, prepared):
            masks, scan_vector_ids = got[scan_id]
            if not np.array_equal(masks, scan.vector_masks):  # a bug, never bad input
                raise StoreError(f"scan {scan.entry.name}: the catalog holds other searchable instances than written")
            ids.append(scan_vector_ids)
        return np.concatenate(ids) if ids else np.zeros(0, np.int64)

    def remove_scan(self, name: str) -> int:
        """Remove an indexed scan: one transaction records its vectors as tombstones and deletes its rows;
        then its point file goes. No segment file is written.

        Returns:
            The number of instances removed (searchable or not).
        """
        with self._catalog.transaction() as s:
            row = self._reader.scan_row(s, name)
            if row is None:
                raise NotFoundError(f"no indexed scan named {name!r}")
            scan_id = row.id
            count = s.scalar(select(func.count()).where(InstanceRow.scan_id == scan_id)) or 0

        def apply(s: Session, _new: list[int]) -> None:
            self._vectors.record_deletes(s, [scan_id])
            s.execute(delete(ScanRow).where(ScanRow.id == scan_id))

        self._vectors.commit(apply, None)
        self._points.delete(scan_id)
        log.info("removed scan %s (%d instances)", name, count)
        self._vectors.after_commit()
        return int(count)

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
                self._points.delete(scan_id)


def write_batch_segment(folder: Path, ids: np.ndarray, vectors: np.ndarray) -> SegmentMeta:
    """A write's vectors as one new segment file, not live until the commit (the embedded backend's stage)."""
    return write_segment(folder, ids, vectors, factory_for(len(ids), int(vectors.shape[1])))


def tombstone(s: Session, scan_ids: list[int]) -> None:
    """Record the segment vectors of these scans' instances as tombstones (one INSERT ... SELECT)."""
    table = InstanceRow.__table__
    s.execute(
        insert(TombstoneRow.__table__).from_select(
            ["id", "segment_id"],
            select(table.c.id, table.c.segment_id).where(
                table.c.scan_id.in_(scan_ids), table.c.segment_id.is_not(None)
            ),
        )
    )
