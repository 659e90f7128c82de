"""Ranked search over the live segments: top-k instances by cosine similarity, optionally filtered.

One read transaction per search: it syncs the snapshot (storage/segments.py), lists a filter's ids
(storage/filters.py) and fetches re-ranking vectors, so everything a search sees belongs to one commit.
Each segment is searched inside FAISS with an ``IDSelector``: the filter's ids of that segment (a
bitmap, :func:`id_selector`) or, unfiltered, everything but its tombstones (``IDSelectorNot``). Segments no
allowed id lives in are skipped. Approximate (IVF) segments return ``rerank_for(factory)`` x k candidates
(storage/indextypes.py) that are re-scored exactly with the float16 vectors of the segment's re-ranking
block (storage/segfiles.py; the catalog's copies for a segment without one), so every score is an exact
cosine. A filter that leaves at most :data:`EXACT_FILTER_MAX` ids of an approximate segment scores
them exactly from those vectors without FAISS (cheaper than visiting every list, and exact); a larger
filtered search that finds fewer candidates than it asked for while more are eligible is repeated with
twice the lists (up to all), so a filtered query returns k hits whenever k exist. ``k`` is clamped to the
number of eligible vectors first, so a huge k never allocates more than the collection. The id selectors
of the last few filters are cached until the next commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import Catalog, InstanceRow
from scenegrep.storage.filters import InstanceFilter, filtered_ids
from scenegrep.storage.indextypes import is_exact, nlist_of, rerank_for, search_params, threads_for
from scenegrep.storage.reads import chunks
from scenegrep.storage.records import VECTOR_DTYPE
from scenegrep.storage.segfiles import SegmentMeta
from scenegrep.storage.segments import RetiredSegmentError, Segments

__all__ = ["Searcher", "SearchSettings", "normalized_queries", "EXACT_FILTER_MAX"]

log = logging.getLogger(__name__)

Hits = list[list[tuple[int, float]]]
FILTER_CACHE = 8  # filters whose per-segment id selectors are kept (per commit)
EXACT_FILTER_MAX = 2048  # filtered ids of an approximate segment scored exactly from the catalog (~1-3 ms)
# a merge may delete a file between reading a snapshot and pinning it (storage/segments.py): search the
# newer commit; each further attempt needs yet another writer commit inside that microsecond window
_ATTEMPTS = 20


@dataclass(frozen=True)
class SearchSettings:
    """Approximate-search settings (see storage/indextypes.py for the defaults).

    Attributes:
        nprobe: inverted lists visited per IVF segment; None: nlist / 32, at least 32.
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


_VECTORS_SQL = "SELECT id, vector FROM {table} WHERE vector IS NOT NULL AND id IN ({marks})"


