"""The records the store takes (``ScanEntry``, ``InstanceEntry``) and gives (``ScanInfo``, ``InstanceInfo``),
the encoder's identity, and their conversions to and from catalog columns.

Stored forms decided here: vectors are float16 little endian (:func:`vector_to_blob`), point indices go
through :mod:`scenegrep.storage.maskcodec`, tags / info / encoder details are sorted-key JSON, timestamps
are naive UTC. Conversions from catalog rows take any object with the row's attribute names, so this
module imports neither SQLAlchemy nor FAISS (it is cheap to import).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from scenegrep.storage.maskcodec import encode_indices

__all__ = [
    "EncoderIdentity",
    "ScanEntry",
    "InstanceEntry",
    "ScanInfo",
    "InstanceInfo",
    "VECTOR_DTYPE",
    "vector_to_blob",
    "blob_to_vector",
    "stored_vectors",
    "to_json",
    "as_utc",
    "scan_info_from_row",
    "instance_info_from_row",
    "instance_row_values",
    "INSTANCE_INFO_FIELDS",
]

UNIT_TOL = 1e-2  # accepted |norm - 1| of an instance vector (encoders may compute in half precision)
VECTOR_DTYPE = np.dtype("<f2")  # the catalog's copy of every vector; FAISS holds exactly these values


@dataclass
class EncoderIdentity:
    """Which model produced the catalog's vectors.

    Attributes:
        name: model / architecture name, e.g. "ViT-B-32".
        pretrained: pretrained tag or local checkpoint directory; None for none.
        checkpoint_sha256: hex SHA-256 of the weights file, None if unknown.
        dim: embedding dimension D.
        random_weights: True when the weights were randomly initialised (tests / demos only).
        details: free JSON-serialisable extras (image mean/std, ...); not part of :meth:`matches`.
    """

    name: str
    pretrained: str | None
    checkpoint_sha256: str | None
    dim: int
    random_weights: bool
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("encoder name must not be empty")
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim <= 0:
            raise ValueError(f"encoder dim must be a positive int, got {self.dim!r}")
        self.dim = int(self.dim)
        self.random_weights = bool(self.random_weights)
        self.details = dict(self.details)

    def matches(self, other: EncoderIdentity) -> bool:
        """Same model: equal name, pretrained, checkpoint_sha256, dim and random_weights."""
        return (self.name, self.pretrained, self.checkpoint_sha256, self.dim, self.random_weights) == (
            other.name,
            other.pretrained,
            other.checkpoint_sha256,
            other.dim,
            other.random_weights,
        )

    def describe(self) -> str:
        """One line, e.g. ``ViT-B-32 (pretrained=openai, sha256=0123abcd..., dim=512)``."""
        parts = [f"pretrained={self.pretrained}" if self.pretrained else "no pretrained weights"]
        if self.checkpoint_sha256:
            parts.append(f"sha256={self.checkpoint_sha256[:12]}...")
        parts.append(f"dim={self.dim}")
        if self.random_weights:
            parts.append("RANDOM WEIGHTS")
        return f"{self.name} ({', '.join(parts)})"

    @classmethod
    def from_row(cls, row: Any) -> EncoderIdentity:
        """From an ``encoders`` row (any object with its column attributes)."""
        return cls(
            name=row.name,
            pretrained=row.pretrained,
            checkpoint_sha256=row.checkpoint_sha256,
            dim=row.dim,
            random_weights=row.random_weights,
            details=json.loads(row.details_json),
        )

    def row_values(self) -> dict[str, Any]:
        """The ``encoders`` columns this identity fills (all but id and created_at)."""
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "dim": self.dim,
            "random_weights": self.random_weights,
            "details_json": to_json(self.details, "encoder details"),
        }


@dataclass
class ScanEntry:
    """A scan to store. Arrays are converted and checked on construction.

    Attributes:
        name: unique name among indexed scans.
        source_path: where the scan was read from.
        content_hash: hash of the scan's inputs, for :meth:`Store.is_unchanged`.
        layout: reader layout name (e.g. "scannet").
        points: (N, 3) float32 xyz.
        colors: (N, 3) uint8 rgb (integer input in 0..255 is converted).
        frame_count: number of RGB-D frames.
        tags: free labels.
        info: free JSON-serialisable metadata.
    """

    name: str
    source_path: str
    content_hash: str
    layout: str
    points: np.ndarray
    colors: np.ndarray
    frame_count: int
    tags: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("scan name must be a non-empty string")
        pts = np.asarray(self.points)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"scan {self.name}: points must have shape (N, 3), got {pts.shape}")
        pts = np.ascontiguousarray(pts, dtype=np.float32)
        if not np.isfinite(pts).all():
            raise ValueError(f"scan {self.name}: points must be finite")
        cols = np.asarray(self.colors)
        if cols.shape != pts.shape:
            raise ValueError(f"scan {self.name}: colors must have shape {pts.shape}, got {cols.shape}")
        # silently casting floats in [0, 1] would store black; accept only integer rgb
        bad_dtype = cols.dtype.kind not in "iu"
        if cols.dtype != np.uint8 and (bad_dtype or (cols.size and (cols.min() < 0 or cols.max() > 255))):
            raise ValueError(f"scan {self.name}: colors must be uint8 (or integers in 0..255), got {cols.dtype}")
        self.points = pts
        self.colors = np.ascontiguousarray(cols, dtype=np.uint8)
        self.frame_count = int(self.frame_count)
        self.tags = [str(t) for t in self.tags]
        self.source_path = str(self.source_path)

    def row_values(self) -> dict[str, Any]:
        """The ``scans`` columns this entry fills (all but id, status, indexed_at and encoder_id)."""
        return {
            "name": self.name,
            "source_path": self.source_path,
            "content_hash": self.content_hash,
            "layout": self.layout,
            "point_count": len(self.points),
            "frame_count": self.frame_count,
            "tags_json": to_json(self.tags, f"scan {self.name} tags"),
            "info_json": to_json(self.info, f"scan {self.name} info"),
        }


@dataclass
class InstanceEntry:
    """One instance of a scan to store. Arrays are converted and checked on construction.

    Attributes:
        point_indices: (n,) uint32, sorted ascending, unique, n >= 1; indices into the scan's points.
        score: proposal confidence.
        vector: (D,) float32 unit-norm, or None when the instance has no feature (stored, listed, but
            never searchable; it is never stored as zeros).
        thumbnail: JPEG bytes or None.
        best_frame: index of the frame the feature came from, or None.
    """

    point_indices: np.ndarray
    score: float
    vector: np.ndarray | None = None
    thumbnail: bytes | None = None
    best_frame: int | None = None

    def __post_init__(self) -> None:
        idx = np.asarray(self.point_indices)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"point_indices must be a non-empty 1-D array, got shape {idx.shape}")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"point_indices must have an integer dtype, got {idx.dtype}")
        if int(idx.min()) < 0 or int(idx.max()) > 2**32 - 1:
            raise ValueError("point_indices must be in [0, 2**32)")
        if idx.size > 1 and (np.diff(idx.astype(np.int64)) <= 0).any():
            raise ValueError("point_indices must be sorted ascending without duplicates")
        self.point_indices = np.ascontiguousarray(idx, dtype=np.uint32)
        self.score = float(self.score)
        if self.vector is not None:
            vec = np.asarray(self.vector)
            if vec.ndim != 1:
                raise ValueError(f"vector must be 1-D (D,), got shape {vec.shape}")
            vec = np.ascontiguousarray(vec, dtype=np.float32)
            norm = float(np.linalg.norm(vec))
            if not np.isfinite(vec).all() or abs(norm - 1.0) > UNIT_TOL:
                raise ValueError(f"vector must be finite and unit-norm, got norm {norm:.4g}")
            self.vector = vec
        if self.thumbnail is not None and not isinstance(self.thumbnail, (bytes, bytearray, memoryview)):
            raise TypeError(f"thumbnail must be bytes or None, got {type(self.thumbnail).__name__}")
        if self.thumbnail is not None:
            self.thumbnail = bytes(self.thumbnail)
        self.best_frame = None if self.best_frame is None else int(self.best_frame)


@dataclass
class ScanInfo:
    """An indexed scan as listed by the store.

    Attributes:
        id: catalog id (also the point file name).
        name, source_path, layout, content_hash: as given in :class:`ScanEntry`.
        point_count: N. frame_count: number of frames.
        instances: number of instances; searchable: how many of them have a vector.
        status: 'indexed' (listings never show pending scans).
        indexed_at: commit time, aware UTC.
        tags, info: as given.
        problem: None when the scan's point file matches the catalog (size, and CRC-32 for one scan), else
            one line saying what is wrong; such a scan is never "unchanged" (re-indexing rewrites it).
    """

    id: int
    name: str
    source_path: str
    layout: str
    content_hash: str
    point_count: int
    frame_count: int
    instances: int
    searchable: int
    status: str
    indexed_at: datetime | None
    tags: list[str]
    info: dict[str, Any]
    problem: str | None = None


@dataclass
class InstanceInfo:
    """An instance's metadata (no blobs).

    Attributes:
        id: instance id (the FAISS id). scan_id, scan_name: its scan.
        mask_index: position in the scan's instance list as added.
        point_count: number of points in the mask.
        bbox: (6,) float32 ``[min_x, min_y, min_z, max_x, max_y, max_z]`` of the mask's points.
        score: proposal confidence. searchable: has a vector.
        best_frame: frame of the feature or None. has_thumbnail: a thumbnail is stored.
    """

    id: int
    scan_id: int
    scan_name: str
    mask_index: int
    point_count: int
    bbox: np.ndarray
    score: float
    searchable: bool
    best_frame: int | None
    has_thumbnail: bool


# -- stored forms ------------------------------------------------------------------------------------


def vector_to_blob(vec: np.ndarray) -> bytes:
    """A (D,) vector as the catalog stores it (float16 little endian)."""
    return np.asarray(vec).astype(VECTOR_DTYPE).tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    """A stored vector blob as (D,) float32."""
    return np.frombuffer(blob, VECTOR_DTYPE).astype(np.float32)


def stored_vectors(vectors: np.ndarray) -> np.ndarray:
    """(n, D) float32 rounded through the catalog's float16, i.e. exactly what a rebuild would load."""
    return np.asarray(vectors).astype(VECTOR_DTYPE).astype(np.float32)


