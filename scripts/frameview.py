"""Look at one ground-truth object in a scan's own frames: its label, its lifted points and the best masks.

    .venv/bin/python scripts/frameview.py ../shared/data/labelfusion-shelf --gt-id 48 --frames 0 7 11 \\
        --proposer geometric --proposer lifted -o straws.png

One row per frame, one panel per column:

1. the colour image with the frame's own label map of ``--gt-id`` tinted green (scans with 2D label maps);
2. the scan's points that carry ``--gt-id`` in the ground truth
   (:func:`scenegrep.indexer.evaluate.load_ground_truth`: ``gt_instances.npy`` or the label maps lifted by
   projection, depth test and majority vote), drawn green where the frame sees them;
3. one panel per ``--proposer``: the mask with the best IoU against that object, magenta, with its IoU
   (over every mask, whatever its size) in the corner.

With ``--crop`` every row is cut to the box around what it draws (label, object points, masks) plus
``--crop`` pixels, and scaled to ``--row-height``. Points are drawn where the features stage's visibility
test (projection, depth test of ``--depth-threshold`` metres) puts them, as squares of ``--point`` pixels.
Written to see why a mask and a label disagree: on labelfusion-shelf the label of the straws (48) reaches
past the bag onto the dark gap and the bin's side wall and leaves the bag's white left part out, so no mask
of the bag itself reaches IoU 0.5 (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger("frameview")

GREEN = np.array([0, 255, 0], np.uint8)
MAGENTA = np.array([255, 0, 255], np.uint8)


def best_mask(masks, inside: np.ndarray) -> tuple[np.ndarray, float]:
    """(point indices, IoU) of the mask with the highest IoU against the boolean point set ``inside``."""
    n_in = int(inside.sum())
    best, best_iou = np.zeros(0, np.int64), 0.0
    for m in masks:
        inter = int(inside[m].sum())
        iou = inter / (n_in + m.size - inter) if inter else 0.0
        if iou > best_iou:
            best, best_iou = m, iou
    return best, best_iou


def draw_points(image: np.ndarray, pix: np.ndarray, colour: np.ndarray, size: int) -> np.ndarray:
    """A copy of ``image`` with a ``size`` x ``size`` square of ``colour`` at each row-major pixel."""
    out = image.copy()
    h, w = out.shape[:2]
    r = size // 2
    for p in pix.tolist():
        v, u = divmod(p, w)
        out[max(v - r, 0) : v + r + 1, max(u - r, 0) : u + r + 1] = colour
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scan", type=Path)
    ap.add_argument("--gt-id", type=int, required=True, help="ground-truth instance id to look at")
    ap.add_argument("--frames", type=int, nargs="+", default=[0], help="positions in the scan's frame list")
    ap.add_argument("--proposer", action="append", default=[], help="proposer name (repeatable)")
    ap.add_argument("--depth-threshold", type=float, default=0.05)
    ap.add_argument("--point", type=int, default=5, help="square size in pixels")
    ap.add_argument("--scale", type=float, default=0.5, help="factor on the output's size")
    ap.add_argument("--crop", type=int, default=None, help="cut rows to what they draw plus this margin (px)")
    ap.add_argument("--row-height", type=int, default=360, help="height of a cropped row (px)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    from scenegrep.indexer.evaluate import load_ground_truth
    from scenegrep.indexer.features.visibility import exact_depth, frame_visible_pixels, homogeneous_points
    from scenegrep.indexer.labelmaps import label_map_path, read_label_map
    from scenegrep.indexer.proposals import make_proposer
    from scenegrep.indexer.scans import read_scan

    scan = read_scan(args.scan)
    gt, source = load_ground_truth(scan)
    bad = [pos for pos in args.frames if not 0 <= pos < len(scan.frames)]
    if bad:
        raise SystemExit(f"{args.scan}: no frame at position(s) {bad}; the scan has {len(scan.frames)} frames")
    inside = gt == args.gt_id
    if not inside.any():
        raise SystemExit(f"{args.scan}: no point has ground-truth id {args.gt_id} ({source})")
    found = [(name, *best_mask(make_proposer(name).propose(scan), inside)) for name in args.proposer]
    for name, m, iou in found:
        log.info("%s: best mask %d points, IoU %.3f with id %d (%d points)", name, m.size, iou, args.gt_id,
                 inside.sum())
    xh = homogeneous_points(scan.points)
    rows = []
    for pos in args.frames:
        frame = scan.frames[pos]
        image = np.asarray(frame.load_color(), np.uint8)[..., :3]
        idx, pix = frame_visible_pixels(xh, frame, exact_depth(frame), args.depth_threshold)
        label = image.copy()
        drawn = [pix[inside[idx]]]
        path = label_map_path(frame)
        if path.is_file():
            on = read_label_map(path) == args.gt_id
            if on.shape == image.shape[:2]:
                label[on] = (label[on] // 2 + GREEN // 2).astype(np.uint8)
                drawn.append(np.flatnonzero(on))
        panels = [label, draw_points(image, pix[inside[idx]], GREEN, args.point)]
        for name, m, iou in found:
            sel = np.zeros(scan.num_points, bool)
            sel[m] = True
            drawn.append(pix[sel[idx]])
            panels.append(draw_points(image, pix[sel[idx]], MAGENTA, args.point))
        if args.crop is not None:
            v, u = np.divmod(np.concatenate(drawn), image.shape[1])
            if v.size:
                v0, v1 = max(v.min() - args.crop, 0), min(v.max() + args.crop + 1, image.shape[0])
                u0, u1 = max(u.min() - args.crop, 0), min(u.max() + args.crop + 1, image.shape[1])
                panels = [p[v0:v1, u0:u1] for p in panels]
        row = Image.fromarray(np.concatenate(panels, axis=1))
        if args.crop is not None:
            row = row.resize((round(row.width * args.row_height / row.height), args.row_height))
        pen = ImageDraw.Draw(row)
        width = row.width // len(panels)
        titles = ["label map", f"gt id {args.gt_id}"] + [f"{n}: IoU {i:.2f}" for n, _, i in found]
        for k, text in enumerate(titles):
            pen.text((k * width + 6, 6), text, fill=(255, 255, 255))
        rows.append(np.asarray(row))
    wide = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, wide - r.shape[1]), (0, 0))) for r in rows]
    picture = Image.fromarray(np.concatenate(rows, axis=0))
    if args.scale != 1:
        picture = picture.resize((round(picture.width * args.scale), round(picture.height * args.scale)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    log.info("wrote %s (%dx%d)", args.out, picture.width, picture.height)


if __name__ == "__main__":
    from scenegrep.errors import ScenegrepError

    try:
        main()
    except ScenegrepError as e:  # bad input: one line naming the file, as the CLI does
        raise SystemExit(f"frameview: {e}") from None
