"""Write a top view of a scan coloured by instance, as a PNG: a proposer's masks or the ground truth.

    .venv/bin/python scripts/topview.py ../shared/data/scannet-scene0451_01 --gt -o gt.png
    .venv/bin/python scripts/topview.py ../shared/data/scannet-scene0451_01 --proposer geometric -o geo.png
    .venv/bin/python scripts/topview.py ../shared/data/labelfusion-shelf --proposer geometric --top 12 -o shelf.png

The view looks down the scan's up direction: the one the geometric proposer uses (from the camera poses
when the scan has frames, else estimated from its planes; z when that fails) unless ``--up x,y,z`` is given.
Points are drawn orthographically, higher points over lower ones, each as a square of ``--point`` pixels.

Colours. With ``--gt`` every ground-truth instance (``gt_instances.npy``, or the scan's 2D label maps
lifted to the points: :func:`scenegrep.indexer.evaluate.load_ground_truth`) gets its own colour. With
``--proposer`` the masks are drawn best score first, each only where no better one was drawn and only when
most of it is still free (:func:`mask_instances`), ``--top`` of them at most (``--finest``: the ``--top``
best, smallest first, which shows the parts a hierarchy proposes rather than their unions);
``--skip-structure`` leaves the floor/wall/ceiling masks of the geometric proposer out, so the objects on
the floor can be seen. Points in no drawn instance keep their own colour, darkened. The palette is fixed (instance k gets colour k mod 20),
so two runs of the same masks give the same picture.

Pillow writes the PNG (a dependency of the project already); ``--size`` bounds the longer side in pixels.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("topview")

#: 20 distinct colours (the "tab20" ordering: strong then pale hues), instance k -> PALETTE[k % 20].
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229),
    (127, 127, 127), (57, 59, 121)], np.uint8)


def instance_colors(instance: np.ndarray, base_colors: np.ndarray, dim: float = 0.35) -> np.ndarray:
    """(N, 3) uint8: PALETTE colour per instance id >= 1 (ids ranked, so 1, 2, ... take colours 0, 1, ...),
    the point's own colour times ``dim`` where the id is 0."""
    out = (np.asarray(base_colors, np.float64) * dim).astype(np.uint8)
    labelled = instance > 0
    _, rank = np.unique(instance[labelled], return_inverse=True)
    out[labelled] = PALETTE[rank.reshape(-1) % len(PALETTE)]
    return out


def mask_instances(masks, top: int, skip: np.ndarray | None = None, max_covered: float = 0.5,
                   finest: bool = False) -> np.ndarray:
    """(N,) int64 instance per point from overlapping, scored masks (0 = none).

    Masks are taken best score first (the order AP ranks them in); a mask is drawn when at most
    ``max_covered`` of its points are already drawn (a hierarchy proposes an object, its parts and its
    unions with neighbours: the best-scoring of them is drawn, the others mostly are not), and then colours
    only its points not drawn yet. At most ``top`` masks are drawn; ``skip`` (M,) bool leaves masks out.
    With ``finest`` the ``top`` best-scoring masks are taken smallest first instead: the finest partition
    among them (parts before the groups they merge into).
    """
    inst = np.zeros(masks.num_points, np.int64)
    order = np.argsort(-np.asarray(masks.scores), kind="stable")
    if skip is not None:
        order = order[~skip[order]]
    if finest:
        order = order[:top]
        order = order[np.argsort(masks.sizes[order], kind="stable")]
    drawn = 0
    for m in order.tolist():
        pts = masks.point_indices[masks.offsets[m]:masks.offsets[m + 1]]
        free = inst[pts] == 0
        if pts.size == 0 or free.mean() < 1.0 - max_covered:
            continue
        drawn += 1
        inst[pts[free]] = drawn
        if drawn >= top:
            break
    return inst


