"""One voxel grid for the whole indexer: integer voxel coordinates, packed keys and point -> voxel maps.

Three callers share it, each with the ordering it needs:

* the geometric proposer averages points per voxel (:func:`voxel_index` with ``order="key"``, then
  :func:`group_mean`);
* the 7-Scenes reader accumulates back-projected frames into a running per-voxel sum whose keys must be
  comparable across batches (:func:`pack_coords` on absolute coordinates, :func:`group_sums`);
* Mask3D's input keeps the FIRST point of each voxel and orders voxels by that first occurrence
  (MinkowskiEngine's ``sparse_quantize``): :func:`voxel_index` with ``order="first"``.

Voxel coordinates are ``floor((xyz - origin) / voxel_size)`` computed in float64 (a float32 division can put
a point near a boundary in the neighbouring voxel). Keys pack the three integer coordinates into one int64
(3 x 21 bits), because a 1-D ``np.unique`` is several times faster than ``np.unique(axis=0)``; packed keys
sort exactly as the coordinate triples do lexicographically, so ``order="key"`` equals ``np.unique(axis=0)``'s
order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bits per axis in a packed key: +-2^20 voxels per axis around the origin (+-20 km at 2 cm).
KEY_BITS = 21
#: Offset that makes a signed per-axis coordinate non-negative before packing.
KEY_OFFSET = 1 << (KEY_BITS - 1)


def voxel_coords(points: np.ndarray, voxel_size: float, origin: np.ndarray | None = None) -> np.ndarray:
    """(N, 3) int64 ``floor((points - origin) / voxel_size)``, computed in float64."""
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size!r}")
    pts = np.asarray(points, dtype=np.float64)
    if origin is not None:
        pts = pts - np.asarray(origin, dtype=np.float64)
    return np.floor(pts / voxel_size).astype(np.int64)


def pack_coords(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack (N, 3) signed voxel coordinates into (N,) int64 keys.

    Returns ``(keys, ok)``: ``ok`` marks the coordinates inside +-2^20 per axis; keys of the others are
    meaningless and the caller must drop them (or use relative coordinates).
    """
    c = np.asarray(coords, dtype=np.int64)
    ok = np.all(np.abs(c) < KEY_OFFSET, axis=1)
    c = c + KEY_OFFSET
    keys = (c[:, 0] << (2 * KEY_BITS)) | (c[:, 1] << KEY_BITS) | c[:, 2]
    return keys, ok


@dataclass
class VoxelIndex:
    """Which voxel every point falls into (N points, V occupied voxels).

    Attributes:
        coords: (V, 3) int64 voxel coordinates.
        first: (V,) int64 index of the first point (in input order) in each voxel.
        inverse: (N,) int64 voxel row of every point.
        counts: (V,) int64 points per voxel.
    """

    coords: np.ndarray
    first: np.ndarray
    inverse: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return int(self.first.size)


def voxel_index(points: np.ndarray, voxel_size: float, *, origin: np.ndarray | None = None,
                order: str = "key") -> VoxelIndex:
    """Group (N, 3) points into ``voxel_size`` cubes.

    ``order="key"``: voxels sorted by coordinates (lexicographic, as ``np.unique(axis=0)``);
    ``order="first"``: voxels ordered by their first point, so ``first`` is strictly increasing.
    """
    if order not in ("key", "first"):
        raise ValueError(f"order must be 'key' or 'first', got {order!r}")
    coords = voxel_coords(points, voxel_size, origin)
    if coords.shape[0] == 0:
        z = np.zeros(0, np.int64)
        return VoxelIndex(np.zeros((0, 3), np.int64), z, z, z)
    lo = coords.min(axis=0)
    rel = coords - lo  # relative coordinates always fit unless the cloud spans 2^21 voxels
    if int(rel.max()) < 2 * KEY_OFFSET:
        keys, _ = pack_coords(rel - KEY_OFFSET)
        _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    else:
        _, first, inverse, counts = np.unique(coords, axis=0, return_index=True, return_inverse=True,
                                              return_counts=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    first = first.astype(np.int64)
    counts = counts.astype(np.int64)
    if order == "first":
        perm = np.argsort(first, kind="stable")
        rank = np.empty_like(perm)
        rank[perm] = np.arange(perm.size)
        first, counts, inverse = first[perm], counts[perm], rank[inverse]
    return VoxelIndex(coords[first], first, inverse, counts)


def group_sums(inverse: np.ndarray, values: np.ndarray, num_groups: int) -> np.ndarray:
    """(num_groups, C) float64 sums of the (N, C) ``values`` rows per group id ``inverse``."""
    vals = np.asarray(values, dtype=np.float64)
    return np.stack([np.bincount(inverse, weights=vals[:, c], minlength=num_groups)
                     for c in range(vals.shape[1])], axis=1)


def group_mean(index: VoxelIndex, values: np.ndarray) -> np.ndarray:
    """(V, C) float64 mean of the (N, C) ``values`` per voxel of ``index``."""
    return group_sums(index.inverse, values, len(index)) / index.counts[:, None]