def to_json(value: Any, what: str) -> str:
    """Sorted-key JSON; ValueError naming ``what`` when ``value`` is not JSON-serialisable."""
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from exc


def as_utc(value: datetime | None) -> datetime | None:
    """A stored naive-UTC timestamp as an aware UTC datetime."""
    return None if value is None else value.replace(tzinfo=timezone.utc)


# -- rows <-> records --------------------------------------------------------------------------------


def scan_info_from_row(row: Any, instances: int, searchable: int | None) -> ScanInfo:
    """A ``scans`` row (any object with its column attributes) plus its instance counts."""
    return ScanInfo(
        id=row.id,
        name=row.name,
        source_path=row.source_path,
        layout=row.layout,
        content_hash=row.content_hash,
        point_count=row.point_count,
        frame_count=row.frame_count,
        instances=int(instances),
        searchable=int(searchable or 0),
        status=row.status,
        indexed_at=as_utc(row.indexed_at),
        tags=json.loads(row.tags_json),
        info=json.loads(row.info_json),
    )


#: The labelled columns :func:`instance_info_from_row` reads (the reads module selects them).
INSTANCE_INFO_FIELDS = (
    "id",
    "scan_id",
    "scan_name",
    "mask_index",
    "point_count",
    "min_x",
    "min_y",
    "min_z",
    "max_x",
    "max_y",
    "max_z",
    "score",
    "searchable",
    "best_frame",
    "has_thumbnail",
)


