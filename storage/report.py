"""What a home holds (:func:`stats`) and whether it is healthy (:func:`verify`). Both only read."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import func, select

from scenegrep.storage.backends import EMBEDDED, VectorBackend
from scenegrep.storage.catalog import (
    STATUS_INDEXED,
    STATUS_PENDING,
    Catalog,
    InstanceRow,
    ScanRow,
    SegmentRow,
    TombstoneRow,
)
from scenegrep.storage.errors import StoreError, VectorIndexError
from scenegrep.storage.home import HomeLayout
from scenegrep.storage.maskcodec import decode_indices
from scenegrep.storage.pointfiles import PointFiles
from scenegrep.storage.records import EncoderIdentity
from scenegrep.storage.recovery import segment_count_problems
from scenegrep.storage.segfiles import SegmentMeta, open_segment, segment_problem
from scenegrep.storage.segments import Segments

__all__ = ["stats", "verify"]


def _size(paths: Iterable[Path]) -> int:
    total = 0
    for p in paths:
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:  # deleted since it was listed (a writer's merge, a temp file renamed)
            continue
    return total


def stats(
    layout: HomeLayout,
    catalog: Catalog,
    segments: Segments,
    encoder: EncoderIdentity | None,
    vectors: VectorBackend | None = None,
) -> dict[str, Any]:
    """Counts and sizes: home, scans, instances, searchable, vectors (live, searchable), dim, encoder,
    generation (the commit number), segments, tombstones, index_types ({factory: segments}), bytes_*;
    with a Milvus ``vectors`` backend also vectors_uri, milvus_collection, milvus_entities."""
    with catalog.transaction() as s:
        segments.sync(s)
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
    snap = segments.snapshot
    assert snap is not None
    types: dict[str, int] = {}
    for meta in snap.segments.values():
        types[meta.factory] = types.get(meta.factory, 0) + 1
    external = vectors is not None and vectors.uri != EMBEDDED
    out = {
        "home": str(layout.root),
        "scans": int(n_scans),
        "instances": int(n_inst),
        "searchable": int(n_search),
        "vectors": vectors.count() if external and vectors is not None else snap.live,
        "dim": encoder.dim if encoder is not None else None,
        "encoder": encoder.describe() if encoder is not None else None,
        "generation": snap.commit,
        "segments": len(snap.segments),
        "tombstones": int(sum(t.size for t in snap.tombstones.values())),
        "index_types": types,
        # a server database has no files here: it reports its own size
        "bytes_catalog": catalog.database_size() if catalog.path is None else _size(layout.catalog_files),
        "bytes_vectors": _size(layout.vectors.iterdir()),
        "bytes_points": _size(layout.points.iterdir()),
    }
    if external and vectors is not None:
        out.update(vectors.stats())
    return out


def _segment_ids(folder: Path, meta: SegmentMeta, dim: int) -> np.ndarray:
    """Every id stored in a segment file (IDMap's id map, or the ids of an IVF's inverted lists)."""
    index = open_segment(folder, meta, dim)
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
        for i in range(ivf.nlist)
        if invlists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def verify(
    catalog: Catalog,
    segments: Segments,
    points: PointFiles,
    encoder: EncoderIdentity | None,
    *,
    full: bool = True,
    vectors: VectorBackend | None = None,
    keep: Path | None = None,
) -> list[str]:
    """Check every invariant the store relies on; returns one line per problem (empty = healthy).

    ``full``: check every byte of every segment and point file against its CRC-32 and compare each
    segment's ids with the catalog's (reads the whole home); otherwise sizes, edge checksums and counts.
    Always decodes every mask. A Milvus ``vectors`` backend replaces the segment checks by its own
    (storage/milvus.py); ``keep``: a milvus-lite file under ``vectors/`` that is not a stray.
    """
    external = vectors is not None and vectors.uri != EMBEDDED
    problems: list[str] = []
    dim = encoder.dim if encoder else 0
    with catalog.transaction() as s:
        pending = s.scalars(select(ScanRow.name).where(ScanRow.status == STATUS_PENDING)).all()
        problems += [f"scan {n!r} is pending (a write in progress or interrupted)" for n in pending]
        scans = {r.id: r for r in s.scalars(select(ScanRow).where(ScanRow.status == STATUS_INDEXED))}
        metas = {r.id: SegmentMeta.from_row(r) for r in s.scalars(select(SegmentRow).order_by(SegmentRow.id))}
        if scans and encoder is None:
            problems.append("scans exist but no encoder is recorded")
        if not external:
            problems += list(segment_count_problems(s, metas).values())
        damaged: set[int] = set()
        for seg_id, meta in metas.items():
            found = segment_problem(segments.folder, meta, full=full)
            if found is not None:
                problems.append(found)
                damaged.add(seg_id)
        if full and encoder is not None:
            table = InstanceRow.__table__
            for seg_id, meta in metas.items():
                if seg_id in damaged:
                    continue
                try:
                    stored = np.sort(_segment_ids(segments.folder, meta, dim))
                except VectorIndexError as exc:
                    problems.append(str(exc))
                    continue
                owned = s.connection().execute(select(table.c.id).where(table.c.segment_id == seg_id)).scalars().all()
                dead_ids = s.connection().execute(
                    select(TombstoneRow.id).where(TombstoneRow.segment_id == seg_id)
                ).scalars().all()
                want = np.sort(np.array(list(owned) + list(dead_ids), np.int64))
                if not np.array_equal(stored, want):
                    problems.append(f"segment {meta.filename}: its ids differ from the catalog's")
        for scan_id, scan in scans.items():
            found = points.problem(scan_id, scan.points_size, scan.points_crc32) if full else None
            if found is not None:
                problems.append(found)
                continue
            try:
                xyz, rgb = points.read(scan_id)
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
        vec_bytes = 2 * encoder.dim if encoder else None
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
    live_files = {m.filename for m in metas.values()}
    problems += [
        f"stray file {f}" for f in segments.folder.iterdir() if f.name not in live_files and (keep is None or f != keep)
    ]
    if external and vectors is not None:
        problems += vectors.verify(full)
    problems += [f"stray file {f}" for f in points.strays(all_ids)]
    return problems
