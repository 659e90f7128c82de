"""Which FAISS index a segment gets, how it is built, and how it is searched.

The policy (recorded per segment as its FAISS factory string, so old segments keep their type):

- fewer than :data:`FLAT_MAX` vectors: ``IDMap,Flat``: exact inner product, no training. Every commit of a
  few scans writes one of these.
- otherwise ``IVF<nlist>,SQ8``: an inverted file with a flat coarse quantizer and 8-bit scalar-quantised
  codes (a quarter of float32), ``nlist`` = the power of two nearest sqrt(n), between 64 and 1024
  (256 at 100k, 1024 at 1M); trained on a seeded sample of the segment's own vectors (at most
  :data:`TRAIN_PER_LIST` per list). IVF candidates are re-ranked exactly from the catalog's float16
  vectors (storage/query.py), so scores are exact cosines whatever the segment type.
  ``IVF<nlist>_HNSW32,SQ8`` (an HNSW coarse quantizer) is also understood; ``ef_search`` applies to it.

Search settings (per store, overridable per call):

- ``nprobe``: inverted lists visited per IVF segment. Default :func:`default_nprobe`: nlist / 32, at
  least 16 (16 of 256 at 100k, 32 of 1024 at 1M). With the exact re-ranking of storage/query.py this
  gave recall@10 0.998 at 100k and 0.968 at 1M on the issue's hard synthetic vectors (nlist / 16, the
  previous default, gave 0.9995 at 1M for 1.2-1.5x the time; bare FAISS needed 64 for 0.957).
  A filter that leaves a fraction f of a segment eligible visits nprobe / f lists (capped at nlist), so
  a selective filter still finds k hits when k exist.
- ``ef_search``: HNSW coarse quantizer's efSearch, default :data:`DEFAULT_EF_SEARCH` (at least nprobe).

FAISS runs on one OpenMP thread for a single query: on a loaded machine its default of one thread per
core made single queries 2-240x slower (issue 9); batches of queries use the default.
"""

from __future__ import annotations

import math
import re

import faiss
import numpy as np

__all__ = [
    "FLAT_MAX",
    "TRAIN_PER_LIST",
    "DEFAULT_EF_SEARCH",
    "factory_for",
    "build_index",
    "new_index",
    "training_positions",
    "train_index",
    "is_exact",
    "nlist_of",
    "default_nprobe",
    "search_params",
    "threads_for",
]

FLAT_MAX = 20_000  # vectors: below this a segment is exact (a 20k x 768 float32 scan is ~60 MB, ~5 ms)
TRAIN_PER_LIST = 64  # training sample per inverted list (k-means cost grows with it; 64 is FAISS's floor)
DEFAULT_EF_SEARCH = 64
_MIN_NLIST, _MAX_NLIST = 64, 1024
_SEED = 1234  # training sample and k-means seed: the same vectors give the same segment

_IVF = re.compile(r"^IVF(\d+)(_HNSW(\d+))?,")


def factory_for(n: int) -> str:
    """The FAISS factory string for a segment of ``n`` vectors (see the module docstring)."""
    if n < FLAT_MAX:
        return "IDMap,Flat"
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    return f"IVF{min(max(nlist, _MIN_NLIST), _MAX_NLIST)},SQ8"


def is_exact(factory: str) -> bool:
    """Whether segments of this factory string return exact inner products."""
    return factory.endswith("Flat") and not factory.startswith("IVF")


def nlist_of(factory: str) -> int | None:
    """The number of inverted lists of an IVF factory string, None for others."""
    m = _IVF.match(factory)
    return int(m.group(1)) if m else None


def default_nprobe(nlist: int) -> int:
    """Lists visited per query by default: nlist / 32, at least 16 (never more than nlist)."""
    return min(nlist, max(16, nlist // 32))


def new_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index of ``factory`` (untrained for IVF)."""
    return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)


def training_positions(factory: str, n: int) -> np.ndarray | None:
    """Sorted positions (in id order) of the seeded training sample of a segment of ``n`` vectors, or
    None for a factory that needs no training."""
    nlist = nlist_of(factory)
    if nlist is None:
        return None
    if n < nlist:
        raise ValueError(f"{factory} needs at least {nlist} vectors to train, got {n}")
    n_train = min(n, TRAIN_PER_LIST * nlist)
    return np.sort(np.random.default_rng(_SEED).choice(n, n_train, replace=False))


def train_index(index: faiss.Index, factory: str, sample: np.ndarray) -> None:
    """Train an IVF ``index`` on ``sample`` (the vectors at :func:`training_positions`)."""
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = _SEED
    ivf.cp.max_points_per_centroid = TRAIN_PER_LIST
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def build_index(factory: str, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """A trained FAISS inner-product index of ``factory`` holding ``vectors`` (n, D) float32 under ``ids``
    (ascending ids give the same index as a streamed build, storage/segfiles.py)."""
    index = new_index(factory, int(vectors.shape[1]))
    pick = training_positions(factory, len(vectors))
    if pick is not None:
        train_index(index, factory, vectors[pick])
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def search_params(
    factory: str,
    selector: faiss.IDSelector | None,
    *,
    nprobe: int | None,
    ef_search: int | None,
    eligible_fraction: float = 1.0,
) -> faiss.SearchParameters:
    """FAISS search parameters for a segment of ``factory`` (see the module docstring for the defaults)."""
    nlist = nlist_of(factory)
    if nlist is None:
        return faiss.SearchParameters(sel=selector)
    probe = nprobe if nprobe is not None else default_nprobe(nlist)
    if eligible_fraction < 1.0:  # a filter: visit as many eligible vectors as an unfiltered search would
        probe = math.ceil(probe / max(eligible_fraction, 1e-9))
    params = faiss.SearchParametersIVF(sel=selector, nprobe=max(1, min(nlist, probe)))
    if "_HNSW" in factory:
        params.quantizer_params = faiss.SearchParametersHNSW(
            efSearch=max(ef_search or DEFAULT_EF_SEARCH, params.nprobe)
        )
    return params


def threads_for(n_queries: int) -> int:
    """OpenMP threads for a search of ``n_queries`` queries (1 for a single query, see the docstring)."""
    return 1 if n_queries <= 1 else _DEFAULT_THREADS


_DEFAULT_THREADS = faiss.omp_get_max_threads()