def render_top_view(points: np.ndarray, colors: np.ndarray, up: np.ndarray, size: int = 600,
                    point: int = 2, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An orthographic view of ``points`` (N, 3) looking down ``up``: higher points cover lower ones.

    The image axes are two directions perpendicular to ``up`` (the first as close to world x as possible);
    the longer side of the scan's extent becomes ``size`` pixels.
    """
    u = np.asarray(up, np.float64)
    u = u / np.linalg.norm(u)
    ref = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = ref - (ref @ u) * u
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)  # right-handed (e1, e2, up): x to the right, y up in the picture
    p = np.asarray(points, np.float64)
    a, b, height = p @ e1, p @ e2, p @ u
    lo_a, lo_b = a.min(), b.min()
    extent = max(a.max() - lo_a, b.max() - lo_b, 1e-9)
    scale = (size - 1 - point) / extent
    w = int((a.max() - lo_a) * scale) + point + 1
    h = int((b.max() - lo_b) * scale) + point + 1
    col = np.clip(((a - lo_a) * scale).astype(np.int64), 0, w - 1)
    row = np.clip((h - 1 - point - (b - lo_b) * scale).astype(np.int64), 0, h - 1)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = background
    order = np.argsort(height, kind="stable")  # numpy fancy assignment: the last write wins
    for dr in range(point):
        for dc in range(point):
            img[np.clip(row[order] + dr, 0, h - 1), np.clip(col[order] + dc, 0, w - 1)] = colors[order]
    return Image.fromarray(img)


def main() -> None:
    from scenegrep.indexer.evaluate import load_ground_truth
    from scenegrep.indexer.proposals import make_proposer
    from scenegrep.indexer.proposals.geometric import GeometricProposer
    from scenegrep.indexer.scans import read_scan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scan", type=Path, help="scan folder (any layout scenegrep reads)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--gt", action="store_true", help="colour by ground-truth instance")
    what.add_argument("--proposer", help="colour by this proposer's masks (geometric, lifted, union, ...)")
    ap.add_argument("--top", type=int, default=40, help="draw the best this many masks (default 40)")
    ap.add_argument("--skip-structure", action="store_true",
                    help="geometric: leave floor/wall/ceiling masks out of the picture")
    ap.add_argument("--finest", action="store_true",
                    help="among the --top best masks draw the smallest first (parts before their unions)")
    ap.add_argument("--up", help="view direction as x,y,z (default: the geometric proposer's up)")
    ap.add_argument("--size", type=int, default=600, help="longer side in pixels (default 600)")
    ap.add_argument("--point", type=int, default=2, help="point size in pixels (default 2)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    scan = read_scan(args.scan)
    geometric = GeometricProposer()
    debug: dict = {}
    skip = None
    if args.gt:
        inst, source = load_ground_truth(scan)
        log.info("%s: ground truth from %s, %d instances", scan.name, source, np.unique(inst[inst > 0]).size)
    elif args.proposer == "geometric":
        # ``debug`` also gets each mask's kind (floor/wall/ceiling/object) and the up direction
        masks, _ = geometric.propose_with_stats(scan, debug)
        if args.skip_structure:
            skip = np.asarray(debug["kind"]) != "object"
        inst = mask_instances(masks, args.top, skip, finest=args.finest)
    else:
        masks = make_proposer(args.proposer).propose(scan)
        inst = mask_instances(masks, args.top, finest=args.finest)
    if args.up:
        up = np.array([float(x) for x in args.up.split(",")])
    else:
        if "up" not in debug:
            geometric.propose_with_stats(scan, debug)
        up = debug["up"] if debug.get("up") is not None else np.array([0.0, 0.0, 1.0])
    img = render_top_view(scan.points, instance_colors(inst, scan.colors), up, args.size, args.point)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    log.info("%s: %d instances drawn, %s (%dx%d)", scan.name, np.unique(inst[inst > 0]).size, args.out, *img.size)


if __name__ == "__main__":
    from scenegrep.errors import ScenegrepError

    try:
        main()
    except ScenegrepError as e:  # bad input: one line naming the file, as the CLI does
        raise SystemExit(f"topview: {e}") from None
