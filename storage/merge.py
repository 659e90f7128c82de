"""Merging segments: ``Store.optimize()`` and the automatic policy writers run after each commit.

A merge reads the live vectors of the chosen segments from the catalog's float16 copies (tombstoned
ones are gone from the catalog, so they are dropped), writes them as one new segment of the type their
count calls for (storage/indextypes.py: Flat, or IVF trained on a seeded sample of these very vectors),
and commits in one
transaction: the new row goes in, the instances point at it, the old rows (and their tombstones) go.
Only then are the old files deleted. The vectors stream: the ids first, then the training sample, then
:data:`BATCH` vectors at a time into the index, so merging 1M 768-d vectors holds the SQ8 index (~0.8 GB)
and one batch, not every vector as float32 (3 GB, plus copies). A crash before the commit leaves an orphan file the next writer's
recovery deletes; after it, old files the recovery deletes likewise. Readers keep the files they mapped.

Automatic policy (tiered, after Lucene's TieredMergePolicy, simplified):

- a segment's tier is floor(log10(live vectors)); when one tier holds :data:`MERGE_FACTOR` (10) or more
  segments, its smallest :data:`MERGE_FACTOR` are merged into one (which lands a tier up), as long as the
  result stays at most :data:`AUTO_MAX` vectors;
- a segment of at most :data:`AUTO_MAX` vectors whose tombstones reach :data:`TOMBSTONE_RATIO` of it is
  rewritten without them.

So a home filled one 200-instance scan at a time rewrites each vector about log10(AUTO_MAX / 200) = 3
times, and a commit never pays for more than AUTO_MAX vectors. Bigger merges (and one IVF segment for
the whole collection, the fastest to search) are left to an explicit ``optimize()``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import Catalog, InstanceRow
from scenegrep.storage.fileio import unlink_quietly
from scenegrep.storage.indextypes import factory_for
from scenegrep.storage.reads import chunks
from scenegrep.storage.records import VECTOR_DTYPE
from scenegrep.storage.indextypes import training_positions
from scenegrep.storage.segfiles import SegmentMeta, write_segment_stream
from scenegrep.storage.segments import Segments, Snapshot

__all__ = [
    "Merger",
    "MergeReport",
    "plan_auto",
    "live_ids",
    "vector_batches",
    "vectors_by_id",
    "MERGE_FACTOR",
    "AUTO_MAX",
    "TOMBSTONE_RATIO",
    "BATCH",
]

log = logging.getLogger(__name__)

MERGE_FACTOR = 10
AUTO_MAX = 250_000  # vectors: the largest segment an automatic merge writes
TOMBSTONE_RATIO = 0.3
BATCH = 50_000  # vectors per batch a merge adds to the new index (150 MB of float32 at 768-d)


@dataclass
class MergeReport:
    """What a merge did.

    Attributes:
        merged: segments merged (their count). dropped: tombstoned vectors dropped.
        vectors: live vectors written. factory: the new segment's type (None when nothing was written).
    """

    merged: int = 0
    dropped: int = 0
    vectors: int = 0
    factory: str | None = None


def _live(snap: Snapshot, seg_id: int) -> int:
    dead = snap.tombstones.get(seg_id)
    return snap.segments[seg_id].ntotal - (0 if dead is None else int(dead.size))


def plan_auto(snap: Snapshot) -> list[int] | None:
    """The segment ids the automatic policy merges next, or None (see the module docstring)."""
    tiers: dict[int, list[int]] = {}
    for seg_id in snap.segments:
        live = _live(snap, seg_id)
        if live <= AUTO_MAX and snap.segments[seg_id].ntotal - live >= TOMBSTONE_RATIO * snap.segments[seg_id].ntotal:
            return [seg_id]
        tiers.setdefault(int(math.log10(max(live, 1))), []).append(seg_id)
    for tier in sorted(tiers):
        members = sorted(tiers[tier], key=lambda i: (_live(snap, i), i))
        if len(members) >= MERGE_FACTOR:
            pick = members[:MERGE_FACTOR]
            if sum(_live(snap, i) for i in pick) <= AUTO_MAX:
                return pick
    return None


class Merger:
    """Merges segments of one home (the writer's)."""

    def __init__(self, catalog: Catalog, segments: Segments):
        self._catalog = catalog
        self._segments = segments

    def auto(self) -> list[MergeReport]:
        """Run the automatic policy until it has nothing left to merge."""
        done: list[MergeReport] = []
        while True:
            snap = self._segments.snapshot
            plan = plan_auto(snap) if snap is not None else None
            if not plan:
                return done
            done.append(self.merge(plan))

    def optimize(self) -> MergeReport:
        """Merge every segment into one without tombstones, of the type its size calls for (a no-op when
        there is one such segment already)."""
        with self._catalog.transaction() as s:
            self._segments.sync(s)
        snap = self._segments.snapshot
        if snap is None or not snap.segments:
            return MergeReport()
        ids = list(snap.segments)
        if len(ids) == 1 and not snap.tombstones.get(ids[0], np.zeros(0)).size:
            meta = snap.segments[ids[0]]
            if meta.factory == factory_for(meta.ntotal, snap.dim or 0):
                return MergeReport(0, 0, meta.ntotal, meta.factory)
        return self.merge(ids)

    def merge(self, segment_ids: list[int]) -> MergeReport:
        """Merge these live segments into one (dropping tombstones) in one commit; see the module docstring."""
        snap = self._segments.snapshot
        assert snap is not None
        metas = [snap.segments[i] for i in segment_ids]
        dropped = sum(int(snap.tombstones.get(i, np.zeros(0)).size) for i in segment_ids)
        dim = snap.dim or 0
        written: list[SegmentMeta] = []
        factory = None
        with self._catalog.transaction() as s:
            ids = live_ids(s, segment_ids)
            if ids.size:
                factory = factory_for(ids.size, dim)
                pick = training_positions(factory, ids.size)
                sample = vectors_by_id(s, ids[pick], dim) if pick is not None else None
                written.append(
                    write_segment_stream(
                        self._segments.folder, factory, dim, sample, vector_batches(s, segment_ids, dim)
                    )
                )
                del sample

        def apply(s: Session, new: list[int]) -> None:
            s.execute(
                update(InstanceRow)
                .where(InstanceRow.segment_id.in_(segment_ids))
                .values(segment_id=new[0] if new else None)
            )

        try:
            self._segments.commit(apply, add=written, retire=segment_ids)
        except BaseException:
            for m in written:
                unlink_quietly(self._segments.folder / m.filename)
            raise
        self._segments.delete_files(m.filename for m in metas)
        log.info(
            "merged %d segment(s) into %s: %d vectors (%d tombstones dropped)",
            len(metas),
            factory,
            ids.size,
            dropped,
        )
        return MergeReport(len(metas), dropped, int(ids.size), factory)


def live_ids(s: Session, segment_ids: list[int]) -> np.ndarray:
    """(n,) int64 ids, ascending, of the live instances of these segments."""
    table = InstanceRow.__table__
    parts = [
        np.fromiter(
            s.connection().execute(select(table.c.id).where(table.c.segment_id.in_(chunk))).scalars(), np.int64
        )
        for chunk in chunks(segment_ids)
    ]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def vectors_by_id(s: Session, ids: np.ndarray, dim: int) -> np.ndarray:
    """(len(ids), D) float32 stored vectors of these instances, in the order of ``ids`` (all must exist)."""
    table = InstanceRow.__table__
    out = np.empty((len(ids), dim), np.float32)
    where = {int(i): n for n, i in enumerate(ids.tolist())}
    for chunk in chunks(ids.tolist()):
        for iid, blob in s.connection().execute(select(table.c.id, table.c.vector).where(table.c.id.in_(chunk))):
            out[where[int(iid)]] = np.frombuffer(blob, VECTOR_DTYPE)
    return out


def vector_batches(
    s: Session, segment_ids: list[int], dim: int, batch: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, (n, D) float32 vectors)`` of the live instances of these segments, at most ``batch``
    (default :data:`BATCH`) at a time: segment by segment, ascending ids within each (its index's order)."""
    table = InstanceRow.__table__
    size = batch or BATCH
    for seg_id in sorted(segment_ids):
        result = s.connection().execute(
            select(table.c.id, table.c.vector).where(table.c.segment_id == seg_id).order_by(table.c.id)
        )
        while rows := result.fetchmany(size):
            ids = np.fromiter((r[0] for r in rows), np.int64, count=len(rows))
            blob = b"".join(r[1] for r in rows)
            yield ids, np.frombuffer(blob, VECTOR_DTYPE).reshape(len(rows), dim).astype(np.float32)
