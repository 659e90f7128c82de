"""Samples of the stored vectors: the reference sample (relevance calibration) and recall@10 measurement.

Both read the catalog's float16 vectors (the values every segment holds) in bulk. The sample is
deterministic: the same live ids and seed give the same rows, in id order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import STATUS_INDEXED, InstanceRow, ScanRow
from scenegrep.storage.reads import chunks
from scenegrep.storage.records import VECTOR_DTYPE

__all__ = ["live_ids", "sample_vectors", "exact_top_k", "recall_at_k"]

_I = InstanceRow.__table__
_S = ScanRow.__table__
_SCAN_ROWS = 20_000  # vectors per chunk of the exact scan (30 MB of float16 at D = 768)


def _live_where(stmt):  # noqa: ANN001, ANN202 (a Select)
    # no segment condition: a Milvus home's instances have none (after recovery every live one of an
    # embedded home has one, so the set is the same there)
    return stmt.join(_S, _S.c.id == _I.c.scan_id).where(_S.c.status == STATUS_INDEXED, _I.c.searchable.is_(True))


def live_ids(s: Session) -> np.ndarray:
    """(n,) int64 ids of every live searchable instance, ascending (one covering-index scan)."""
    rows = s.connection().execute(_live_where(select(_I.c.id)).order_by(_I.c.id)).scalars().all()
    return np.array(rows, dtype=np.int64)


def _vectors(s: Session, ids: np.ndarray, dim: int) -> np.ndarray:
    out = np.empty((ids.size, dim), np.float32)
    pos = {int(i): j for j, i in enumerate(ids)}
    for chunk in chunks(ids.tolist()):
        for iid, blob in s.connection().execute(select(_I.c.id, _I.c.vector).where(_I.c.id.in_(chunk))).all():
            out[pos[int(iid)]] = np.frombuffer(blob, VECTOR_DTYPE)
    return out


def sample_vectors(s: Session, n: int, seed: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)``: up to ``n`` live instances chosen with ``seed`` (ids ascending), (m, D) float32."""
    ids = live_ids(s)
    if ids.size > n:
        ids = np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))
    return ids, _vectors(s, ids, dim)


def exact_top_k(s: Session, queries: np.ndarray, k: int, dim: int) -> np.ndarray:
    """(q, k) int64 ids of the exact top-k inner products over every live stored vector (-1 padded),
    scanning the catalog in chunks so memory stays bounded."""
    best_ids = np.full((len(queries), k), -1, np.int64)
    best = np.full((len(queries), k), -np.inf, np.float32)
    stmt = _live_where(select(_I.c.id, _I.c.vector)).order_by(_I.c.id)
    result = s.connection().execution_options(stream_results=True).execute(stmt)
    while rows := result.fetchmany(_SCAN_ROWS):
        ids = np.fromiter((r[0] for r in rows), np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), VECTOR_DTYPE).reshape(len(rows), dim).astype(np.float32)
        sims = np.concatenate([best, queries @ vecs.T], axis=1)
        cand = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), ids.size))], axis=1)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(sims, top, axis=1)
        best_ids = np.take_along_axis(cand, top, axis=1)
    return best_ids


def recall_at_k(
    s: Session, search: Callable[[np.ndarray, int], list[list[tuple[int, float]]]], sample: int, k: int, dim: int
) -> float:
    """Mean |search top-k ∩ exact top-k| / |exact top-k| over ``sample`` stored vectors used as queries."""
    _, queries = sample_vectors(s, sample, seed=0, dim=dim)
    if not len(queries):
        return 1.0
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top_k(s, queries, k, dim)
    got = search(queries, k)
    hits = [len({i for i, _ in row} & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum())) for row, t in zip(got, truth)]
    return float(np.mean(hits))
