"""Ranked search over the live segments: top-k instances by cosine similarity, optionally filtered.

One read transaction per search: it syncs the snapshot (storage/segments.py), lists a filter's ids
(storage/filters.py) and fetches re-ranking vectors, so everything a search sees belongs to one commit.
Each segment is searched inside FAISS with an ``IDSelector``: the filter's ids of that segment (an
``IDSelectorBatch``) or, unfiltered, everything but its tombstones (``IDSelectorNot``). Segments no
allowed id lives in are skipped. Approximate (IVF) segments return :data:`RERANK` x k candidates that are
re-scored exactly with the catalog's float16 vectors, so every score is an exact cosine. ``k`` is clamped
to the number of eligible vectors first, so a huge k never allocates more than the collection. The id
selectors of the last few filters are cached until the next commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import Catalog, InstanceRow
from scenegrep.storage.filters import InstanceFilter, filtered_ids
from scenegrep.storage.indextypes import is_exact, search_params, threads_for
from scenegrep.storage.reads import chunks
from scenegrep.storage.records import VECTOR_DTYPE
from scenegrep.storage.segments import Segments

__all__ = ["Searcher", "SearchSettings", "normalized_queries", "RERANK"]

log = logging.getLogger(__name__)

Hits = list[list[tuple[int, float]]]
FILTER_CACHE = 8  # filters whose per-segment id selectors are kept (per commit)
RERANK = 4  # candidates per wanted hit taken from an approximate segment, re-scored exactly
_ATTEMPTS = 3  # a merge may delete a file this snapshot still names: re-sync and retry


@dataclass(frozen=True)
class SearchSettings:
    """Approximate-search settings (see storage/indextypes.py for the defaults).

    Attributes:
        nprobe: inverted lists visited per IVF segment; None: nlist / 16, at least 16.
        ef_search: efSearch of an HNSW coarse quantizer; None: 64 (at least nprobe).
    """

    nprobe: int | None = None
    ef_search: int | None = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")


def normalized_queries(queries: np.ndarray) -> np.ndarray:
    """(q, D) float32 unit rows from (q, D) or (D,); ValueError for another shape or a zero / non-finite row."""
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2:
        raise ValueError(f"queries must have shape (q, D) or (D,), got {np.shape(queries)}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if not np.isfinite(q).all() or (norms == 0).any():
        raise ValueError("queries must be finite and non-zero")
    return q / norms


def exact_vectors(s: Session, ids: np.ndarray) -> dict[int, np.ndarray]:
    """``{id: (D,) float32}`` from the catalog's float16 copies (missing ids are left out)."""
    table = InstanceRow.__table__
    out: dict[int, np.ndarray] = {}
    for chunk in chunks(np.unique(ids).tolist()):
        stmt = select(table.c.id, table.c.vector).where(table.c.id.in_(chunk), table.c.vector.is_not(None))
        for iid, blob in s.connection().execute(stmt).all():
            out[int(iid)] = np.frombuffer(blob, VECTOR_DTYPE).astype(np.float32)
    return out


