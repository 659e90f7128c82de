"""Search results: the ``Hit`` record, a hit's points and their export."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement


@dataclass
class Hit:
    """One ranked object instance.

    Attributes:
        id: instance id (stable catalog key; never reused).
        scan: name of the scan it belongs to.
        score: cosine similarity between the query and the instance vector, in [-1, 1].
        n_points: number of points in the instance mask.
        bbox: [min_x, min_y, min_z, max_x, max_y, max_z] in the scan's world frame (metres).
        thumbnail: path of a JPEG crop of the instance's best view, or None if it has none.
        mask_score: the proposer's confidence for the mask.
    """

    id: int
    scan: str
    score: float
    n_points: int
    bbox: list[float]
    thumbnail: str | None
    mask_score: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HitPoints:
    """The exact point subset of a hit.

    Attributes:
        indices: (n,) uint32 indices into the scan's point cloud, sorted ascending.
        xyz: (n, 3) float32 world coordinates.
        rgb: (n, 3) uint8 colours.
    """

    indices: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray

    def to_ply(self, path: Path | str, *, binary: bool = True) -> Path:
        """Write the points as a PLY point cloud (x, y, z float32; red, green, blue uchar; index uint32)."""
        path = Path(path)
        vertex = np.empty(len(self.indices), dtype=[
            ("x", "f4"), ("y", "f4"), ("z", "f4"),
            ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("index", "u4"),
        ])
        vertex["x"], vertex["y"], vertex["z"] = self.xyz.T
        vertex["red"], vertex["green"], vertex["blue"] = self.rgb.T
        vertex["index"] = self.indices
        path.parent.mkdir(parents=True, exist_ok=True)
        PlyData([PlyElement.describe(vertex, "vertex")], text=not binary).write(str(path))
        return path

    def to_npz(self, path: Path | str) -> Path:
        path = Path(path)
        np.savez_compressed(path, indices=self.indices, xyz=self.xyz, rgb=self.rgb)
        return path
