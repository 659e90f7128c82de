"""Recovery, run whenever a writer opens a home: undo an interrupted write and make the segments agree with
the catalog again, from catalog facts and cheap file checks (it never reads every id or every byte).

1. Scans left ``pending`` (a write that never reached its commit point) are deleted with their instances;
   an encoder recorded by a first write that never committed goes too.
2. Files no catalog row points to (segments written by a write or merge that never committed, retired
   segments a crash kept from being deleted, temp files, point files of deleted scans, the generation
   files of a schema-2 home) are deleted.
3. Each live segment gets the cheap check (size and edge CRC, storage/checksums.py) and the catalog's
   count check (its ``ntotal`` = instances pointing at it + its tombstones). A segment that fails is
   dropped and its vectors are written again from the catalog's float16 copies (:func:`rebuild`), as are
   searchable instances of indexed scans with no segment (a home migrated from schema 2).
4. Point files without recorded checksums (schema 2) get them, when they can be read.

Every step logs a warning saying what it did.

A home whose vectors live in Milvus (storage/milvus.py) has no segments: steps 1, 2 (the ``vectors/``
folder holds nothing live) and 4 run, and step 3 is replaced by the backend's reconcile: deleting the
vectors of a write that died between its Milvus insert and its catalog commit (the id range it recorded
before inserting) and applying deletes that were committed but not applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import chain
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import (
    STATUS_INDEXED,
    STATUS_PENDING,
    Catalog,
    EncoderRow,
    InstanceRow,
    ScanRow,
    SegmentRow,
    TombstoneRow,
)
from scenegrep.storage.backends import EMBEDDED, VectorBackend
from scenegrep.storage.checksums import file_facts
from scenegrep.storage.fileio import unlink_quietly
from scenegrep.storage.indextypes import factory_for, training_positions
from scenegrep.storage.merge import BATCH, live_ids, vector_batches, vectors_by_id
from scenegrep.storage.pointfiles import PointFiles
from scenegrep.storage.segfiles import SegmentMeta, segment_problem, write_segment_stream
from scenegrep.storage.segments import Segments, commit_number

__all__ = ["recover", "rebuild", "segment_count_problems"]

log = logging.getLogger(__name__)

_ORPHAN = -1  # a pseudo segment id: searchable instances of indexed scans with no segment


def segment_count_problems(s: Session, segments: dict[int, SegmentMeta]) -> dict[int, str]:
    """``{segment id: problem}`` for live segments whose ntotal disagrees with the catalog's rows, plus
    :data:`_ORPHAN` when searchable instances of indexed scans have no segment. Two grouped counts."""
    table = InstanceRow.__table__
    owned = dict(
        s.connection()
        .execute(
            select(table.c.segment_id, func.count()).where(table.c.segment_id.is_not(None)).group_by(table.c.segment_id)
        )
        .all()
    )
    dead = dict(
        s.connection().execute(select(TombstoneRow.segment_id, func.count()).group_by(TombstoneRow.segment_id)).all()
    )
    problems: dict[int, str] = {}
    for seg_id, meta in segments.items():
        have = int(owned.get(seg_id, 0)) + int(dead.get(seg_id, 0))
        if have != meta.ntotal:
            problems[seg_id] = (
                f"segment {meta.filename} holds {meta.ntotal} vectors, the catalog {have} (instances + tombstones)"
            )
    orphans = s.scalar(
        select(func.count())
        .select_from(table.join(ScanRow.__table__, ScanRow.id == table.c.scan_id))
        .where(ScanRow.status == STATUS_INDEXED, table.c.searchable.is_(True), table.c.segment_id.is_(None))
    )
    if orphans:
        problems[_ORPHAN] = f"{orphans} searchable instance(s) of indexed scans have no segment"
    return problems


def recover(
    catalog: Catalog,
    segments: Segments,
    points: PointFiles,
    vectors: VectorBackend | None = None,
    keep: Path | None = None,
) -> None:
    """Undo an interrupted write and check the segments against the catalog (see the module docstring).

    ``vectors``: the home's backend (None or embedded: the segment checks; else its reconcile).
    ``keep``: a path under ``vectors/`` that is not a stray (a milvus-lite file kept there).
    Leaves ``segments`` synced with the current (possibly rebuilt) state.
    """
    external = vectors is not None and vectors.uri != EMBEDDED
    with catalog.transaction() as s:
        pending = s.scalars(select(ScanRow.name).where(ScanRow.status == STATUS_PENDING)).all()
        if pending:
            log.warning(
                "recovery: deleting %d scan(s) left pending by an interrupted write: %s",
                len(pending),
                ", ".join(pending),
            )
            s.execute(delete(ScanRow).where(ScanRow.status == STATUS_PENDING))
        if not s.scalar(select(func.count(ScanRow.id))) and commit_number(s) == 0:
            s.execute(delete(EncoderRow))  # recorded by a first write that never reached its commit point
        metas = {r.id: SegmentMeta.from_row(r) for r in s.scalars(select(SegmentRow))}
        scan_ids = set(s.scalars(select(ScanRow.id)))
        dim = s.scalar(select(EncoderRow.dim).order_by(EncoderRow.id).limit(1))
        problems = segment_count_problems(s, metas)
    live_files = {m.filename for m in metas.values()}
    for f in segments.folder.iterdir():
        if f.name not in live_files and (keep is None or f != keep):
            log.warning("recovery: deleting %s (no live segment points to it)", f)
            unlink_quietly(f)
    for f in list(points.strays(scan_ids)):
        log.warning("recovery: deleting %s (no scan row)", f)
        unlink_quietly(f)
    if external:
        assert vectors is not None
        vectors.reconcile()
        _record_point_checksums(catalog, points)
        with catalog.transaction() as s:
            segments.sync(s)
        return
    for seg_id, meta in metas.items():
        if seg_id not in problems:
            found = segment_problem(segments.folder, meta, full=False)
            if found is not None:
                problems[seg_id] = found
    if problems and dim is not None:
        for line in problems.values():
            log.warning("recovery: %s; rebuilding from the catalog", line)
        rebuild(catalog, segments, [i for i in problems if i != _ORPHAN], dim)
    _record_point_checksums(catalog, points)
    with catalog.transaction() as s:
        segments.sync(s)


def rebuild(
    catalog: Catalog,
    segments: Segments,
    segment_ids: list[int],
    dim: int,
    also: Callable[[Session], None] | None = None,
) -> int:
    """Replace these segments (and give searchable instances without a segment one) by one new segment
    built from the catalog's float16 vectors, in one commit (which also runs ``also(session)``: a
    migration's switch). Returns the vectors written."""
    table = InstanceRow.__table__
    written: list[SegmentMeta] = []
    with catalog.transaction() as s:  # streamed like a merge (storage/merge.py): bounded memory at any size
        owned = live_ids(s, segment_ids)
        orphans = np.fromiter(
            s.connection()
            .execute(
                select(table.c.id)
                .join(ScanRow.__table__, ScanRow.id == table.c.scan_id)
                .where(ScanRow.status == STATUS_INDEXED, table.c.searchable.is_(True), table.c.segment_id.is_(None))
                .order_by(table.c.id)
            )
            .scalars(),
            np.int64,
        )
        retired = {r.id: r.filename for r in s.scalars(select(SegmentRow).where(SegmentRow.id.in_(segment_ids)))}
        ids = np.sort(np.concatenate([owned, orphans]))
        if ids.size:
            factory = factory_for(ids.size, dim)
            pick = training_positions(factory, ids.size)
            sample = vectors_by_id(s, ids[pick], dim) if pick is not None else None
            orphan_batches = (
                (part, vectors_by_id(s, part, dim)) for part in np.array_split(orphans, -(-orphans.size // BATCH))
            ) if orphans.size else iter(())
            batches = chain(vector_batches(s, segment_ids, dim), orphan_batches)
            written.append(write_segment_stream(segments.folder, factory, dim, sample, batches))
    moved = orphans.tolist()  # the owned ones move with their segment_id below

    def apply(s: Session, new: list[int]) -> None:
        target = new[0] if new else None
        s.execute(update(InstanceRow).where(InstanceRow.segment_id.in_(segment_ids)).values(segment_id=target))
        for start in range(0, len(moved), 900):
            s.execute(update(InstanceRow).where(InstanceRow.id.in_(moved[start : start + 900])).values(segment_id=target))
        if also is not None:
            also(s)

    try:
        segments.commit(apply, add=written, retire=list(retired))
    except BaseException:
        for m in written:
            unlink_quietly(segments.folder / m.filename)
        raise
    segments.delete_files(retired.values())
    segments.forget_damage(retired.values())
    log.warning("recovery: wrote a segment of %d vectors from the catalog", ids.size)
    return int(ids.size)


def _record_point_checksums(catalog: Catalog, points: PointFiles) -> None:
    """Fill in the size and CRC-32 of point files written before schema 3 (once, when they can be read)."""
    with catalog.transaction() as s:
        todo = s.execute(
            select(ScanRow.id).where(ScanRow.status == STATUS_INDEXED, ScanRow.points_crc32.is_(None))
        ).scalars().all()
    for scan_id in todo:
        try:
            points.read(scan_id)
            facts = file_facts(points.path(scan_id))
        except Exception as exc:  # verify reports it; repair can re-read the scan
            log.warning("recovery: point file of scan id %d cannot be checksummed: %s", scan_id, exc)
            continue
        with catalog.transaction() as s:
            s.execute(
                update(ScanRow).where(ScanRow.id == scan_id).values(points_size=facts.size, points_crc32=facts.crc32)
            )
