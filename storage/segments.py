"""The live segments of a home: the snapshot a store searches, opening segment files, and the commit point.

Each commit (an add, a remove, a merge) is one SQLite transaction that inserts the new ``segments`` rows,
deletes retired ones, applies the caller's catalog change (scan status, tombstones, ...) and increments
``store_state.commit``: that transaction is the commit point. A :class:`Snapshot` is what one read
transaction saw: the live segments, their tombstones and the commit number. Readers compare the commit
number (one indexed read) before each search and reload the snapshot when it moved, in the same read
transaction that then fetches a filter's ids, so segments, tombstones and ids always agree.

Files a writer deletes under a reader (the race this module closes). A writer deletes a retired
segment's file right after the commit that retired it (merge, optimize, repair); a reader may still be
searching the snapshot before that commit. So loading a snapshot *pins* every segment file it names: it
opens a descriptor to each new one at once, and maps and checks files only through those descriptors
(:func:`~scenegrep.storage.segfiles.fd_path`). POSIX keeps an unlinked file's bytes alive while a
descriptor is open, so once pinned, a reader's snapshot can be searched to the end whatever the writer
does (the reader-lease idea of Lucene and LanceDB, with the kernel's open-file count as the lease). The
pins of a segment are dropped when a newer snapshot no longer names it, and all on close; an idle reader
therefore holds the disk space of files merged away since its last search until its next one.

The one window left is between reading the segment rows and opening them: a file found missing there is
told apart by the commit counter, read again in a fresh transaction:

- the counter moved on: a writer retired it after this snapshot. The searches of this snapshot raise
  :class:`RetiredSegmentError`, which the searcher (storage/query.py) answers by searching the newer
  commit (a bounded number of times: each retry needs another writer commit inside the same window);
- the counter did not move: the home is damaged (the catalog names a file nobody deleted on purpose).
  Every search that needs it fails with a one-line :class:`DamagedSegmentError` naming it.

Checks (storage/checksums.py): pinning checks each new segment's size and edge CRC (cheap); the first
time this process searches a segment it checks the CRC of every byte once (segments are immutable, so
once per process is enough), then memory-maps it. A failed check is a one-line
:class:`DamagedSegmentError` naming the file for every search that needs it, never a silent wrong answer.
Nothing here raises a bare ``OSError``: every problem is a :class:`~scenegrep.storage.errors.StoreError`.
"""

from __future__ import annotations

import logging
import os
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
from scenegrep.storage.indextypes import is_exact
from scenegrep.storage.segfiles import RerankBlock, SegmentMeta, fd_path, open_segment, segment_problem

__all__ = ["Segments", "Snapshot", "DamagedSegmentError", "RetiredSegmentError", "commit_number"]

log = logging.getLogger(__name__)

COMMIT_KEY = "commit"


class DamagedSegmentError(VectorIndexError):
    """A segment file does not match its catalog checksums; ``scenegrep verify --repair`` rebuilds it."""


class RetiredSegmentError(VectorIndexError):
    """A segment of this snapshot was retired by a newer commit and its file deleted before this process
    pinned it: search the newer commit (storage/query.py does, a bounded number of times)."""


# the key inline: no parameter, so the same SQL runs on every driver whatever its parameter style
_COMMIT_SQL = f"SELECT value FROM {StateRow.__tablename__} WHERE key = '{COMMIT_KEY}'"


