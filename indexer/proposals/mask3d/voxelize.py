"""Mask3D's single-scene input: 2 cm voxels and normalised colours, exactly as its data pipeline builds them.

* Voxel coordinates are ``floor(xyz / voxel_size)`` computed in float64 (as OpenMask3D's collate does on
  Open3D's float64 points; in float32 a point near a boundary can land in the neighbouring voxel).
* Voxel ``i`` is represented by the FIRST point falling into it, and voxels are ordered by that first
  occurrence (MinkowskiEngine's CPU ``sparse_quantize`` with ``return_index``/``return_inverse``): no
  averaging, ``unique_map`` strictly increasing, ``inverse_map`` = voxel row of every point.
* Colour features, two conventions:

  - ``"scannet"`` (default): ScanNet's colour mean/std, the statistics Mask3D's dataset applies in training
    (albumentations ``Normalize`` on uint8 with max 255), computed in float32 exactly as albumentations does:
    ``(c - float32(mean) * 255) * (1 / (float32(std) * 255))``, each step rounded to float32.
  - ``"unit"``: colours in [0, 1] (``c / 255``), what OpenMask3D's single-scene script feeds (it skips the
    normalisation the checkpoints were trained with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenegrep.choices import MASK3D_COLORS
from scenegrep.indexer.voxels import voxel_index

#: ScanNet colour statistics used by Mask3D's SemanticSegmentationDataset (RGB, in [0, 1] units).
SCANNET_COLOR_MEAN = (0.47793125906962, 0.4303257521323044, 0.3749598901421883)
SCANNET_COLOR_STD = (0.2834475483823543, 0.27566157565723015, 0.27018971370874995)
COLOR_MODES = MASK3D_COLORS


@dataclass
class Voxels:
    """A voxelised point cloud (P points, V voxels).

    Attributes:
        coords: (V, 3) int64 voxel coordinates ``floor(xyz / voxel_size)``.
        unique_map: (V,) int64 index of each voxel's first point (strictly increasing).
        inverse_map: (P,) int64 voxel row of every point.
        features: (V, 3) float32 normalised colours of each voxel's first point.
        raw_coords: (V, 3) float32 xyz of each voxel's first point.
    """

    coords: np.ndarray
    unique_map: np.ndarray
    inverse_map: np.ndarray
    features: np.ndarray
    raw_coords: np.ndarray

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def normalize_colors(rgb: np.ndarray, mode: str = "scannet") -> np.ndarray:
    """(N, 3) uint8 colours -> (N, 3) float32 network features (see module doc)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 2 or rgb.shape[1] != 3:
        raise ValueError(f"colours must be (N, 3), got shape {rgb.shape}")
    c = rgb.astype(np.float32)
    if mode == "scannet":
        mean = np.asarray(SCANNET_COLOR_MEAN, np.float32) * np.float32(255)
        inv_std = np.float32(1) / (np.asarray(SCANNET_COLOR_STD, np.float32) * np.float32(255))
        return ((c - mean) * inv_std).astype(np.float32)
    if mode == "unit":
        return (rgb.astype(np.float64) / 255.0).astype(np.float32)
    raise ValueError(f"colour mode must be one of {COLOR_MODES}, got {mode!r}")


def voxelize(xyz: np.ndarray, rgb: np.ndarray, voxel_size: float = 0.02, color_mode: str = "scannet") -> Voxels:
    """Voxelise (P, 3) points with (P, 3) uint8 colours (see module doc)."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (P, 3) array, got shape {xyz.shape}")
    if np.asarray(rgb).shape != xyz.shape:
        raise ValueError(f"colours {np.asarray(rgb).shape} do not match points {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("points contain NaN or inf")
    # float64 floor, voxels ordered by their first point: ME's sparse_quantize order
    index = voxel_index(xyz, voxel_size, order="first")
    unique_map = index.first
    return Voxels(
        coords=index.coords,
        unique_map=unique_map,
        inverse_map=index.inverse,
        features=normalize_colors(np.asarray(rgb)[unique_map], color_mode),
        raw_coords=xyz[unique_map].astype(np.float32),
    )
