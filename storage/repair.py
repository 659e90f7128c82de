"""``Store.repair()``: rebuild what a home can rebuild, and say what it cannot.

- Segments that fail their checks (missing, truncated, damaged bytes, wrong count or ids) and
  searchable instances without a segment are rewritten from the catalog's float16 vectors
  (:func:`scenegrep.storage.recovery.rebuild`: one new segment, one commit).
- Point files that are missing or damaged are rewritten by re-reading the scan from its ``source_path``
  with the caller's ``reread`` callback (storage never imports the indexer: the library passes
  ``indexer.read_scan``); the re-read points must have the recorded count, else the scan is reported.
- Stray files are deleted. A damaged catalog or mask cannot be rebuilt here: re-index those scans.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from sqlalchemy import select, update

from scenegrep.storage.catalog import STATUS_INDEXED, Catalog, ScanRow, SegmentRow
from scenegrep.storage.fileio import unlink_quietly
from scenegrep.storage.pointfiles import PointFiles
from scenegrep.storage.recovery import rebuild, segment_count_problems
from scenegrep.storage.segfiles import SegmentMeta, segment_problem
from scenegrep.storage.segments import Segments

__all__ = ["repair", "Reread"]

log = logging.getLogger(__name__)

#: ``reread(source_path) -> (points (N, 3) float32, colors (N, 3) uint8)``
Reread = Callable[[str], tuple[np.ndarray, np.ndarray]]


def repair(
    catalog: Catalog, segments: Segments, points: PointFiles, dim: int | None, reread: Reread | None
) -> tuple[list[str], list[str]]:
    """Rebuild what can be rebuilt; returns ``(done, not_done)``, one line each."""
    done: list[str] = []
    failed: list[str] = []
    with catalog.transaction() as s:
        metas = {r.id: SegmentMeta.from_row(r) for r in s.scalars(select(SegmentRow))}
        bad = segment_count_problems(s, metas)
        scans = [
            (r.id, r.name, r.source_path, r.point_count, r.points_size, r.points_crc32)
            for r in s.scalars(select(ScanRow).where(ScanRow.status == STATUS_INDEXED))
        ]
        scan_ids = set(s.scalars(select(ScanRow.id)))
    for seg_id, meta in metas.items():
        if seg_id not in bad:
            found = segment_problem(segments.folder, meta, full=True)
            if found is not None:
                bad[seg_id] = found
    if bad and dim is not None:
        n = rebuild(catalog, segments, [i for i in bad if i >= 0], dim)
        done += [f"rebuilt from the catalog: {line}" for line in bad.values()]
        done.append(f"wrote one segment of {n} vectors from the catalog's float16 vectors")
    for scan_id, name, source, count, size, crc in scans:
        found = points.problem(scan_id, size, crc)
        if found is None:
            continue
        if reread is None:
            failed.append(f"{found}: cannot rebuild it without re-reading scan {name!r} (no reader given)")
            continue
        try:
            xyz, rgb = reread(source)
            xyz = np.ascontiguousarray(xyz, np.float32)
            rgb = np.ascontiguousarray(rgb, np.uint8)
        except Exception as exc:  # any reader error: report it, keep repairing the rest
            failed.append(f"{found}: re-reading scan {name!r} from {source} failed: {exc}")
            continue
        if xyz.shape != (count, 3) or rgb.shape != (count, 3):
            failed.append(f"{found}: scan {name!r} at {source} now has {len(xyz)} points, not {count}; re-index it")
            continue
        facts = points.write(scan_id, xyz, rgb)
        with catalog.transaction() as s:
            s.execute(update(ScanRow).where(ScanRow.id == scan_id).values(points_size=facts.size, points_crc32=facts.crc32))
        done.append(f"rewrote {points.path(scan_id)} from {source}")
    live_files = {m.filename for m in segments.snapshot.segments.values()} if segments.snapshot else set()
    for f in segments.folder.iterdir():
        if f.name not in live_files:
            unlink_quietly(f)
            done.append(f"deleted stray file {f}")
    for f in list(points.strays(scan_ids)):
        unlink_quietly(f)
        done.append(f"deleted stray file {f}")
    for line in done:
        log.warning("repair: %s", line)
    return done, failed