def instance_info_from_row(r: Any) -> InstanceInfo:
    """A result row with the :data:`INSTANCE_INFO_FIELDS` attributes."""
    return InstanceInfo(
        id=r.id,
        scan_id=r.scan_id,
        scan_name=r.scan_name,
        mask_index=r.mask_index,
        point_count=r.point_count,
        bbox=np.array([r.min_x, r.min_y, r.min_z, r.max_x, r.max_y, r.max_z], dtype=np.float32),
        score=float(r.score),
        searchable=bool(r.searchable),
        best_frame=r.best_frame,
        has_thumbnail=bool(r.has_thumbnail),
    )


def instance_row_values(scan: ScanEntry, mask_index: int, inst: InstanceEntry, dim: int) -> dict[str, Any]:
    """The ``instances`` columns of instance ``mask_index`` of ``scan`` (all but id and scan_id).

    Raises:
        ValueError: a point index is out of the scan's range, or the vector is not ``dim``-dimensional.
    """
    last = int(inst.point_indices[-1])
    if last >= len(scan.points):
        raise ValueError(
            f"scan {scan.name} instance {mask_index}: point index {last} >= point count {len(scan.points)}"
        )
    if inst.vector is not None and inst.vector.shape != (dim,):
        raise ValueError(
            f"scan {scan.name} instance {mask_index}: vector has shape {inst.vector.shape}, the encoder's dim is {dim}"
        )
    pts = scan.points[inst.point_indices]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return {
        "mask_index": mask_index,
        "point_count": int(inst.point_indices.size),
        "min_x": float(lo[0]),
        "min_y": float(lo[1]),
        "min_z": float(lo[2]),
        "max_x": float(hi[0]),
        "max_y": float(hi[1]),
        "max_z": float(hi[2]),
        "extent": float((hi - lo).max()),
        "score": inst.score,
        "point_indices": encode_indices(inst.point_indices),
        "vector": None if inst.vector is None else vector_to_blob(inst.vector),
        "searchable": inst.vector is not None,
        "thumbnail": inst.thumbnail,
        "best_frame": inst.best_frame,
    }
