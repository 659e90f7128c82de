"""Search results: the ``Hit`` record, a hit's points and their export."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from scenegrep.errors import InputFileError


def _out_path(path: Path | str) -> Path:
    """An export target whose folder must exist: a typo in a path never creates folders silently."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputFileError(path, f"folder {path.parent} does not exist")
    if path.is_dir():
        raise InputFileError(path, "is a folder; give a file name ending in .ply or .npz")
    return path


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
        relevance: the score calibrated for thresholding, in [0, 1] (see :mod:`scenegrep.search.relevance`);
            None when the collection is too small to calibrate.
        folded: ids of worse near-duplicates of this hit (nested proposals of the same object) that are
            reported under it instead of as hits of their own (see :mod:`scenegrep.search.folding`).
    """

    id: int
    scan: str
    score: float
    n_points: int
    bbox: list[float]
    thumbnail: str | None
    mask_score: float
    relevance: float | None = None
    folded: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InstanceDetails:
    """Everything the catalog knows about one instance (what ``show --json`` prints).

    Attributes:
        id, scan, n_points, bbox, thumbnail, mask_score: as in :class:`Hit`.
        searchable: the instance has a vector (it was visible in at least one used frame).
        best_frame: frame id of its best view, or None.
        mask_index: its position among the scan's masks as proposed.
        scan_source: the scan folder it was indexed from.
        proposer: the proposer that made the mask; mask_method_2d: how its 2D regions were found.
        vector: the stored vector (float16 values as float32) when asked for; None without one.
    """

    id: int
    scan: str
    n_points: int
    bbox: list[float]
    thumbnail: str | None
    mask_score: float
    searchable: bool
    best_frame: int | None
    mask_index: int
    scan_source: str | None
    proposer: str | None
    mask_method_2d: str | None
    vector: list[float] | None = None

    def to_dict(self, with_vector: bool = False) -> dict:
        d = asdict(self)
        if not with_vector:
            d.pop("vector")
        return d


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
        """Write the points as a PLY point cloud (x, y, z float32; red, green, blue uchar; index uint32)
        into an existing folder."""
        path = _out_path(path)
        vertex = np.empty(len(self.indices), dtype=[
            ("x", "f4"), ("y", "f4"), ("z", "f4"),
            ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("index", "u4"),
        ])
        vertex["x"], vertex["y"], vertex["z"] = self.xyz.T
        vertex["red"], vertex["green"], vertex["blue"] = self.rgb.T
        vertex["index"] = self.indices
        PlyData([PlyElement.describe(vertex, "vertex")], text=not binary).write(str(path))
        return path

    def save(self, path: Path | str) -> Path:
        """Write ``.ply`` or ``.npz`` by the file's suffix into an existing folder."""
        suffix = Path(path).suffix.lower()
        if suffix == ".ply":
            return self.to_ply(path)
        if suffix == ".npz":
            return self.to_npz(path)
        raise InputFileError(path, "unknown export format (use .ply or .npz)")

    def to_npz(self, path: Path | str) -> Path:
        """Write ``indices``, ``xyz`` and ``rgb`` arrays into an existing folder."""
        path = _out_path(path)
        np.savez_compressed(path, indices=self.indices, xyz=self.xyz, rgb=self.rgb)
        return path
