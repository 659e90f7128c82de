"""Scan records and readers.

A :class:`Scan` is one room: a coloured point cloud plus the posed RGB-D frames it was made from.
Every later stage (proposals, features, storage) takes a ``Scan`` and nothing else, so readers for
new layouts only have to fill this record.

Conventions (as ScanNet and OpenMask3D):

* poses are camera-to-world 4x4 matrices, camera frame x right, y down, z forward (OpenCV);
* intrinsics are 3x3 pinhole matrices *at the resolution of the image they belong to*;
* depth images are uint16 PNGs, ``metres = value / depth_scale``; 0 (and 65535 for 7-Scenes) = no reading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Errors: every one names the offending file or folder in ``path``.
# --------------------------------------------------------------------------------------------------


class ScanError(Exception):
    """A scan folder that cannot be read. ``str(err)`` is one line: "<path>: <problem>"."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ScanLayoutError(ScanError):
    """The folder matches no known layout, or a required file/folder of the layout is missing."""


class FrameError(ScanError):
    """A frame file is bad: pose not 4x4 or singular, unreadable image, mismatched frame sets."""


class PointCloudError(ScanError):
    """The point cloud file is unreadable or lacks vertices / colours."""


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One posed RGB-D frame.

    Attributes:
        frame_id: integer id of the frame within its scan (ScanNet file stem, 7-Scenes frame number).
        color_path: colour image (JPEG or PNG, RGB).
        depth_path: depth image (uint16 PNG).
        pose_c2w: (4, 4) float64 camera-to-world matrix (OpenCV camera axes).
        K_color: (3, 3) float64 intrinsics at the colour image's resolution.
        K_depth: (3, 3) float64 intrinsics at the depth image's resolution.
        color_size: (width, height) of the colour image in pixels.
        depth_size: (width, height) of the depth image in pixels.
        depth_scale: depth image units per metre (1000 for millimetres).
    """

    frame_id: int
    color_path: Path
    depth_path: Path
    pose_c2w: np.ndarray
    K_color: np.ndarray
    K_depth: np.ndarray
    color_size: tuple[int, int]
    depth_size: tuple[int, int]
    depth_scale: float = 1000.0

    def load_color(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        from PIL import Image

        try:
            with Image.open(self.color_path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise FrameError(self.color_path, f"unreadable colour image ({e})") from e

    def load_depth(self) -> np.ndarray:
        """(H, W) float32 depth in metres; 0 where the sensor gave no reading (0 or 65535)."""
        from PIL import Image

        try:
            with Image.open(self.depth_path) as im:
                raw = np.asarray(im)
        except (OSError, ValueError) as e:
            raise FrameError(self.depth_path, f"unreadable depth image ({e})") from e
        if raw.ndim != 2:
            raise FrameError(self.depth_path, f"depth image must be single-channel, got shape {raw.shape}")
        raw = raw.astype(np.uint16, copy=False)
        depth = raw.astype(np.float32) / np.float32(self.depth_scale)
        depth[(raw == 0) | (raw == 65535)] = 0.0
        return depth


@dataclass
class Scan:
    """One scanned room.

    Attributes:
        name: unique display name of the scan (folder name unless ``scan.json`` says otherwise).
        root: the scan folder.
        layout: ``"scannet"`` or ``"7scenes"``.
        points: (N, 3) float32 xyz in world coordinates (metres).
        colors: (N, 3) uint8 RGB per point.
        frames: posed RGB-D frames sorted by ``frame_id`` (may be empty: then the scan gets masks but
            no vectors).
        tags: free-form labels from ``scan.json``.
        content_hash: sha256 hex of the scan's input files; equal hashes mean an unchanged scan.
        source_file: the point-cloud file the points came from (None when back-projected from frames).
    """

    name: str
    root: Path
    layout: str
    points: np.ndarray
    colors: np.ndarray
    frames: list[Frame] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    content_hash: str = ""
    source_file: Path | None = None

    def __post_init__(self) -> None:
        self.points = np.ascontiguousarray(self.points, dtype=np.float32)
        self.colors = np.ascontiguousarray(self.colors, dtype=np.uint8)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got {self.points.shape}")
        if self.colors.shape != self.points.shape:
            raise ValueError(f"colors must be (N, 3) like points, got {self.colors.shape}")

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])
