"""2D instance label maps beside a scan's frames: where they are, how they are read, and how they become
per-point ground truth.

A label map is an integer PNG (8 or 16 bit) holding one instance id per pixel of a frame; 0 is background
or unannotated. Where it lives depends on the scan's layout:

* ``7scenes``: ``frame-000000.label.png`` beside ``frame-000000.color.png`` (labelfusion-shelf has them);
* ``scannet``: ``instance-filt/<frame id>.png``, the name of ScanNet's own 2D instance export.

A map may have any resolution: a colour-image pixel (u, v) reads the map at
``(u * W_map // W_color, v * H_map // H_color)``.

:func:`lift_label_maps` turns the maps of a scan into one id per point: every frame with a map is
projected with the depth test of the features stage
(:func:`scenegrep.indexer.features.visibility.frame_visible_pixels`), each visible point votes for the label
under it (background included), and a point takes the label with the most votes (ties go to the smaller
id, so background wins a tie). A point no frame sees gets 0 (void for the evaluation).

:func:`write_synthetic_label_maps` renders the ``instance-filt`` maps of a synthetic scan from its own scene
(re-built from the seed in ``scan.json``): 2D ground truth independent of the point cloud's labels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scenegrep.errors import InputFileError

if TYPE_CHECKING:
    from scenegrep.indexer.scans import Frame, Scan

log = logging.getLogger(__name__)

#: Folder of per-frame instance maps in the ScanNet layout (ScanNet's ``*_2d-instance-filt`` export).
SCANNET_LABEL_DIR = "instance-filt"


class LabelMapError(InputFileError):
    """A label map that cannot be used, or a scan without any. ``str(err)`` is one line naming the file."""


def label_map_path(frame: "Frame") -> Path:
    """Where ``frame``'s label map would be (see module doc); the file may not exist."""
    color = Path(frame.color_path)
    name = color.name
    if name.startswith("frame-") and ".color." in name:  # 7-Scenes: frame-XXXXXX.color.png|jpg
        return color.with_name(name.split(".color.")[0] + ".label.png")
    return color.parent.parent / SCANNET_LABEL_DIR / f"{frame.frame_id}.png"


def read_label_map(path: Path | str) -> np.ndarray:
    """(H, W) int64 instance ids of a label map PNG (0 = background).

    Raises:
        LabelMapError: the file is unreadable or not a single-channel integer image.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as e:
        raise LabelMapError(path, f"unreadable label map ({e})") from e
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise LabelMapError(path, f"a label map must be a single-channel integer image, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def frames_with_label_maps(scan: "Scan") -> list[int]:
    """Positions in ``scan.frames`` of the frames that have a label map."""
    return [i for i, f in enumerate(scan.frames) if label_map_path(f).is_file()]


def labels_at_pixels(labels: np.ndarray, pix: np.ndarray, color_size: tuple[int, int]) -> np.ndarray:
    """The label under each row-major colour-image pixel ``pix`` (see module doc for other sizes)."""
    wc, hc = int(color_size[0]), int(color_size[1])
    h, w = labels.shape
    u, v = pix % wc, pix // wc
    if (w, h) != (wc, hc):
        u, v = u * w // wc, v * h // hc
    return labels[v, u]


def lift_label_maps(scan: "Scan", *, depth_threshold: float = 0.05, require_positive_depth: bool = True,
                    frame_positions: list[int] | np.ndarray | None = None) -> np.ndarray:
    """(N,) int64 per-point instance ids voted from the scan's label maps (see module doc).

    Args:
        scan: the scan (points and frames).
        depth_threshold: metres, the depth test (tighter than the features stage's 0.2 m, so points
            hidden just behind an object's silhouette do not take its label).
        require_positive_depth: also require z > 0 and a sensor reading.
        frame_positions: frames to use (default: every frame with a label map).

    Raises:
        LabelMapError: the scan has no label map, or one is unreadable.
    """
    from scenegrep.indexer.features.visibility import exact_depth, frame_visible_pixels, homogeneous_points

    positions = frames_with_label_maps(scan) if frame_positions is None else [int(p) for p in frame_positions]
    if not positions:
        raise LabelMapError(scan.root, f"no label maps (frame-*.label.png or {SCANNET_LABEL_DIR}/<id>.png)")
    xh = homogeneous_points(scan.points)
    pts_l: list[np.ndarray] = []
    lab_l: list[np.ndarray] = []
    for pos in positions:
        frame = scan.frames[pos]
        labels = read_label_map(label_map_path(frame))
        try:
            idx, pix = frame_visible_pixels(xh, frame, exact_depth(frame), depth_threshold, require_positive_depth)
        except np.linalg.LinAlgError as e:
            log.warning("%s: frame %d has no usable pose (%s); its label map is skipped", scan.name, frame.frame_id, e)
            continue
        pts_l.append(idx)
        lab_l.append(labels_at_pixels(labels, pix, frame.color_size))
    out = np.zeros(scan.num_points, np.int64)
    if not pts_l:
        return out
    pts = np.concatenate(pts_l)
    lab = np.concatenate(lab_l)
    ids, lab_c = np.unique(lab, return_inverse=True)
    key = pts * ids.size + lab_c.reshape(-1)
    ukey, counts = np.unique(key, return_counts=True)
    p, l_c = ukey // ids.size, ukey % ids.size
    # Per point: most votes first, then the smaller id; lexsort's last key is the primary one.
    order = np.lexsort((l_c, -counts, p))
    first = np.concatenate([[True], p[order][1:] != p[order][:-1]])
    winners = order[first]
    out[p[winners]] = ids[l_c[winners]]
    log.info("%s: label maps of %d frames lifted to %d points (%d labelled, %d instances)", scan.name,
             len(pts_l), scan.num_points, int(np.count_nonzero(out)), np.unique(out[out != 0]).size)
    return out


def write_synthetic_label_maps(scan_dir: Path | str) -> list[Path]:
    """Render ``instance-filt/<i>.png`` (uint16, 0 = floor, walls and sky) for a synthetic scan written by
    :func:`scenegrep.indexer.synthetic.generate_scan`, from its scene rebuilt from ``scan.json``'s seed and
    preset, with the poses and intrinsics in the folder. Returns the written files.

    Raises:
        LabelMapError: the folder is not a synthetic scan.
    """
    from PIL import Image

    from scenegrep.indexer import synthetic

    scan_dir = Path(scan_dir)
    try:
        meta = json.loads((scan_dir / "scan.json").read_text())["synthetic"]
        seed, preset = int(meta["seed"]), synthetic.ROOM_SIZES[meta["preset"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LabelMapError(scan_dir / "scan.json", f"not a synthetic scan ({e})") from e
    # The same first draws as generate_scan: the room comes first from the scan's generator.
    rng = np.random.default_rng(np.random.SeedSequence(seed % 2**64))
    scene = synthetic.Scene(synthetic.make_room(rng, preset))
    K = np.loadtxt(scan_dir / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    out_dir = scan_dir / SCANNET_LABEL_DIR
    out_dir.mkdir(exist_ok=True)
    written = []
    for pose_file in sorted((scan_dir / "pose").glob("*.txt"), key=lambda p: int(p.stem)):
        _, _, inst = scene.render(np.loadtxt(pose_file), K, preset.image_size)
        path = out_dir / f"{pose_file.stem}.png"
        Image.fromarray(np.maximum(inst, 0).astype(np.uint16)).save(path)
        written.append(path)
    return written