class Searcher:
    """Searches the live segments of ``segments``."""

    def __init__(self, catalog: Catalog, segments: Segments, settings: SearchSettings | None = None):
        self._catalog = catalog
        self._segments = segments
        self.settings = settings or SearchSettings()
        self._filter_cache: dict[tuple[int, InstanceFilter], dict[int, tuple[np.ndarray, faiss.IDSelector]]] = {}

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filter: InstanceFilter | None = None,
        settings: SearchSettings | None = None,
    ) -> Hits:
        """Top-``k`` ``(instance_id, score)`` per query, best first (see :meth:`scenegrep.storage.Store.search`)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = normalized_queries(queries)
        settings = settings or self.settings
        for attempt in range(_ATTEMPTS):
            try:
                return self._search_once(q, int(k), filter, settings)
            except FileNotFoundError:
                if attempt == _ATTEMPTS - 1:
                    raise
                log.debug("a segment was retired during the search; searching the newer commit")
        raise AssertionError("unreachable")

    def _search_once(self, q: np.ndarray, k: int, filt: InstanceFilter | None, settings: SearchSettings) -> Hits:
        empty: Hits = [[] for _ in range(q.shape[0])]
        with self._catalog.transaction() as s:
            self._segments.sync(s)
            snap = self._segments.snapshot
            assert snap is not None
            if snap.dim is None or not snap.segments:
                return empty
            if snap.dim != q.shape[1]:
                raise ValueError(f"queries must have dimension {snap.dim}, got {q.shape[1]}")
            by_segment: dict[int, tuple[np.ndarray, faiss.IDSelector]] | None = None
            if filt is not None and not filt.is_empty:
                by_segment = self._filter_selectors(s, snap.commit, filt)
                eligible_total = sum(int(a.size) for a, _ in by_segment.values())
            else:
                eligible_total = snap.live
            k = min(k, eligible_total)  # never allocate for more hits than can exist
            if k == 0:
                return empty
            cand_ids: list[np.ndarray] = []
            cand_scores: list[np.ndarray] = []
            approx_ids: list[np.ndarray] = []
            faiss.omp_set_num_threads(threads_for(q.shape[0]))
            for seg_id, meta in snap.segments.items():
                dead = snap.tombstones.get(seg_id)
                if by_segment is not None:
                    found = by_segment.get(seg_id)
                    if found is None:
                        continue
                    allowed, selector = found
                    eligible = int(allowed.size)
                else:
                    selector = snap.tombstone_selector(seg_id)
                    eligible = meta.ntotal - (0 if dead is None else int(dead.size))
                if eligible <= 0:
                    continue
                exact = is_exact(meta.factory)
                kk = min(eligible, k if exact else k * RERANK)
                params = search_params(
                    meta.factory,
                    selector,
                    nprobe=settings.nprobe,
                    ef_search=settings.ef_search,
                    eligible_fraction=eligible / meta.ntotal,
                )
                d, i = self._segments.index(meta).search(q, kk, params=params)
                cand_ids.append(i)
                cand_scores.append(d)
                if not exact:
                    approx_ids.append(i[i >= 0])
            if not cand_ids:
                return empty
            ids_all = np.concatenate(cand_ids, axis=1)
            scores_all = np.concatenate(cand_scores, axis=1).astype(np.float32)
            if approx_ids:
                scores_all = self._rescore(s, q, ids_all, scores_all, np.concatenate(approx_ids))
        return self._top_k(ids_all, scores_all, k)

    def _filter_selectors(
        self, s: Session, commit: int, filt: InstanceFilter
    ) -> dict[int, tuple[np.ndarray, faiss.IDSelector]]:
        """``{segment id: (allowed ids, IDSelectorBatch)}`` of a filter at this commit; the last
        :data:`FILTER_CACHE` filters are kept until the next commit (a server repeats its filters)."""
        key = (commit, filt)
        hit = self._filter_cache.pop(key, None)
        if hit is None:
            ids, seg_ids = filtered_ids(s, filt)
            order = np.argsort(seg_ids, kind="stable")
            ids, seg_ids = ids[order], seg_ids[order]
            cuts = np.flatnonzero(np.diff(seg_ids)) + 1
            hit = {
                int(p[0]): (i, faiss.IDSelectorBatch(i))
                for p, i in zip(np.split(seg_ids, cuts), np.split(ids, cuts))
                if p.size
            }
        kept = [(k, v) for k, v in self._filter_cache.items() if k[0] == commit][-(FILTER_CACHE - 1) :]
        self._filter_cache = dict(kept)
        self._filter_cache[key] = hit  # most recent last
        return hit

    @staticmethod
    def _rescore(s: Session, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, approx: np.ndarray) -> np.ndarray:
        """Exact scores for the candidates that came from approximate segments."""
        vectors = exact_vectors(s, approx)
        out = scores.copy()
        for r in range(ids.shape[0]):
            for c in np.flatnonzero(np.isin(ids[r], approx)):
                v = vectors.get(int(ids[r, c]))
                out[r, c] = float(q[r] @ v) if v is not None else -np.inf
        return out

    @staticmethod
    def _top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> Hits:
        scores = np.where(ids >= 0, scores, -np.inf)
        out: Hits = []
        for row_ids, row_scores in zip(ids, scores):
            order = np.lexsort((row_ids, -row_scores))[:k]  # best first; ties by id (deterministic)
            out.append([(int(row_ids[j]), float(row_scores[j])) for j in order if row_ids[j] >= 0])
        return out
