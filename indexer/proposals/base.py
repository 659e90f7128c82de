"""Class-agnostic instance masks as sparse point-index sets.

A :class:`MaskSet` is a CSR list: mask ``i`` owns
``point_indices[offsets[i]:offsets[i + 1]]`` (uint32, sorted ascending, no repeats). It is never a
dense points x masks matrix; the only dense path is :meth:`MaskSet.from_dense`, for importing
OpenMask3D files. The same four arrays are the project's ``.npz`` mask file format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np
import scipy.sparse as sp
from scenegrep.errors import InputFileError, one_line

if TYPE_CHECKING:
    from scenegrep.indexer.scans import Scan


class MaskFileError(InputFileError):
    """A mask file that cannot be read. ``str(err)`` is one line naming the file."""


@dataclass
class MaskSet:
    """M instance masks over a cloud of ``num_points`` points.

    Attributes:
        point_indices: (nnz,) uint32, all masks concatenated, each block sorted ascending.
        offsets: (M + 1,) int64, ``offsets[0] == 0`` and ``offsets[-1] == nnz``.
        scores: (M,) float32 confidence per mask (1.0 when the source has none).
        num_points: number of points in the scan the indices refer to.
    """

    point_indices: np.ndarray
    offsets: np.ndarray
    scores: np.ndarray
    num_points: int

    def __post_init__(self) -> None:
        self.point_indices = np.ascontiguousarray(self.point_indices, dtype=np.uint32)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        self.scores = np.ascontiguousarray(self.scores, dtype=np.float32)
        self.num_points = int(self.num_points)
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be 1-D and start at 0")
        if self.offsets[-1] != self.point_indices.size or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing and end at len(point_indices)")
        if self.scores.shape != (len(self),):
            raise ValueError(f"scores must have shape ({len(self)},), got {self.scores.shape}")
        if self.point_indices.size and int(self.point_indices.max()) >= self.num_points:
            raise ValueError("a point index is >= num_points")

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def empty(cls, num_points: int) -> "MaskSet":
        return cls(np.zeros(0, np.uint32), np.zeros(1, np.int64), np.zeros(0, np.float32), num_points)

    @classmethod
    def from_lists(
        cls, masks: Sequence[np.ndarray], scores: Sequence[float] | np.ndarray | None, num_points: int
    ) -> "MaskSet":
        """Build from per-mask index arrays (any order, repeats allowed; they are sorted and made unique)."""
        blocks = [np.unique(np.asarray(m, dtype=np.int64)).astype(np.uint32) for m in masks]
        sizes = np.array([b.size for b in blocks], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        idx = np.concatenate(blocks) if blocks else np.zeros(0, np.uint32)
        sc = np.ones(len(blocks), np.float32) if scores is None else np.asarray(scores, np.float32)
        return cls(idx, offsets, sc, num_points)

    @classmethod
    def from_dense(cls, dense: np.ndarray, scores: np.ndarray | None = None) -> "MaskSet":
        """Import a dense (num_points, M) 0/1 matrix (OpenMask3D's ``*_masks.pt``)."""
        dense = np.asarray(dense)
        if dense.ndim != 2:
            raise ValueError(f"dense masks must be (num_points, M), got shape {dense.shape}")
        csc = sp.csc_matrix(dense != 0)
        csc.sort_indices()
        return cls(csc.indices.astype(np.uint32), csc.indptr.astype(np.int64),
                   np.ones(dense.shape[1], np.float32) if scores is None else scores, dense.shape[0])

    # -- access ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        """Sorted uint32 point indices of mask ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.point_indices[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def sizes(self) -> np.ndarray:
        """(M,) int64 number of points per mask."""
        return np.diff(self.offsets)

    def to_csr(self) -> sp.csr_matrix:
        """(M, num_points) sparse 0/1 matrix (float32 data), the shape every sparse product here uses."""
        data = np.ones(self.point_indices.size, np.float32)
        return sp.csr_matrix((data, self.point_indices, self.offsets), shape=(len(self), self.num_points))

    def mask_of_point(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, points): for every stored index, the mask row it belongs to (both (nnz,))."""
        rows = np.repeat(np.arange(len(self), dtype=np.int64), self.sizes)
        return rows, self.point_indices.astype(np.int64)

    # -- set operations --------------------------------------------------------------------------

    def intersections(self, other: "MaskSet") -> np.ndarray:
        """(M, M') int64 counts of shared points (dense only over masks, never over points)."""
        if self.num_points != other.num_points:
            raise ValueError("mask sets refer to different point clouds")
        return np.asarray((self.to_csr() @ other.to_csr().T).toarray(), dtype=np.int64)

    def iou(self, other: "MaskSet | None" = None) -> np.ndarray:
        """(M, M') float64 intersection over union between masks of ``self`` and ``other``."""
        other = self if other is None else other
        inter = self.intersections(other)
        union = self.sizes[:, None] + other.sizes[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    def select(self, keep: np.ndarray | Sequence[int]) -> "MaskSet":
        """A new MaskSet with masks ``keep`` (indices or a boolean array), in that order."""
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)
        blocks = [self[int(i)] for i in keep]
        sizes = np.array([b.size for b in blocks], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        idx = np.concatenate(blocks) if blocks else np.zeros(0, np.uint32)
        return MaskSet(idx, offsets, self.scores[keep], self.num_points)

    def filter_min_points(self, min_points: int) -> "MaskSet":
        return self.select(self.sizes >= min_points)

    def dedupe(self, iou_threshold: float = 0.9) -> "MaskSet":
        """Drop near-duplicates: greedily keep masks by descending score (ties: larger first), dropping
        any mask whose IoU with an already kept one exceeds ``iou_threshold``. Exact duplicates are
        always dropped (IoU 1)."""
        if len(self) == 0:
            return self
        return self.select(self.dedupe_indices(iou_threshold))

    def dedupe_indices(self, iou_threshold: float = 0.9) -> np.ndarray:
        """(K,) int64 indices of the masks :meth:`dedupe` keeps, in keeping order (for callers that carry
        per-mask data alongside the MaskSet)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.lexsort((-self.sizes, -self.scores))
        iou = self.iou()
        kept: list[int] = []
        for i in order:
            if not kept or iou[i, kept].max() <= iou_threshold:
                kept.append(int(i))
        return np.array(kept, dtype=np.int64)

    def sorted_by_score(self) -> "MaskSet":
        return self.select(np.argsort(-self.scores, kind="stable"))

    # -- file format -----------------------------------------------------------------------------

    def save_npz(self, path: Path | str) -> None:
        """Write the project's sparse mask file (compressed ``.npz``)."""
        np.savez_compressed(
            path,
            point_indices=self.point_indices,
            offsets=self.offsets,
            scores=self.scores,
            num_points=np.int64(self.num_points),
        )

    @classmethod
    def load_npz(cls, path: Path | str) -> "MaskSet":
        """Read the project's sparse mask file; :class:`MaskFileError` naming it for anything wrong.

        Every array's size is checked against the zip member holding it, and each member's size against
        what deflate can produce from its compressed bytes, before anything is allocated.
        """
        path = Path(path)
        arrays = read_npz_arrays(path, _NPZ_KEYS)
        n = arrays["num_points"]
        if n.size != 1 or n.dtype.kind not in "iu" or not 0 <= int(n.reshape(-1)[0]) <= 2**32:
            raise MaskFileError(path, f"inconsistent mask file: num_points must be one integer in [0, 2**32], "
                                      f"got {n.dtype} {n.shape}")
        for key, kinds in (("point_indices", "iu"), ("offsets", "iu"), ("scores", "iuf")):
            a = arrays[key]
            if a.ndim != 1 or a.dtype.kind not in kinds:
                raise MaskFileError(path, f"inconsistent mask file: {key} must be a 1-D "
                                          f"{'numeric' if 'f' in kinds else 'integer'} array, got {a.dtype} {a.shape}")
        idx = arrays["point_indices"]
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= int(n.reshape(-1)[0])):
            raise MaskFileError(path, "inconsistent mask file: a point index is outside [0, num_points)")
        try:
            ms = cls(idx, arrays["offsets"], arrays["scores"], int(n.reshape(-1)[0]))
        except ValueError as e:
            raise MaskFileError(path, f"inconsistent mask file: {e}") from e
        # Each block must be strictly increasing (sorted, unique) within its mask.
        d = np.diff(ms.point_indices.astype(np.int64))
        starts = ms.offsets[1:-1] - 1  # positions in d that cross a block boundary
        bad = d <= 0
        if starts.size:
            bad[starts[(starts >= 0) & (starts < d.size)]] = False
        if np.any(bad):
            raise MaskFileError(path, "point indices are not sorted and unique within each mask")
        return ms


_NPZ_KEYS = ("point_indices", "offsets", "scores", "num_points")
#: deflate never expands more than 1032:1; a member claiming more than that is damaged.
_DEFLATE_MAX_RATIO = 1032


def read_npz_arrays(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` (numpy's zip of ``.npy`` files), read without trusting its sizes.

    ``np.load`` allocates whatever a member's ``.npy`` header claims before reading it; here each claim is
    checked against the bytes that are really there first, and object arrays (pickles) are refused.
    Raises :class:`MaskFileError` naming the file.
    """
    import zipfile
    import zlib

    try:
        file_size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            missing = [k for k in keys if f"{k}.npy" not in infos]
            if missing:
                raise MaskFileError(path, f"not a scenegrep mask file: missing {sorted(missing)}")
            out = {}
            for k in keys:
                info = infos[f"{k}.npy"]
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise MaskFileError(path, f"unreadable mask file ({k}.npy uses zip compression method "
                                              f"{info.compress_type}, not stored or deflate)")
                limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else \
                    _DEFLATE_MAX_RATIO * info.compress_size + 64
                if info.compress_size > file_size or info.file_size > limit:
                    raise MaskFileError(path, f"unreadable mask file ({k}.npy claims {info.file_size} bytes, more "
                                              "than the file can hold: truncated or damaged)")
                out[k] = _npy_from_bytes(path, k, zf.read(info))  # zipfile checks the CRC
            return out
    except MaskFileError:
        raise
    # zipfile and numpy's .npy reader raise all of these for damaged files (RuntimeError: encrypted member,
    # NotImplementedError: unknown compression, zlib.error: bad deflate data).
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
            NotImplementedError) as e:
        raise MaskFileError(path, f"unreadable mask file ({type(e).__name__}: {one_line(e)[:200]})") from e


def _npy_from_bytes(path: Path, key: str, raw: bytes) -> np.ndarray:
    """One ``.npy`` member, its header checked against ``len(raw)`` before the array is allocated."""
    import io
    import math

    fmt = np.lib.format
    bio = io.BytesIO(raw)
    version = fmt.read_magic(bio)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(bio)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(bio)
    else:
        raise MaskFileError(path, f"unreadable mask file ({key}.npy has .npy format version {version})")
    if dtype.hasobject:
        raise MaskFileError(path, f"unreadable mask file ({key}.npy holds Python objects; refused)")
    need = math.prod(shape) * dtype.itemsize
    if need > len(raw) - bio.tell():
        raise MaskFileError(path, f"unreadable mask file ({key}.npy claims shape {shape} of {dtype}, "
                                  f"{need} bytes, but holds {len(raw) - bio.tell()})")
    return fmt.read_array(io.BytesIO(raw), allow_pickle=False)


@runtime_checkable
class Proposer(Protocol):
    """Makes class-agnostic instance masks for one scan."""

    name: str

    def propose(self, scan: "Scan") -> MaskSet:
        """Return masks over ``scan.points`` (indices into it), any order, scores in [0, 1]."""
        ...
