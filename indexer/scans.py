"""Scan records and readers.

A :class:`Scan` is one room: a coloured point cloud plus the posed RGB-D frames it was made from.
Every later stage (proposals, features, storage) takes a ``Scan`` and nothing else, so readers for
new layouts only have to fill this record.

Conventions (as ScanNet and OpenMask3D):

* poses are camera-to-world 4x4 matrices, camera frame x right, y down, z forward (OpenCV);
* intrinsics are 3x3 pinhole matrices *at the resolution of the image they belong to*;
* depth images are uint16 PNGs, ``metres = value / depth_scale``; 0 (and 65535 for 7-Scenes) = no reading;
* pixel (u, v) integer coordinates are pixel centres when back-projecting (ray = K^-1 [u, v, 1]).

Layouts read by :func:`read_scan` (:func:`detect_layout` tells them apart):

* ``scannet`` (ScanNet / OpenMask3D export): ``<scan>.ply`` (``<name>_vh_clean_2.ply`` preferred among
  several), ``color/<i>.jpg|png``, ``depth/<i>.png``, ``pose/<i>.txt``, ``intrinsic/intrinsic_color.txt``
  (+ optional ``intrinsic_depth.txt``); frame folders may be absent (a bare point cloud).
* ``7scenes`` (7-Scenes / tsdf-fusion, flat): ``frame-XXXXXX.{color.png|jpg,depth.png,pose.txt}`` and
  ``camera-intrinsics.txt`` (the depth camera's); the point cloud is back-projected, filtered by depth
  consistency across neighbouring frames (:class:`DepthConsistency`) and voxel-averaged.

Both take an optional ``scan.json``: ``{"name": str, "tags": [str], "depth_scale": number,
"intrinsic_resolution": [w, h]}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scenegrep.errors import InputFileError, one_line
from scenegrep.indexer.voxels import KEY_OFFSET, group_sums, pack_coords, voxel_coords

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Errors: every one names the offending file or folder in ``path``.
# --------------------------------------------------------------------------------------------------


class ScanError(InputFileError):
    """A scan folder that cannot be read. ``str(err)`` is one line: "<path>: <problem>"."""


class ScanLayoutError(ScanError):
    """The folder matches no known layout, or a required file/folder of the layout is missing."""


class FrameError(ScanError):
    """A frame file is bad: pose not 4x4 or singular, unreadable image, mismatched frame sets."""


class PointCloudError(ScanError):
    """The point cloud file is unreadable or lacks vertices / colours."""


class ScanMetaError(ScanError):
    """``scan.json`` is unreadable or has a field of the wrong type."""


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
        return decode_image(self.color_path, "colour")

    def load_depth(self) -> np.ndarray:
        """(H, W) float32 depth in metres; 0 where the sensor gave no reading (0 or 65535)."""
        raw = decode_image(self.depth_path, "depth")
        if raw.ndim != 2:
            raise FrameError(self.depth_path, f"depth image must be single-channel, got shape {raw.shape}")
        raw = raw.astype(np.uint16, copy=False)  # 16-bit PNG values: exact
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


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------

LAYOUT_SCANNET = "scannet"
LAYOUT_7SCENES = "7scenes"

DEFAULT_DEPTH_SCALE = 1000.0
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_INT_STEM = re.compile(r"^\d+$", re.ASCII)
_SEVEN_FILE = re.compile(r"^frame-(\d+)\.(color|depth|pose)\.(png|jpg|jpeg|txt)$", re.ASCII | re.IGNORECASE)
# 16-bit greyscale PNG as Pillow opens it ("I" in Pillow < 10). 8-bit ("L") is refused: read as millimetres
# it would put every reading within 25 cm of the camera.
_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I"}
# Modes Image.convert("RGB") maps to colour faithfully; 16/32-bit and float modes are not colour images.
_COLOR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr"}
# A decoded image is at most this many times its file (deflate's limit is 1032:1, JPEG's far lower), so a
# header claiming more pixels than that is damaged and is refused before decoding.
_MAX_IMAGE_EXPANSION = 1100
_IMAGE_SLACK = 1 << 16
# Text files far larger than a matrix needs are refused before parsing (a 4x4 pose is ~300 bytes).
_MATRIX_FILE_MAX = 1 << 16
_SCAN_JSON_MAX = 1 << 20
# A PLY header is a few hundred bytes; the header is looked for in this many.
_PLY_HEADER_MAX = 1 << 16
_HASH_CHUNK = 1 << 20
# Tolerances for "this is a rigid camera pose". Real poses (ScanNet, tsdf-fusion) are orthonormal to ~1e-6;
# these only reject matrices that are clearly not poses (zeros, scales, garbage).
_POSE_DET_TOL = 1e-2
_POSE_ORTHO_TOL = 2e-2
_POSE_ROW_TOL = 1e-4
# Back-projected points are reduced once this many are buffered, so memory stays O(occupied voxels).
_VOXEL_FLUSH = 4_000_000


@dataclass(frozen=True)
class ScanMeta:
    """Optional ``<scan>/scan.json``.

    Attributes:
        name: display name (None: use the folder name).
        tags: free-form labels.
        depth_scale: depth image units per metre (default 1000, millimetres).
        intrinsic_resolution: (width, height) the intrinsics file was written for, when it differs from the
            images (OpenMask3D's ``intrinsic_resolution``); None means "at the image's own resolution".
        path: the scan.json file, or None when absent.
    """

    name: str | None = None
    tags: tuple[str, ...] = ()
    depth_scale: float = DEFAULT_DEPTH_SCALE
    intrinsic_resolution: tuple[int, int] | None = None
    path: Path | None = None


def read_scan_meta(root: Path | str) -> ScanMeta:
    """Read and type-check ``root/scan.json``; defaults when the file is absent. Unknown keys are ignored."""
    path = Path(root) / "scan.json"
    if not path.is_file():
        return ScanMeta()
    try:
        if path.stat().st_size > _SCAN_JSON_MAX:
            raise ScanMetaError(path, f"larger than {_SCAN_JSON_MAX} bytes: not scan metadata")
        data = json.loads(path.read_text(encoding="utf-8"))
    # ValueError: JSONDecodeError, UnicodeDecodeError, integers beyond Python's digit limit;
    # RecursionError: arrays nested thousands deep.
    except (OSError, ValueError, RecursionError) as e:
        raise ScanMetaError(path, f"unreadable JSON ({one_line(e)[:200]})") from e
    if not isinstance(data, dict):
        raise ScanMetaError(path, f"must hold a JSON object, got {type(data).__name__}")

    name = data.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or not name.isprintable()):
        raise ScanMetaError(path, f"'name' must be a non-empty one-line string, got {name!r:.80}")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ScanMetaError(path, f"'tags' must be a list of strings, got {tags!r:.80}")
    scale = data.get("depth_scale", DEFAULT_DEPTH_SCALE)
    if not _positive_finite(scale):
        raise ScanMetaError(path, f"'depth_scale' must be a positive number, got {scale!r:.80}")
    res = data.get("intrinsic_resolution")
    if res is not None:
        if (
            not isinstance(res, list)
            or len(res) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in res)
        ):
            raise ScanMetaError(path, f"'intrinsic_resolution' must be [width, height] in pixels, got {res!r:.80}")
        res = (int(res[0]), int(res[1]))
    return ScanMeta(
        name=name.strip() if name else None,
        tags=tuple(tags),
        depth_scale=float(scale),
        intrinsic_resolution=res,
        path=path,
    )


def _positive_finite(value: object) -> bool:
    """A JSON number (not a bool, which is an int subclass) that is finite and > 0 as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except OverflowError:  # an integer beyond float's range
        return False


def _read_matrix(path: Path, what: str) -> np.ndarray:
    """A whitespace-separated numeric text file as a 2-D float64 array; FrameError naming it otherwise."""
    try:
        if path.stat().st_size > _MATRIX_FILE_MAX:
            raise FrameError(path, f"larger than {_MATRIX_FILE_MAX} bytes: not a {what} matrix")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the shape check says so
            return np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:  # ValueError: bad numbers, ragged rows, undecodable bytes
        raise FrameError(path, f"unreadable {what} ({one_line(e)[:200]})") from e


def scale_intrinsics(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of the same camera at another image resolution.

    Each axis is scaled on its own (fx, cx by the width ratio; fy, cy by the height ratio): resized images
    need not keep the aspect ratio (ScanNet colour 1296x968 vs depth 640x480). Sizes are (width, height).
    """
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    out = np.array(K, dtype=np.float64)[:3, :3].copy()
    out[0, :] *= sx  # fx, skew, cx
    out[1, :] *= sy  # fy, cy
    return out


def read_intrinsics(path: Path | str) -> np.ndarray:
    """(3, 3) float64 pinhole matrix from a 3x3 or 4x4 (ScanNet) text file."""
    path = Path(path)
    if not path.is_file():
        raise FrameError(path, "intrinsics file missing")
    m = _read_matrix(path, "intrinsics")
    if m.shape not in ((3, 3), (4, 4), (3, 4)):
        raise FrameError(path, f"intrinsics must be 3x3 or 4x4, got {m.shape[0]}x{m.shape[1]}")
    K = m[:3, :3]
    if not np.all(np.isfinite(K)):
        raise FrameError(path, "intrinsics hold inf or NaN")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise FrameError(path, f"focal lengths must be positive, got fx={K[0, 0]:g} fy={K[1, 1]:g}")
    if abs(K[1, 0]) > 1e-6 or not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-6):
        raise FrameError(path, "not a pinhole matrix (expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]])")
    return K.copy()


def read_pose(path: Path | str) -> np.ndarray | None:
    """(4, 4) float64 camera-to-world pose, or None when it holds inf/NaN (ScanNet marks lost tracking so).

    Raises FrameError when the file is unreadable, not 4x4, or not a rigid transform (singular rotation,
    non-orthonormal rotation, bottom row not 0 0 0 1).
    """
    path = Path(path)
    m = _read_matrix(path, "pose")
    if m.shape != (4, 4):
        raise FrameError(path, f"pose must be 4x4, got {m.shape[0]}x{m.shape[1]}")
    if not np.all(np.isfinite(m)):
        return None
    R = m[:3, :3]
    det = float(np.linalg.det(R))
    if abs(abs(det) - 1.0) > _POSE_DET_TOL:
        raise FrameError(path, f"pose is singular or not rigid (det of rotation = {det:.4g}, expected 1)")
    ortho = float(np.abs(R.T @ R - np.eye(3)).max())
    if ortho > _POSE_ORTHO_TOL:
        raise FrameError(path, f"pose rotation is not orthonormal (max |R^T R - I| = {ortho:.3g})")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=_POSE_ROW_TOL):
        raise FrameError(path, f"pose bottom row must be 0 0 0 1, got {m[3].tolist()}")
    return m


def _image_errors() -> tuple[type[BaseException], ...]:
    """What Pillow raises for damaged images: OSError and ValueError, and its plugins' parse errors."""
    import struct
    import zlib

    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


def _open_image(path: Path, what: str, in_memory: bool = False):
    """Open ``path`` (header only) and check it can be a ``what`` ('colour' or 'depth') image: the format
    and mode, and that the claimed size fits the file. The caller closes the returned image.

    ``in_memory`` reads the file into memory first; decoding needs that, because Pillow skips a chunk by
    ``read(claimed length)``, which on a real file allocates the claimed length (up to 2 GiB) up front.
    """
    from PIL import Image

    try:
        size = path.stat().st_size
        im = Image.open(io.BytesIO(path.read_bytes()) if in_memory else path)
    except _image_errors() as e:
        raise FrameError(path, f"unreadable {what} image ({one_line(e)[:200]})") from e
    try:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise FrameError(path, f"{what} image has no pixels ({w}x{h})")
        if what == "depth":
            if im.format != "PNG" or im.mode not in _DEPTH_MODES:
                got = "8-bit" if im.mode in ("L", "P", "1") else f"mode {im.mode}"
                raise FrameError(path, f"depth image must be a 16-bit single-channel PNG (uint16), got a "
                                       f"{im.format or 'unknown'} image, {got}")
            bits = 16
        else:
            if im.mode not in _COLOR_MODES:
                raise FrameError(path, f"colour image must be RGB or convertible to it (grey, palette, RGBA), "
                                       f"got mode {im.mode}")
            bits = 1 if im.mode == "1" else 8 * len(im.getbands())
        decoded = h * -(-w * bits // 8)
        if decoded > _MAX_IMAGE_EXPANSION * size + _IMAGE_SLACK:
            raise FrameError(path, f"{what} image header claims {w}x{h} pixels, more than a {size}-byte file "
                                   "can hold (truncated or damaged)")
    except BaseException:
        im.close()
        raise
    return im


def decode_image(path: Path | str, what: str = "colour") -> np.ndarray:
    """The decoded image: colour as (H, W, 3) uint8 RGB, depth as stored ((H, W), 16-bit values).

    Raises FrameError naming the file for anything unreadable or of the wrong kind (see :func:`image_size`).
    """
    path = Path(path)
    with _open_image(path, what, in_memory=True) as im:
        try:
            im.load()
            return np.asarray(im.convert("RGB") if what == "colour" else im)
        except _image_errors() as e:
            raise FrameError(path, f"unreadable {what} image ({one_line(e)[:200]})") from e


def image_size(path: Path | str, what: str = "colour") -> tuple[int, int]:
    """(width, height) from the image header (no full decode). ``what`` is 'colour' or 'depth'.

    The header is checked too: depth must be a 16-bit single-channel PNG, colour an RGB image or one
    Pillow converts to RGB (grey, palette, RGBA), and the claimed size must fit the file. So a scan with
    bad images fails when it is read, before any proposer runs.
    """
    path = Path(path)
    with _open_image(path, what) as im:
        return (int(im.size[0]), int(im.size[1]))


def _ply_header(path: Path):
    """(plyfile header, byte offset of the body, file size) of a PLY file.

    Only the first ``_PLY_HEADER_MAX`` bytes are searched for the header, so a file that never ends its
    header is refused without reading it whole.
    """
    from plyfile import PlyData, PlyParseError

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_PLY_HEADER_MAX)
    except OSError as e:
        raise PointCloudError(path, f"unreadable PLY ({e.strerror or e})") from e
    if not head.startswith(b"ply"):
        raise PointCloudError(path, "unreadable PLY: not a PLY file (it does not start with 'ply')")
    if b"end_header" not in head:
        raise PointCloudError(path, f"unreadable PLY header (no end_header in the first {len(head)} bytes)")
    stream = io.BytesIO(head)
    try:
        # plyfile's own header parser (PlyData.read would go on to read every element, faces included).
        header = PlyData._parse_header(stream)
    except (PlyParseError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise PointCloudError(path, f"unreadable PLY header ({e})") from e
    return header, stream.tell(), size


def _ply_record_min_bytes(element, text: bool) -> int:
    """The fewest bytes one record of ``element`` can take in the file (lists may be empty)."""
    from plyfile import PlyListProperty

    if text:  # every value is at least one character plus a separator (space or newline)
        return 2 * len(element.properties)
    return sum(np.dtype(p.len_dtype if isinstance(p, PlyListProperty) else p.val_dtype).itemsize
               for p in element.properties)


def _read_ply_vertices(path: Path) -> tuple[np.ndarray, dict[str, np.dtype]]:
    """The vertex element's values as a (count, n_props) float64 (ascii) or structured (binary) array,
    plus each property's declared dtype. Sizes are checked against the file before anything is allocated."""
    from plyfile import PlyListProperty

    header, offset, size = _ply_header(path)
    elements = list(header.elements)
    vi = next((i for i, e in enumerate(elements) if e.name == "vertex"), None)
    if vi is None:
        raise PointCloudError(path, "PLY has no vertex element")
    vertex = elements[vi]
    # Only the elements up to the vertices are read; their claimed sizes must fit in the file.
    need = 0
    for e in elements[: vi + 1]:
        if e.count < 0:
            raise PointCloudError(path, f"PLY element {e.name!r} has a negative count {e.count}")
        rec = _ply_record_min_bytes(e, header.text)
        if rec == 0 and e.count:
            raise PointCloudError(path, f"PLY element {e.name!r} has {e.count} records but no properties")
        need += e.count * rec
    avail = size - offset
    if need > avail + (1 if header.text else 0):  # the last ascii line may lack its newline
        raise PointCloudError(
            path, f"PLY header claims {vertex.count} vertices, which need at least {need} bytes, but only "
                  f"{avail} bytes follow the header (truncated or damaged file)")
    if vertex.count == 0:
        raise PointCloudError(path, "PLY has no vertices")
    if any(isinstance(p, PlyListProperty) for p in vertex.properties):
        raise PointCloudError(path, "PLY vertices have list properties (not supported)")
    declared = {p.name: np.dtype(p.val_dtype) for p in vertex.properties}
    with open(path, "rb") as f:
        f.seek(offset)
        if header.text:
            return _read_ply_ascii(path, f, elements[:vi], vertex), declared
        return _read_ply_binary(path, f, elements[:vi], vertex, header.byte_order), declared


def _read_ply_binary(path: Path, f, before: list, vertex, byte_order: str) -> np.ndarray:
    from plyfile import PlyListProperty

    skip = 0
    for e in before:
        if any(isinstance(p, PlyListProperty) for p in e.properties):
            raise PointCloudError(path, f"PLY element {e.name!r} with list properties comes before the vertices "
                                        "(not supported)")
        skip += e.count * e.dtype(byte_order).itemsize
    dtype = vertex.dtype(byte_order)
    f.seek(skip, io.SEEK_CUR)
    buf = f.read(vertex.count * dtype.itemsize)  # checked against the file size above
    if len(buf) != vertex.count * dtype.itemsize:
        raise PointCloudError(path, f"PLY body truncated: {vertex.count} vertices need "
                                    f"{vertex.count * dtype.itemsize} bytes, {len(buf)} left")
    return np.frombuffer(buf, dtype=dtype)


def _read_ply_ascii(path: Path, f, before: list, vertex) -> np.ndarray:
    n_props = len(vertex.properties)
    # closing the wrapper closes ``f`` too; the caller's ``with`` then does nothing
    with io.TextIOWrapper(f, encoding="ascii", newline=None) as text:
        try:
            for e in before:  # one line per record
                for _ in range(e.count):
                    if not text.readline():
                        raise PointCloudError(path, f"PLY body ends inside element {e.name!r}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the shape check says so
                values = np.loadtxt(text, dtype=np.float64, comments=None, max_rows=vertex.count, ndmin=2)
        except ValueError as e:  # malformed numbers, ragged rows, non-ascii bytes (UnicodeDecodeError)
            raise PointCloudError(path, f"unreadable ascii PLY vertices ({one_line(e)[:200]})") from e
    if values.shape != (vertex.count, n_props):
        raise PointCloudError(path, f"ascii PLY body holds {values.shape[0]} vertices of {values.shape[1]} values, "
                                    f"header says {vertex.count} of {n_props}")
    return values


def _ply_column(path: Path, values: np.ndarray, declared: dict[str, np.dtype], name: str) -> np.ndarray:
    """One vertex property; ascii values of an integer property must be integers of its range."""
    if values.dtype.names:
        return values[name]
    col = values[:, list(declared).index(name)]
    dt = declared[name]
    if dt.kind in "iu":
        info = np.iinfo(dt)
        bad = ~np.isfinite(col) | (col != np.rint(col)) | (col < info.min) | (col > info.max)
        if bad.any():
            raise PointCloudError(path, f"PLY vertex property {name!r} is {dt.name} but holds "
                                        f"{float(col[bad][0]):g}")
    return col


def _ply_colors(path: Path, raw: np.ndarray, declared: np.dtype) -> np.ndarray:
    """(N, 3) colours of the declared type -> uint8."""
    if declared.kind == "f":
        raw = raw.astype(np.float64)
        if not np.all(np.isfinite(raw)):
            raise PointCloudError(path, "PLY vertex colours hold inf or NaN")
        # Float colours are 0..1 by convention (Open3D); anything larger is taken as 0..255.
        scale = 255.0 if float(raw.max()) <= 1.0 else 1.0
        return np.clip(np.rint(raw * scale), 0, 255).astype(np.uint8)
    raw = raw.astype(np.int64)
    if declared.itemsize > 1 and int(raw.max()) > 255:
        return (np.clip(raw, 0, 65535) // 257).astype(np.uint8)  # 16-bit colours
    return np.clip(raw, 0, 255).astype(np.uint8)


def read_ply_points(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of a PLY (point cloud or mesh): (N, 3) float32 xyz and (N, 3) uint8 RGB.

    Only the header and the vertex element are read (a mesh's faces are skipped). The header's counts are
    checked against the file's size before anything is allocated, so a damaged header is a
    :class:`PointCloudError` naming the file, never a huge allocation.
    """
    path = Path(path)
    values, declared = _read_ply_vertices(path)
    if not {"x", "y", "z"} <= set(declared):
        raise PointCloudError(path, "PLY vertices lack x, y, z properties")
    rgb_names = next((c for c in (("red", "green", "blue"), ("r", "g", "b")) if set(c) <= set(declared)), None)
    if rgb_names is None:
        raise PointCloudError(path, "PLY vertices have no colour properties (red, green, blue)")

    points = np.stack([_ply_column(path, values, declared, c) for c in ("x", "y", "z")], axis=1)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, rejected below
        points = points.astype(np.float32)
    bad = ~np.all(np.isfinite(points), axis=1)
    if bad.any():
        raise PointCloudError(path, f"{int(bad.sum())} of {len(points)} vertices have inf/NaN coordinates")
    # the colour properties share one declared type in practice; the widest one decides the convention
    ctype = max((declared[c] for c in rgb_names), key=lambda d: (d.kind == "f", d.itemsize))
    raw = np.stack([_ply_column(path, values, declared, c) for c in rgb_names], axis=1)
    return points, _ply_colors(path, raw, ctype)


def detect_layout(path: Path | str) -> str:
    """``"scannet"`` (a .ply with color/ depth/ pose/ intrinsic/ folders) or ``"7scenes"`` (flat
    ``frame-XXXXXX.{color,depth,pose}`` files). Raises ScanLayoutError for anything else."""
    root = Path(path)
    if not root.exists():
        raise ScanLayoutError(root, "no such folder")
    if not root.is_dir():
        raise ScanLayoutError(root, "not a folder")
    names = [p.name for p in root.iterdir() if p.is_file()]
    if any(n.lower().endswith(".ply") for n in names):
        return LAYOUT_SCANNET
    if any(_SEVEN_FILE.match(n) for n in names) or "camera-intrinsics.txt" in names:
        return LAYOUT_7SCENES
    if any((root / d).is_dir() for d in ("color", "depth", "pose", "intrinsic")):
        return LAYOUT_SCANNET  # a ScanNet folder that lost its point cloud: the reader says so
    raise ScanLayoutError(
        root,
        "matches no known layout (expected <scan>.ply with color/ depth/ pose/ intrinsic/, "
        "or 7-Scenes frame-XXXXXX.color/depth/pose files)",
    )


def read_scan(path: Path | str, *, frame_step: int = 1, voxel_size: float = 0.02,
              depth_check: bool = True) -> Scan:
    """Read one scan folder of either layout into a :class:`Scan`.

    Args:
        path: the scan folder.
        frame_step: 7-Scenes only: back-project every ``frame_step``-th valid frame into the point cloud.
        voxel_size: 7-Scenes only: voxel edge in metres for downsampling the back-projected cloud
            (xyz and colour averaged per voxel); 0 keeps every point.
        depth_check: 7-Scenes only: keep a back-projected pixel only where neighbouring frames' depth
            maps agree with it (:class:`DepthConsistency`, default settings); False keeps every pixel.

    Frames whose pose holds inf/NaN are skipped with a warning. Raises a :class:`ScanError` subclass
    naming the offending file for everything else.
    """
    if not isinstance(frame_step, int) or frame_step < 1:
        raise ValueError(f"frame_step must be a positive integer, got {frame_step!r}")
    if not np.isfinite(voxel_size) or voxel_size < 0:
        raise ValueError(f"voxel_size must be >= 0, got {voxel_size!r}")
    root = Path(path)
    layout = detect_layout(root)
    meta = read_scan_meta(root)
    if layout == LAYOUT_SCANNET:
        scan = _read_scannet(root, meta)
    else:
        scan = _read_7scenes(root, meta, frame_step=frame_step, voxel_size=voxel_size,
                             consistency=DepthConsistency() if depth_check else None)
    log.info("read %s scan %s: %d points, %d frames", layout, scan.name, scan.num_points, len(scan.frames))
    return scan


# -- ScanNet / OpenMask3D export --------------------------------------------------------------------


def _find_point_cloud(root: Path) -> Path:
    plys = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".ply")
    if not plys:
        raise ScanLayoutError(root, "no point cloud (.ply) in ScanNet layout")
    if len(plys) == 1:
        return plys[0]
    by_name = {p.name: p for p in plys}
    for cand in (f"{root.name}_vh_clean_2.ply", "scene.ply", f"{root.name}.ply"):
        if cand in by_name:
            return by_name[cand]
    clean2 = [p for p in plys if p.name.endswith("_vh_clean_2.ply")]
    if len(clean2) == 1:
        return clean2[0]
    raise PointCloudError(
        root,
        f"several .ply files ({', '.join(p.name for p in plys)}) and none is "
        f"{root.name}_vh_clean_2.ply or scene.ply",
    )


def _index_folder(folder: Path, suffixes: tuple[str, ...]) -> dict[int, Path]:
    """{frame id: file} for files ``<int>.<suffix>`` in ``folder``; other files are ignored."""
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        if not p.is_file() or p.suffix.lower() not in suffixes or not _INT_STEM.match(p.stem):
            continue
        fid = int(p.stem)
        if fid in out:
            raise FrameError(p, f"duplicate frame id {fid} (also {out[fid].name})")
        out[fid] = p
    return out


def _fmt_ids(ids: list[int], limit: int = 10) -> str:
    head = ", ".join(str(i) for i in ids[:limit])
    return f"[{head}{f', ... +{len(ids) - limit} more' if len(ids) > limit else ''}]"


def _check_frame_ids(root: Path, sets: dict[str, dict[int, Path]]) -> list[int]:
    """Sorted common ids; FrameError naming the ids each source lacks when the sets differ."""
    union: set[int] = set().union(*(set(s) for s in sets.values()))
    problems = [f"{name} lacks ids {_fmt_ids(sorted(union - set(s)))}" for name, s in sets.items()
                if len(s) != len(union)]
    if problems:
        raise FrameError(root, "colour/depth/pose frame ids do not match: " + "; ".join(problems))
    return sorted(union)  # numeric sort: "10" after "9"


class _FrameBuilder:
    """Builds Frames sharing one intrinsics source, caching the per-resolution scaled matrices."""

    def __init__(self, K_ref: np.ndarray, ref_size: tuple[int, int] | None, K_depth: np.ndarray | None,
                 ref_is_depth: bool, depth_scale: float):
        self.K_ref = K_ref
        self.ref_size = ref_size  # None: K_ref is at the reference image's own resolution
        self.K_depth = K_depth  # a separate depth intrinsics file (ScanNet intrinsic_depth.txt), at depth res.
        self.ref_is_depth = ref_is_depth  # 7-Scenes: the one intrinsics file belongs to the depth camera
        self.depth_scale = depth_scale
        self._cache: dict[tuple, np.ndarray] = {}

    def _scaled(self, K: np.ndarray, key: str, src: tuple[int, int] | None, dst: tuple[int, int]) -> np.ndarray:
        if src is None or src == dst:
            return K
        ck = (key, src, dst)
        if ck not in self._cache:
            self._cache[ck] = scale_intrinsics(K, src, dst)
        return self._cache[ck]

    def build(self, fid: int, color: Path, depth: Path, pose: np.ndarray) -> Frame:
        csize = image_size(color, "colour")
        dsize = image_size(depth, "depth")
        if self.ref_is_depth:
            K_d = self._scaled(self.K_ref, "ref", self.ref_size, dsize)
            K_c = self._scaled(K_d, "d2c", dsize, csize)
        else:
            K_c = self._scaled(self.K_ref, "ref", self.ref_size, csize)
            if self.K_depth is not None:
                K_d = self.K_depth
            else:
                K_d = self._scaled(K_c, "c2d", csize, dsize)
        return Frame(
            frame_id=fid, color_path=color, depth_path=depth, pose_c2w=pose,
            K_color=K_c.copy(), K_depth=K_d.copy(), color_size=csize, depth_size=dsize,
            depth_scale=self.depth_scale,
        )


def _build_frames(root: Path, ids: list[int], color: dict[int, Path], depth: dict[int, Path],
                  pose: dict[int, Path], builder: _FrameBuilder) -> list[Frame]:
    frames: list[Frame] = []
    skipped: list[int] = []
    for fid in ids:
        m = read_pose(pose[fid])
        if m is None:
            skipped.append(fid)
            continue
        frames.append(builder.build(fid, color[fid], depth[fid], m))
    if skipped:
        log.warning(
            "%s: skipping %d frame(s) whose pose holds inf/NaN (e.g. %s): ids %s",
            root, len(skipped), pose[skipped[0]], _fmt_ids(skipped),
        )
    return frames


def _read_scannet(root: Path, meta: ScanMeta) -> Scan:
    ply = _find_point_cloud(root)
    points, colors = read_ply_points(ply)
    used: list[Path] = [ply]

    folders = {k: root / k for k in ("color", "depth", "pose")}
    present = [k for k, d in folders.items() if d.is_dir()]
    frames: list[Frame] = []
    if present:
        if len(present) != len(folders):
            missing = [k for k in folders if k not in present]
            raise ScanLayoutError(folders[missing[0]], f"folder missing (while {', '.join(present)}/ exist)")
        color = _index_folder(folders["color"], _IMAGE_SUFFIXES)
        depth = _index_folder(folders["depth"], (".png",))
        pose = _index_folder(folders["pose"], (".txt",))
        ids = _check_frame_ids(root, {"color/": color, "depth/": depth, "pose/": pose})
        if ids:
            kc_path = root / "intrinsic" / "intrinsic_color.txt"
            kd_path = root / "intrinsic" / "intrinsic_depth.txt"
            if not kc_path.is_file():
                raise ScanLayoutError(kc_path, "colour intrinsics file missing")
            K_color = read_intrinsics(kc_path)
            K_depth = read_intrinsics(kd_path) if kd_path.is_file() else None
            used += [kc_path] + ([kd_path] if K_depth is not None else [])
            builder = _FrameBuilder(K_color, meta.intrinsic_resolution, K_depth,
                                    ref_is_depth=False, depth_scale=meta.depth_scale)
            frames = _build_frames(root, ids, color, depth, pose, builder)
            for fid in ids:
                used += [color[fid], depth[fid], pose[fid]]
    if meta.path is not None:
        used.append(meta.path)
    return Scan(
        name=meta.name or root.name, root=root, layout=LAYOUT_SCANNET, points=points, colors=colors,
        frames=frames, tags=list(meta.tags), content_hash=content_hash(root, used), source_file=ply,
    )


# -- 7-Scenes / tsdf-fusion -------------------------------------------------------------------------


def _read_7scenes(root: Path, meta: ScanMeta, *, frame_step: int, voxel_size: float,
                  consistency: "DepthConsistency | None") -> Scan:
    sets: dict[str, dict[int, Path]] = {"color": {}, "depth": {}, "pose": {}}
    for p in root.iterdir():
        m = _SEVEN_FILE.match(p.name)
        if m is None or not p.is_file():
            continue
        fid, kind, ext = int(m.group(1)), m.group(2).lower(), m.group(3).lower()
        if (kind == "pose") != (ext == "txt") or (kind == "depth" and ext != "png"):
            continue  # e.g. frame-000000.pose.png: not one of ours
        if fid in sets[kind]:
            raise FrameError(p, f"duplicate {kind} file for frame {fid} (also {sets[kind][fid].name})")
        sets[kind][fid] = p
    if not any(sets.values()):
        raise ScanLayoutError(root, "no frames (frame-XXXXXX.color/depth/pose files) in 7-Scenes layout")
    ids = _check_frame_ids(root, {f"{k} files": v for k, v in sets.items()})
    k_path = root / "camera-intrinsics.txt"
    if not k_path.is_file():
        raise ScanLayoutError(k_path, "intrinsics file missing (7-Scenes layout needs camera-intrinsics.txt)")
    # tsdf-fusion convention: the one intrinsics file is the depth camera's.
    builder = _FrameBuilder(read_intrinsics(k_path), meta.intrinsic_resolution, None,
                            ref_is_depth=True, depth_scale=meta.depth_scale)
    frames = _build_frames(root, ids, sets["color"], sets["depth"], sets["pose"], builder)
    if not frames:
        raise FrameError(root, f"all {len(ids)} frames have inf/NaN poses: nothing to back-project")
    points, colors = backproject_frames(frames[::frame_step], voxel_size, consistency)
    if len(points) == 0:
        what = "no valid depth pixels in the frames" if consistency is None else (
            "no depth pixel agrees with its neighbouring frames (depth check)")
        raise PointCloudError(root, f"{what}: empty point cloud")
    used = [k_path] + [p for s in sets.values() for p in s.values()]
    if meta.path is not None:
        used.append(meta.path)
    # The cloud depends on how it was built: the same files with other settings are another scan.
    check = "off" if consistency is None else consistency.key()
    params = f"7scenes:frame_step={frame_step};voxel_size={voxel_size!r};depth_check={check}".encode()
    return Scan(
        name=meta.name or root.name, root=root, layout=LAYOUT_7SCENES, points=points, colors=colors,
        frames=frames, tags=list(meta.tags), content_hash=content_hash(root, used, extra=params),
        source_file=None,
    )


def _checked_depth(frame: Frame) -> np.ndarray:
    depth = frame.load_depth()
    if depth.shape != (frame.depth_size[1], frame.depth_size[0]):
        raise FrameError(frame.depth_path, f"depth image is {depth.shape[::-1]}, header said {frame.depth_size}")
    return depth


def backproject_frame(frame: Frame, depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """World points (M, 3) float64 and colours (M, 3) uint8 of one frame's valid depth pixels.

    Pixel (u, v) integer coordinates are pixel centres (OpenCV). The colour of a depth pixel is read
    from the colour image at the same viewing ray (K_color K_depth^-1), nearest pixel. ``depth`` is the
    frame's depth map in metres when the caller has it already.
    """
    if depth is None:
        depth = _checked_depth(frame)
    v, u = np.nonzero(depth > 0)
    if len(u) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    z = depth[v, u].astype(np.float64)
    pix = np.stack([u, v, np.ones_like(u)], axis=0).astype(np.float64)  # (3, M)
    rays = np.linalg.inv(frame.K_depth) @ pix  # normalised coords, z = 1
    cam = rays * z  # (3, M)
    world = (frame.pose_c2w[:3, :3] @ cam).T + frame.pose_c2w[:3, 3]

    rgb = frame.load_color()
    h, w = rgb.shape[:2]
    cpix = frame.K_color @ rays
    uc = np.clip(np.rint(cpix[0]).astype(np.int64), 0, w - 1)
    vc = np.clip(np.rint(cpix[1]).astype(np.int64), 0, h - 1)
    return world, rgb[vc, uc]


class _VoxelGrid:
    """Running per-voxel sums of xyz and colour; memory O(occupied voxels + one flush buffer)."""

    def __init__(self, voxel_size: float):
        self.voxel = float(voxel_size)
        self.keys = np.zeros(0, np.int64)
        self.sums = np.zeros((0, 6), np.float64)  # x, y, z, r, g, b
        self.counts = np.zeros(0, np.float64)
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self.dropped = 0

    def add(self, points: np.ndarray, colors: np.ndarray) -> None:
        # absolute keys, comparable across batches (scenegrep.indexer.voxels)
        keys, ok = pack_coords(voxel_coords(points, self.voxel))
        if not ok.all():
            self.dropped += int((~ok).sum())
            keys, points, colors = keys[ok], points[ok], colors[ok]
        vals = np.concatenate([points, colors.astype(np.float64)], axis=1)
        self._buf.append((keys, vals, np.ones(len(keys))))
        self._buffered += len(keys)
        if self._buffered >= _VOXEL_FLUSH:
            self._reduce()

    def _reduce(self) -> None:
        if not self._buf:
            return
        keys = np.concatenate([self.keys] + [b[0] for b in self._buf])
        vals = np.concatenate([self.sums] + [b[1] for b in self._buf])
        cnts = np.concatenate([self.counts] + [b[2] for b in self._buf])
        self._buf, self._buffered = [], 0
        self.keys, inv = np.unique(keys, return_inverse=True)
        inv = inv.reshape(-1)
        n = len(self.keys)
        self.sums = group_sums(inv, vals, n)
        self.counts = np.bincount(inv, weights=cnts, minlength=n)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._reduce()
        mean = self.sums / self.counts[:, None]
        return mean[:, :3].astype(np.float32), np.clip(np.rint(mean[:, 3:]), 0, 255).astype(np.uint8)


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel: mean xyz (float32) and mean colour (uint8), sorted by voxel key."""
    grid = _VoxelGrid(voxel_size)
    grid.add(np.asarray(points, np.float64), np.asarray(colors))
    return grid.result()


@dataclass(frozen=True)
class DepthConsistency:
    """Multi-view depth check of back-projected pixels (the consistency test of MVS depth-map fusion).

    A depth camera's single reading is noisy, and pixels on a depth edge ("flying pixels") land in the
    empty space between foreground and background. Voxel-averaging keeps every such stray point as a
    voxel of its own, so a fused cloud of a few frames comes out centimetres thick around every surface
    (labelfusion-shelf at 2 cm voxels: half the voxels are seen by one frame only, and a box face 5 mm
    thick in the raw points is 2 cm thick after averaging). So a pixel is kept only when at least
    ``min_agree`` of its ``neighbours`` nearest frames in the sequence see the same surface (1 keeps
    more of a small object than 2 and was as clean on the shelf): its point,
    projected into that frame, lands on a reading within ``tolerance`` x depth of the projected depth.
    Structured-light sensors leave holes (labelfusion-shelf's depth maps are 70 % empty), so a frame
    looks up the nearest reading within ``hole_radius`` pixels.

    Attributes:
        tolerance: agreement tolerance as a fraction of the projected depth (3 cm at 1 m): depth noise
            and pose error both grow with range.
        min_agree: neighbouring frames that must agree (capped by the number of neighbours, so a scan of
            one frame keeps every pixel and one of two frames needs the other to agree).
        neighbours: frames nearest in the (used) sequence to check against, half before and half after;
            bounds the cost to ``neighbours`` projections per frame.
        hole_radius: pixels searched for the nearest reading where the depth map has none.
    """

    tolerance: float = 0.03
    min_agree: int = 1
    neighbours: int = 8
    hole_radius: float = 1.5

    def key(self) -> str:
        """The settings as a short string, hashed with the files into the scan's content hash."""
        return f"v1:{self.tolerance!r},{self.min_agree},{self.neighbours},{self.hole_radius!r}"


def _nearest_reading(depth: np.ndarray, radius: float) -> np.ndarray:
    """The depth map with each hole filled by the nearest reading within ``radius`` pixels (else 0)."""
    from scipy import ndimage

    dist, (iy, ix) = ndimage.distance_transform_edt(depth <= 0, return_indices=True)
    out = depth[iy, ix]
    out[dist > radius] = 0.0
    return out


def _agreeing_views(points: np.ndarray, frames: list[Frame], lookups: list[np.ndarray],
                    tolerance: float) -> np.ndarray:
    """(M,) how many of ``frames`` see each world point on their surface (depth within tolerance)."""
    agree = np.zeros(len(points), np.int32)
    for frame, depth in zip(frames, lookups):
        h, w = depth.shape
        w2c = np.linalg.inv(frame.pose_c2w)
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        pix = cam @ frame.K_depth.T
        front = z > 1e-6
        u = np.full(len(points), -1, np.int64)
        v = np.full(len(points), -1, np.int64)
        u[front] = np.floor(pix[front, 0] / z[front] + 0.5)
        v[front] = np.floor(pix[front, 1] / z[front] + 0.5)
        idx = np.flatnonzero(front & (u >= 0) & (u < w) & (v >= 0) & (v < h))
        reading = depth[v[idx], u[idx]]
        agree[idx] += (reading > 0) & (np.abs(reading - z[idx]) < tolerance * z[idx])
    return agree


def _consistent_parts(frames: list[Frame], check: DepthConsistency) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Each frame's back-projected points and colours, less the pixels its neighbours disagree with."""
    n = len(frames)
    half = check.neighbours // 2
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame -> (depth, hole-filled lookup)
    kept = total = 0
    for i in range(n):
        lo = max(0, min(i - half, n - 1 - check.neighbours))
        nbrs = [j for j in range(lo, min(n, lo + check.neighbours + 1)) if j != i][: check.neighbours]
        for j in [i, *nbrs]:
            if j not in cache:
                d = _checked_depth(frames[j])
                cache[j] = (d, _nearest_reading(d, check.hole_radius))
        points, colors = backproject_frame(frames[i], cache[i][0])
        need = min(check.min_agree, len(nbrs))
        if need > 0 and len(points):
            agree = _agreeing_views(points, [frames[j] for j in nbrs], [cache[j][1] for j in nbrs],
                                    check.tolerance)
            keep = agree >= need
            points, colors = points[keep], colors[keep]
            total += len(keep)
        else:
            total += len(points)
        kept += len(points)
        for j in [j for j in cache if j < lo and j < i + 1]:
            del cache[j]  # frames are visited in order: earlier neighbours are not needed again
        yield points, colors
    log.info("depth check kept %d of %d back-projected pixels (%.0f %%)", kept, total,
             100.0 * kept / max(total, 1))


def backproject_frames(frames: Iterable[Frame], voxel_size: float = 0.02,
                       consistency: DepthConsistency | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fuse frames into one coloured cloud: back-project valid depth, keep the pixels that neighbouring
    frames agree with (``consistency``; None keeps all), then voxel-average (0 = no averaging)."""
    frames = list(frames)
    parts: Iterable[tuple[np.ndarray, np.ndarray]]
    parts = (backproject_frame(f) for f in frames) if consistency is None else _consistent_parts(frames, consistency)
    if voxel_size <= 0:
        parts = list(parts)
        if not parts:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        return (np.concatenate([p for p, _ in parts]).astype(np.float32),
                np.concatenate([c for _, c in parts]).astype(np.uint8))
    grid = _VoxelGrid(voxel_size)
    for points, colors in parts:
        grid.add(points, colors)
    if grid.dropped:
        log.warning("dropped %d back-projected points more than %.0f m from the origin (bad depth scale?)",
                    grid.dropped, KEY_OFFSET * voxel_size)
    return grid.result()


# -- content hash -----------------------------------------------------------------------------------


def content_hash(root: Path, files: Iterable[Path], extra: bytes = b"") -> str:
    """sha256 over (relative path, size, bytes) of each file in path order, plus ``extra``.

    Relative paths make the hash survive moving the folder; the length prefixes keep file boundaries
    unambiguous. Files are streamed in 1 MiB chunks.
    """
    root = Path(root)
    h = hashlib.sha256(b"scenegrep-scan-v1\0")
    rels = sorted({Path(f).relative_to(root).as_posix(): Path(f) for f in files}.items())
    for rel, path in rels:
        rb = rel.encode("utf-8")
        try:
            with open(path, "rb") as fh:
                size = path.stat().st_size
                h.update(len(rb).to_bytes(8, "little") + rb + size.to_bytes(8, "little"))
                while chunk := fh.read(_HASH_CHUNK):
                    h.update(chunk)
        except OSError as e:
            raise ScanError(path, f"cannot read for hashing ({e})") from e
    h.update(extra)
    return h.hexdigest()