def exact_vectors(s: Session, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``ids`` that have a stored vector and their (n, D) float32 vectors (the catalog's
    float16 copies). Plain SQL and one bulk decode: this runs for every approximate search."""
    found: list[int] = []
    blobs: list[bytes] = []
    conn = s.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"  # SQLite's sqlite3, or psycopg
    for chunk in chunks(np.unique(ids).tolist()):
        sql = _VECTORS_SQL.format(table=InstanceRow.__tablename__, marks=",".join([mark] * len(chunk)))
        # the DB-API cursor's fetchall: SQLAlchemy's row iteration cost more than SQLite's own read here
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(sql, tuple(chunk))
            rows = cursor.fetchall()
        finally:
            cursor.close()
        for iid, blob in rows:
            found.append(iid)
            blobs.append(bytes(blob))  # psycopg gives memoryview for bytea
    order = np.argsort(np.array(found, np.int64), kind="stable")
    vectors = np.frombuffer(b"".join(blobs), VECTOR_DTYPE).reshape(len(found), -1) if found else None
    if vectors is None:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.array(found, np.int64)[order], vectors[order].astype(np.float32)


BITMAP_MAX_BYTES = 16 << 20  # an IDSelectorBitmap up to 16 MB (ids below 134M); a hashed batch above


def id_selector(ids: np.ndarray) -> faiss.IDSelector:
    """A FAISS selector of exactly ``ids`` (int64 >= 0). A bitmap over 0..max id when it is small: one
    bit test per visited vector, several times cheaper than ``IDSelectorBatch``'s bloom filter and hash
    set when a selective filter makes an IVF segment visit most of its lists."""
    top = int(ids.max()) + 1 if ids.size else 0
    if (top + 7) // 8 <= BITMAP_MAX_BYTES:
        bits = np.zeros(top, bool)
        bits[ids] = True
        packed = np.packbits(bits, bitorder="little")
        sel = faiss.IDSelectorBitmap(packed.size, faiss.swig_ptr(packed))  # its n counts bytes, not bits
        sel.referenced = packed  # the selector points into this array: keep it alive as long as it
        return sel
    return faiss.IDSelectorBatch(ids)


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
            except RetiredSegmentError:
                if attempt == _ATTEMPTS - 1:
                    raise
                log.debug("a segment was retired before this snapshot pinned it; searching the newer commit")
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
                if not exact and by_segment is not None and eligible <= EXACT_FILTER_MAX:
                    d, i = self._exact_subset(s, q, allowed)
                    cand_ids.append(i)
                    cand_scores.append(d)
                    continue
                kk = min(eligible, k * rerank_for(meta.factory))
                d, i = self._search_segment(meta, q, kk, selector, settings, eligible)
                if not exact:
                    block = self._segments.rerank_block(meta)
                    if block is not None:  # exact scores from the segment file itself (storage/segfiles.py)
                        d = block.scores(q, i)
                    else:  # a segment written before blocks existed: from the catalog below
                        approx_ids.append(i[i >= 0])
                cand_ids.append(i)
                cand_scores.append(d)
            if not cand_ids:
                return empty
            ids_all = np.concatenate(cand_ids, axis=1)
            scores_all = np.concatenate(cand_scores, axis=1).astype(np.float32)
            if approx_ids:
                scores_all = self._rescore(s, q, ids_all, scores_all, np.concatenate(approx_ids))
        return self._top_k(ids_all, scores_all, k)

    def _search_segment(
        self,
        meta: SegmentMeta,
        q: np.ndarray,
        kk: int,
        selector: faiss.IDSelector | None,
        settings: SearchSettings,
        eligible: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's top-``kk`` of one segment; an IVF search that came back short of ``kk`` although
        ``eligible`` >= kk vectors may match is repeated with twice the lists until it is not (or every list
        was visited): a selective filter's matches may all lie outside the lists first chosen."""
        index = self._segments.index(meta)
        nlist = nlist_of(meta.factory)
        widen = 1
        while True:
            params = search_params(
                meta.factory,
                selector,
                nprobe=settings.nprobe,
                ef_search=settings.ef_search,
                eligible_fraction=eligible / meta.ntotal,
                widen=widen,
            )
            d, i = index.search(q, kk, params=params)
            short = bool((i[:, kk - 1] < 0).any())
            if not short or nlist is None or params.nprobe >= nlist:
                return d, i
            widen *= 2

    @staticmethod
    def _exact_subset(s: Session, q: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of every ``allowed`` id (at most EXACT_FILTER_MAX) from the catalog's float16
        vectors: (scores, ids), each (q, n); :meth:`_top_k` ranks them with the other segments' candidates."""
        known, vectors = exact_vectors(s, allowed)
        if not known.size:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        return (q @ vectors.T).astype(np.float32), np.broadcast_to(known, (q.shape[0], known.size))

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
                int(p[0]): (i, id_selector(i))
                for p, i in zip(np.split(seg_ids, cuts), np.split(ids, cuts))
                if p.size
            }
        kept = [(k, v) for k, v in self._filter_cache.items() if k[0] == commit][-(FILTER_CACHE - 1) :]
        self._filter_cache = dict(kept)
        self._filter_cache[key] = hit  # most recent last
        return hit

    @staticmethod
    def _rescore(s: Session, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, approx: np.ndarray) -> np.ndarray:
        """Exact scores for the candidates that came from approximate segments (-inf for one without a
        stored vector, which a consistent catalog never has)."""
        known, vectors = exact_vectors(s, approx)
        out = scores.copy()
        rows, cols = np.nonzero(np.isin(ids, approx))
        if not rows.size:
            return out
        cand = ids[rows, cols]
        pos = np.minimum(np.searchsorted(known, cand), max(known.size - 1, 0))
        ok = known[pos] == cand if known.size else np.zeros(cand.size, bool)
        exact = np.full(cand.size, -np.inf, np.float32)
        exact[ok] = np.einsum("ij,ij->i", q[rows[ok]], vectors[pos[ok]])
        out[rows, cols] = exact
        return out

    @staticmethod
    def _top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> Hits:
        scores = np.where(ids >= 0, scores, -np.inf)
        out: Hits = []
        for row_ids, row_scores in zip(ids, scores):
            order = np.lexsort((row_ids, -row_scores))[:k]  # best first; ties by id (deterministic)
            out.append([(int(row_ids[j]), float(row_scores[j])) for j in order if row_ids[j] >= 0])
        return out
