"""Exact inner-product vector search by instance id, over FAISS.

:class:`VectorIndex` wraps ``IndexIDMap2(IndexFlatIP(dim))``. Ids are int64 instance ids (catalog primary
keys, always >= 0). Scores are inner products, i.e. cosine similarities when both sides are unit-norm.

Missing results: when fewer than ``k`` vectors are eligible (``k > ntotal`` or a small ``allowed_ids``),
the tail of each result row has id ``-1`` and score ``-inf`` (FAISS itself pads with ``-FLT_MAX``; it is
turned into ``-inf`` here so no padding score can be mistaken for a real one).

Files are written atomically with :func:`scenegrep.storage.fileio.atomic_write` (re-exported here): a
temp file in the same folder, flush + fsync, ``os.replace``, then fsync of the folder so the rename itself
survives a power loss; the file's mode follows the umask.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from scenegrep.storage.errors import NotFoundError, VectorIndexError
from scenegrep.storage.guard import raises_store_errors
from scenegrep.storage.fileio import atomic_write, fsync_dir  # re-exported: their old home

__all__ = ["VectorIndex", "atomic_write", "fsync_dir"]

log = logging.getLogger(__name__)


def _as_ids(ids: np.ndarray | list[int] | int, what: str = "ids") -> np.ndarray:
    """(n,) int64, C-contiguous; rejects non-integer dtypes and negative ids (-1 means 'no result')."""
    arr = np.atleast_1d(np.asarray(ids))
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind == "u" and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what} must fit in int64")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if int(arr.min()) < 0:
        raise ValueError(f"{what} must be >= 0 (-1 is reserved for 'no result')")
    return arr


@raises_store_errors  # an OS error (a full disk on save) is a one-line FileAccessError
class VectorIndex:
    """Exact inner-product search over ``(id, vector)`` pairs; see the module docstring for conventions.

    Not thread-safe for concurrent add/remove; concurrent searches are fine.
    """

    def __init__(self, dim: int):
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(int(dim)))

    @classmethod
    def _wrap(cls, index: faiss.IndexIDMap2) -> VectorIndex:
        obj = cls.__new__(cls)
        obj._index = index
        return obj

    @classmethod
    def from_arrays(cls, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        """A new index holding ``vectors`` (n, dim) under ``ids`` (n,); dim is taken from ``vectors``."""
        vecs = np.asarray(vectors)
        if vecs.ndim != 2:
            raise ValueError(f"vectors must be 2-D (n, dim), got shape {vecs.shape}")
        index = cls(vecs.shape[1])
        index.add(ids, vecs)
        return index

    # -- properties ------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        """Number of vectors held."""
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def ids(self) -> np.ndarray:
        """(ntotal,) int64 ids in storage order (a copy)."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def copy(self) -> VectorIndex:
        """An independent deep copy (used to build the next generation without touching this one)."""
        return VectorIndex._wrap(faiss.clone_index(self._index))

    # -- updates ---------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (n, dim) (cast to float32) under ``ids`` (n,) (cast to int64, each >= 0).

        Raises:
            ValueError: shapes disagree, a vector is not finite, an id repeats or is already present.
        """
        ids64 = _as_ids(ids)
        vecs = np.asarray(vectors)
        if vecs.ndim == 1 and vecs.size == 0:
            vecs = vecs.reshape(0, self.dim)
        if vecs.ndim != 2 or vecs.shape != (ids64.size, self.dim):
            raise ValueError(f"vectors must have shape ({ids64.size}, {self.dim}), got {vecs.shape}")
        if ids64.size == 0:
            return
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if not np.isfinite(vecs).all():
            raise ValueError("vectors must be finite")
        if np.unique(ids64).size != ids64.size:
            raise ValueError("ids must be unique")
        present = np.isin(ids64, self.ids())
        if present.any():
            raise ValueError(f"ids already in the index: {ids64[present][:5].tolist()}")
        self._index.add_with_ids(vecs, ids64)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove these ids (unknown ones are ignored); returns how many vectors were removed."""
        ids64 = _as_ids(ids)
        if ids64.size == 0 or self.ntotal == 0:
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids64)))

    # -- queries ---------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products for each query.

        Args:
            queries: (q, dim) or (dim,) (treated as q = 1), cast to float32.
            k: results per query, >= 1.
            allowed_ids: if given, only these ids are eligible; FAISS applies the filter during the scan,
                so up to ``k`` results come from the subset (nothing is lost to post-filtering).

        Returns:
            ``(scores, ids)``: (q, k) float32 best first, and (q, k) int64. Missing results are id ``-1``
            with score ``-inf``.
        """
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (q, {self.dim}) or ({self.dim},), got {np.shape(queries)}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(q).all():
            raise ValueError("queries must be finite")
        k = int(k)
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        ids = np.full((q.shape[0], k), -1, np.int64)
        allowed = None if allowed_ids is None else _as_ids(allowed_ids, "allowed_ids")
        if q.shape[0] == 0 or self.ntotal == 0 or (allowed is not None and allowed.size == 0):
            return scores, ids
        # FAISS allocates k slots per query; there is never more to return than ntotal
        kk = min(k, self.ntotal)
        if allowed is None:
            d, i = self._index.search(q, kk)
        else:
            sel = faiss.IDSelectorBatch(allowed)  # IndexIDMap translates it to external ids
            d, i = self._index.search(q, kk, params=faiss.SearchParameters(sel=sel))
        found = i >= 0
        ids[:, :kk] = np.where(found, i, -1)
        scores[:, :kk] = np.where(found, d, -np.inf)
        return scores, ids

    def reconstruct(self, id: int) -> np.ndarray:
        """The stored (dim,) float32 vector of ``id``; NotFoundError if absent."""
        key = int(id)
        if key < 0 or not np.any(self.ids() == key):
            raise NotFoundError(f"id {key} is not in the vector index")
        return np.asarray(self._index.reconstruct(key), dtype=np.float32)

    # -- files -----------------------------------------------------------------------------------

    def save(self, path: Path | str) -> None:
        """Write the index to ``path`` atomically (see :func:`atomic_write`)."""

        def write(f: BinaryIO) -> None:
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write))

        atomic_write(path, write)
        log.debug("wrote %d vectors to %s", self.ntotal, path)

    @classmethod
    def load(cls, path: Path | str, dim: int) -> VectorIndex:
        """Read an index written by :meth:`save` and check that it holds ``dim``-dimensional vectors.

        Raises:
            VectorIndexError: the file is missing, unreadable, not an IndexIDMap2 over IndexFlatIP, or of
                another dimension. The message names the file.
        """
        path = Path(path)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            # FAISS messages span several lines; keep the first for a one-line error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VectorIndexError(f"cannot read vector index {path}: {first}") from exc
        if not isinstance(index, faiss.IndexIDMap2) or not isinstance(
            faiss.downcast_index(index.index), faiss.IndexFlatIP
        ):
            raise VectorIndexError(f"{path} is not an IndexIDMap2(IndexFlatIP) file")
        if int(index.d) != int(dim):
            raise VectorIndexError(f"{path} holds {index.d}-dimensional vectors, expected {dim}")
        return cls._wrap(index)