def commit_number(s: Session) -> int:
    """The number of the last commit (0 for a home never written). Plain SQL: it runs before every search."""
    return int(s.connection().exec_driver_sql(_COMMIT_SQL).scalar() or 0)


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
    """The snapshot a store searches and the segment files it holds open (see the module docstring).

    Attributes:
        folder: ``<home>/vectors``.
        snapshot: the current snapshot (None until :meth:`sync` first ran).
    """

    def __init__(self, folder: Path, catalog: Catalog):
        self.folder = folder
        self._catalog = catalog
        self.snapshot: Snapshot | None = None
        self._pins: dict[str, int] = {}  # filename -> open descriptor (keeps a deleted file readable)
        self._open: dict[str, faiss.Index] = {}  # filename -> mapped index (checked in full once)
        self._blocks: dict[str, RerankBlock | None] = {}  # filename -> re-ranking block (storage/segfiles.py)
        self._damaged: dict[str, str] = {}  # filename -> one-line problem
        self._retired: set[str] = set()  # files of this snapshot deleted by a newer commit before pinning

    def clear(self) -> None:
        """Forget the snapshot, unmap every segment and close every pin (on close)."""
        self.snapshot = None
        self._open.clear()
        self._blocks.clear()
        self._retired.clear()
        for name in list(self._pins):
            self._unpin(name)

    # -- reading ---------------------------------------------------------------------------------

    def sync(self, s: Session) -> bool:
        """Bring the snapshot up to the commit ``s`` sees and pin its files; True when it changed. Cheap
        when it did not."""
        number = commit_number(s)
        if self.snapshot is not None and self.snapshot.commit == number:
            return False
        snap = _load_snapshot(s)
        live_files = {m.filename for m in snap.segments.values()}
        for name in [n for n in self._pins if n not in live_files]:
            self._unpin(name)  # retired since the last snapshot: the mapping (if any) goes too
        self._retired.clear()
        missing: list[SegmentMeta] = []
        for meta in snap.segments.values():  # pin and cheaply check every segment new to this process
            if meta.filename in self._pins or meta.filename in self._damaged:
                continue
            problem = self._pin(meta)
            if problem is None:
                problem = segment_problem(self.folder, meta, full=False, read_from=fd_path(self._pins[meta.filename]))
            if problem is None:
                continue
            if problem.endswith(": missing"):
                missing.append(meta)
            else:
                self._mark_damaged(meta, problem)
        if missing:
            if self._latest_commit() != number:  # a writer retired them after this snapshot
                self._retired.update(m.filename for m in missing)
            else:  # the latest commit still names them: the home is damaged
                for meta in missing:
                    self._mark_damaged(meta, f"{self.folder / meta.filename}: missing")
        self.snapshot = snap
        return True

    def _pin(self, meta: SegmentMeta) -> str | None:
        """Open a descriptor to the segment's file; None, or a one-line problem (``...: missing``)."""
        path = self.folder / meta.filename
        try:
            self._pins[meta.filename] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return f"{path}: missing"
        except OSError as exc:
            return f"{path}: cannot be read ({exc.strerror or exc})"
        return None

    def _unpin(self, name: str) -> None:
        self._open.pop(name, None)
        self._blocks.pop(name, None)
        fd = self._pins.pop(name, None)
        if fd is not None:
            os.close(fd)

    def _latest_commit(self) -> int:
        """The commit number as of now (a fresh read transaction, not the caller's)."""
        with self._catalog.transaction() as fresh:
            return commit_number(fresh)

    def refresh(self) -> bool:
        """Follow a newer commit if there is one; True when the snapshot changed."""
        with self._catalog.transaction() as s:
            return self.sync(s)

    def _mark_damaged(self, meta: SegmentMeta, problem: str) -> None:
        log.error("%s", problem)
        self._damaged[meta.filename] = problem
        self._unpin(meta.filename)

    def damaged(self) -> list[str]:
        """One line per live segment found damaged by this process so far."""
        live = {m.filename for m in self.snapshot.segments.values()} if self.snapshot else set()
        return [p for name, p in self._damaged.items() if name in live]

    def index(self, meta: SegmentMeta) -> faiss.Index:
        """The mapped FAISS index of a segment of the current snapshot (checked in full the first time).

        Raises:
            DamagedSegmentError: the file fails its checksums or is missing while the latest commit still
                names it (one line naming it; repair rebuilds it).
            RetiredSegmentError: a newer commit retired it and deleted its file before this snapshot
                pinned it: search the newer commit.
            VectorIndexError: FAISS cannot read it.
        """
        index = self._open.get(meta.filename)
        if index is not None:
            return index
        if meta.filename in self._retired:
            raise RetiredSegmentError(f"{self.folder / meta.filename}: retired by a newer commit")
        problem = self._damaged.get(meta.filename)
        fd = self._pins.get(meta.filename)
        if problem is None and fd is None:  # not of this snapshot: a caller bug, not a file problem
            raise VectorIndexError(f"{self.folder / meta.filename}: not a segment of commit "
                                   f"{self.snapshot.commit if self.snapshot else None}")
        if problem is None:
            assert fd is not None
            problem = segment_problem(self.folder, meta, full=True, read_from=fd_path(fd))
            if problem is not None:
                self._mark_damaged(meta, problem)
        if problem is not None:
            raise DamagedSegmentError(f"{problem}; searches cannot use it (run `scenegrep verify --repair`)")
        assert self.snapshot is not None and self.snapshot.dim is not None and fd is not None
        index = open_segment(self.folder, meta, self.snapshot.dim, read_from=fd_path(fd))
        self._open[meta.filename] = index
        return index

    def rerank_block(self, meta: SegmentMeta) -> RerankBlock | None:
        """The re-ranking block of a compressed segment of the current snapshot (None: Flat, or a file
        written before blocks existed); raises as :meth:`index` does, which checks the file first."""
        if meta.filename in self._blocks:
            return self._blocks[meta.filename]
        self.index(meta)
        block = None
        if not is_exact(meta.factory):
            assert self.snapshot is not None and self.snapshot.dim is not None
            block = RerankBlock.read(self._pins[meta.filename], meta.size_bytes, meta.ntotal, self.snapshot.dim)
        self._blocks[meta.filename] = block
        return block

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
        """Delete retired segment files (after their commit; a reader that pinned one keeps reading it)."""
        for name in filenames:
            self._unpin(name)
            unlink_quietly(self.folder / name)
