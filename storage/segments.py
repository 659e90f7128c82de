"""The live segments of a home: the snapshot a store searches, opening segment files, and the commit point.

Each commit (an add, a remove, a merge) is one SQLite transaction that inserts the new ``segments`` rows,
deletes retired ones, applies the caller's catalog change (scan status, tombstones, ...) and increments
``store_state.commit``: that transaction is the commit point. A :class:`Snapshot` is what one read
transaction saw: the live segments, their tombstones and the commit number. Readers compare the commit
number (one indexed read) before each search and reload the snapshot when it moved, in the same read
transaction that then fetches a filter's ids, so segments, tombstones and ids always agree.

Checks (storage/checksums.py): taking a snapshot checks each new segment's size and edge CRC (cheap);
the first time this process opens a segment for searching it checks the CRC of every byte once (segments
are immutable, so once per process is enough), then memory-maps it. A failed check is a one-line
:class:`DamagedSegmentError` naming the file for every search that needs it, never a silent wrong answer.
"""

from __future__ import annotations

import logging
from itertools import chain
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import Catalog, EncoderRow, SegmentRow, StateRow, TombstoneRow
from scenegrep.storage.errors import VectorIndexError
from scenegrep.storage.fileio import unlink_quietly
from scenegrep.storage.segfiles import SegmentMeta, open_segment, segment_problem

__all__ = ["Segments", "Snapshot", "DamagedSegmentError", "commit_number"]

log = logging.getLogger(__name__)

COMMIT_KEY = "commit"


class DamagedSegmentError(VectorIndexError):
    """A segment file does not match its catalog checksums; ``scenegrep verify --repair`` rebuilds it."""


def commit_number(s: Session) -> int:
    """The number of the last commit (0 for a home never written)."""
    return int(s.scalar(select(StateRow.value).where(StateRow.key == COMMIT_KEY)) or 0)


@dataclass
class Snapshot:
    """The live vector state as of one commit.

    Attributes:
        commit: the commit number. dim: vector dimension (None before the first commit).
        segments: live segments by id, in id order.
        tombstones: per segment id, the sorted int64 ids of its vectors that are no longer live.
        live: searchable vectors in all (segment counts minus tombstones).
    """

    commit: int
    dim: int | None
    segments: dict[int, SegmentMeta]
    tombstones: dict[int, np.ndarray]
    live: int
    _selectors: dict[int, faiss.IDSelector] = field(default_factory=dict, repr=False)

    def tombstone_selector(self, segment_id: int) -> faiss.IDSelector | None:
        """An IDSelector that excludes the segment's tombstones (None when it has none); cached."""
        dead = self.tombstones.get(segment_id)
        if dead is None or dead.size == 0:
            return None
        sel = self._selectors.get(segment_id)
        if sel is None:
            batch = faiss.IDSelectorBatch(dead)
            sel = faiss.IDSelectorNot(batch)
            sel.referenced = batch  # keep the inner selector alive as long as the outer one
            self._selectors[segment_id] = sel
        return sel


def _load_snapshot(s: Session) -> Snapshot:
    segments = {r.id: SegmentMeta.from_row(r) for r in s.scalars(select(SegmentRow).order_by(SegmentRow.id))}
    rows = s.connection().execute(
        select(TombstoneRow.segment_id, TombstoneRow.id).order_by(TombstoneRow.segment_id, TombstoneRow.id)
    ).all()
    tombs: dict[int, np.ndarray] = {}
    if rows:
        arr = np.fromiter(chain.from_iterable(rows), np.int64, count=2 * len(rows)).reshape(-1, 2)
        cuts = np.flatnonzero(np.diff(arr[:, 0])) + 1
        for part in np.split(arr, cuts):
            tombs[int(part[0, 0])] = part[:, 1].copy()
    dim = s.scalar(select(EncoderRow.dim).order_by(EncoderRow.id).limit(1))
    live = sum(m.ntotal for m in segments.values()) - sum(len(t) for t in tombs.values())
    return Snapshot(commit_number(s), dim, segments, tombs, int(live))


