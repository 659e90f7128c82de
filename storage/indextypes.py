"""Which FAISS index a segment gets, how it is built, and how it is searched.

The policy (recorded per segment as its FAISS factory string, so old segments keep their type):

- fewer than :data:`FLAT_MAX` vectors: ``IDMap,Flat``: exact inner product, no training. Every commit of a
  few scans writes one of these.
- otherwise ``IVF<nlist>,PQ<D>x4fs``: an inverted file with a flat coarse quantizer and 4-bit product
  quantisation with one sub-quantiser per dimension, scanned with FAISS's SIMD "fast scan" (384 bytes per
  768-d vector, an eighth of float32). ``nlist`` = the power of two nearest 2 sqrt(n), between 64 and
  :data:`MAX_NLIST` (512 at 100k, 2048 at 1M); trained on a seeded sample of the segment's own vectors
  (at most :data:`TRAIN_PER_LIST` per list, :data:`TRAIN_ITERATIONS` k-means rounds). Its scores are
  rough, so each search takes :func:`rerank_for` x k candidates and storage/query.py re-scores them
  exactly from the float16 vectors stored after the index in the segment file (storage/segfiles.py):
  scores are exact cosines whatever the segment type.
  Measured on the issue's hard 1M vectors (BENCHMARKS.md): ``IVF1024,SQ8`` needed 9 ms of FAISS per
  query for recall@10 0.98 at nprobe 32, this type a third to a half of that for the same recall.
  Older segments' ``IVF<nlist>,SQ8`` (and ``IVF<nlist>_HNSW32,...``, with ``ef_search``) stay readable;
  ``optimize`` rebuilds them to the current type. An HNSW coarse quantizer was tried and dropped: with
  every vector sharing one direction its greedy assignment piled a third of 1M vectors into one list.

Search settings (per store, overridable per call):

- ``nprobe``: inverted lists visited per IVF segment. Default :func:`default_nprobe`: nlist / 32, at
  least 32 (32 of 512 at 100k, 64 of 2048 at 1M); BENCHMARKS.md has the recall this gives.
  A filter that leaves a fraction f of a segment eligible visits nprobe x min(1 / f, :data:`FILTER_BOOST`)
  lists (filtered to 2 % of the benchmark's 1M vectors, 2x the lists took the filtered recall@10 from
  0.89 to 0.96 at nprobe 32, BENCHMARKS.md). storage/query.py widens further when that still finds
  fewer than k eligible vectors, and scores small eligible sets exactly without FAISS, so a filtered
  query returns k hits whenever k exist.
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
    "MAX_NLIST",
    "TRAIN_PER_LIST",
    "TRAIN_ITERATIONS",
    "FILTER_BOOST",
    "DEFAULT_EF_SEARCH",
    "factory_for",
    "build_index",
    "new_index",
    "training_positions",
    "train_index",
    "is_exact",
    "nlist_of",
    "default_nprobe",
    "rerank_for",
    "search_params",
    "threads_for",
]

FLAT_MAX = 20_000  # vectors: below this a segment is exact (a 20k x 768 float32 scan is ~60 MB, ~5 ms)
MAX_NLIST = 2048
TRAIN_PER_LIST = 40  # training sample per inverted list (k-means cost grows with it)
TRAIN_ITERATIONS = 10  # k-means rounds: 1M vectors' 2048 lists train in about a minute here
FILTER_BOOST = 2  # a filter multiplies nprobe by at most this (see the module docstring)
DEFAULT_EF_SEARCH = 64
_MIN_NLIST = 64
_RERANK_FAST_SCAN = 10  # candidates per wanted hit from a 4-bit segment (recall@10 0.97 at 1M with 10x)
_RERANK_OTHER = 4
_SEED = 1234  # training sample and k-means seed: the same vectors give the same segment

_IVF = re.compile(r"^IVF(\d+)(_HNSW(\d+))?,")


def factory_for(n: int, dim: int) -> str:
    """The FAISS factory string for a segment of ``n`` vectors of dimension ``dim`` (see the module docstring)."""
    if n < FLAT_MAX:
        return "IDMap,Flat"
    nlist = 2 ** round(math.log2(2 * math.sqrt(n)))
    return f"IVF{min(max(nlist, _MIN_NLIST), MAX_NLIST)},PQ{int(dim)}x4fs"


def rerank_for(factory: str) -> int:
    """Candidates per wanted hit that a search takes from a segment of ``factory`` to re-score exactly
    (1 for an exact segment)."""
    if is_exact(factory):
        return 1
    return _RERANK_FAST_SCAN if factory.endswith("fs") else _RERANK_OTHER


def is_exact(factory: str) -> bool:
    """Whether segments of this factory string return exact inner products."""
    return factory.endswith("Flat") and not factory.startswith("IVF")


def nlist_of(factory: str) -> int | None:
    """The number of inverted lists of an IVF factory string, None for others."""
    m = _IVF.match(factory)
    return int(m.group(1)) if m else None


def default_nprobe(nlist: int) -> int:
    """Lists visited per query by default: nlist / 32, at least 32 (never more than nlist)."""
    return min(nlist, max(32, nlist // 32))


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
    ivf.cp.niter = TRAIN_ITERATIONS
    ivf.cp.max_points_per_centroid = TRAIN_PER_LIST
    ivf.cp.min_points_per_centroid = min(ivf.cp.min_points_per_centroid, TRAIN_PER_LIST // 2)  # no warning
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
    widen: int = 1,
) -> faiss.SearchParameters:
    """FAISS search parameters for a segment of ``factory`` (see the module docstring for the defaults);
    ``widen`` multiplies the lists visited again (storage/query.py, when too few eligible vectors came back)."""
    nlist = nlist_of(factory)
    if nlist is None:
        return faiss.SearchParameters(sel=selector)
    probe = nprobe if nprobe is not None else default_nprobe(nlist)
    if eligible_fraction < 1.0:  # a filter: visit more lists, up to FILTER_BOOST x (module docstring)
        probe = math.ceil(probe * min(1.0 / max(eligible_fraction, 1e-9), FILTER_BOOST))
    probe *= max(1, int(widen))
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