class Segments:
    """The snapshot a store searches and the segment files it has open.

    Attributes:
        folder: ``<home>/vectors``.
        snapshot: the current snapshot (None until :meth:`sync` first ran).
    """

    def __init__(self, folder: Path, catalog: Catalog):
        self.folder = folder
        self._catalog = catalog
        self.snapshot: Snapshot | None = None
        self._open: dict[str, faiss.Index] = {}  # filename -> mapped index (checked in full once)
        self._damaged: dict[str, str] = {}  # filename -> one-line problem

    def clear(self) -> None:
        """Forget the snapshot and unmap every segment (on close)."""
        self.snapshot = None
        self._open.clear()

    # -- reading ---------------------------------------------------------------------------------

    def sync(self, s: Session) -> bool:
        """Bring the snapshot up to the commit ``s`` sees; True when it changed. Cheap when it did not."""
        number = commit_number(s)
        if self.snapshot is not None and self.snapshot.commit == number:
            return False
        snap = _load_snapshot(s)
        live_files = {m.filename for m in snap.segments.values()}
        for name in [n for n in self._open if n not in live_files]:
            del self._open[name]  # unmapped; a merge deleted or will delete the file
        for meta in snap.segments.values():  # the cheap check of every segment new to this process
            if meta.filename not in self._open and meta.filename not in self._damaged:
                problem = segment_problem(self.folder, meta, full=False)
                if problem is not None and "missing" not in problem:  # missing: maybe retired meanwhile
                    self._mark_damaged(meta, problem)
        self.snapshot = snap
        return True

    def refresh(self) -> bool:
        """Follow a newer commit if there is one; True when the snapshot changed."""
        with self._catalog.transaction() as s:
            return self.sync(s)

    def _mark_damaged(self, meta: SegmentMeta, problem: str) -> None:
        log.error("%s", problem)
        self._damaged[meta.filename] = problem

    def damaged(self) -> list[str]:
        """One line per live segment found damaged by this process so far."""
        live = {m.filename for m in self.snapshot.segments.values()} if self.snapshot else set()
        return [p for name, p in self._damaged.items() if name in live]

    def index(self, meta: SegmentMeta) -> faiss.Index:
        """The mapped FAISS index of a live segment (checked in full the first time).

        Raises:
            DamagedSegmentError: the file fails its checksums (one line naming it; repair rebuilds it).
            FileNotFoundError: the file is gone (retired by a merge after this snapshot: re-sync, retry).
            VectorIndexError: FAISS cannot read it.
        """
        index = self._open.get(meta.filename)
        if index is not None:
            return index
        problem = self._damaged.get(meta.filename)
        if problem is None:
            problem = segment_problem(self.folder, meta, full=True)
            if problem is not None and problem.endswith("missing"):
                raise FileNotFoundError(self.folder / meta.filename)
            if problem is not None:
                self._mark_damaged(meta, problem)
        if problem is not None:
            raise DamagedSegmentError(f"{problem}; searches cannot use it (run `scenegrep verify --repair`)")
        assert self.snapshot is not None and self.snapshot.dim is not None
        index = open_segment(self.folder, meta, self.snapshot.dim)
        self._open[meta.filename] = index
        return index

    def forget_damage(self, filenames: Iterable[str]) -> None:
        """Drop recorded damage of these files (after a repair replaced them)."""
        for name in filenames:
            self._damaged.pop(name, None)

    # -- the commit point ------------------------------------------------------------------------

    def commit(
        self,
        apply: Callable[[Session, list[int]], None],
        *,
        add: Iterable[SegmentMeta] = (),
        retire: Iterable[int] = (),
    ) -> list[int]:
        """One transaction: insert ``add`` rows, run ``apply(s, new_segment_ids)``, delete ``retire`` rows
        (their tombstones go with them), increment the commit number. Returns the new segment ids.

        The files of ``add`` must be complete on disk; retired files are deleted afterwards by the caller
        (:meth:`delete_files`). On any error nothing changed in the catalog.
        """
        add, retire = list(add), list(retire)
        with self._catalog.transaction() as s:
            new_ids = [
                int(s.execute(insert(SegmentRow).values(**m.row_values()).returning(SegmentRow.id)).scalar_one())
                for m in add
            ]
            apply(s, new_ids)
            if retire:
                s.execute(delete(SegmentRow).where(SegmentRow.id.in_(retire)))
            self._bump(s)
        with self._catalog.transaction() as s:
            self.sync(s)
        return new_ids

    @staticmethod
    def _bump(s: Session) -> None:
        n = commit_number(s)
        if s.scalar(select(StateRow.key).where(StateRow.key == COMMIT_KEY)) is None:
            s.execute(insert(StateRow).values(key=COMMIT_KEY, value=n + 1))
        else:
            s.execute(update(StateRow).where(StateRow.key == COMMIT_KEY).values(value=n + 1))

    def delete_files(self, filenames: Iterable[str]) -> None:
        """Delete retired segment files (after their commit; a reader that mapped one keeps its pages)."""
        for name in filenames:
            self._open.pop(name, None)
            unlink_quietly(self.folder / name)
