"""Class-agnostic AP of a proposer on seeded synthetic rooms and on real scan folders (ScanNet protocol).

    python benchmarks/bench_masks.py --seeds 0 1 2 3 4 --json benchmarks/results/bench_masks.json
    python benchmarks/bench_masks.py --seeds --scans ../shared/data/scannet-scene0451_01 \\
        ../shared/data/mosd-tabletop/test50 --subsample 1 0.2 --json benchmarks/results/bench_masks_real.json

Each seed s is ``generate_scan(out, f"ap_{s}", seed=s, preset)``; scans are cached in ``--data``. A scan
folder is evaluated against its ground truth (``scenegrep.indexer.evaluate.load_ground_truth``: its
``gt_instances.npy``, or, for a 7-Scenes folder with ``frame-*.label.png`` label maps such as
labelfusion-shelf, the label maps lifted to the points by projection, depth test and majority vote); for
those the best IoU of every labelled object is reported too. ``--subsample r`` keeps a seeded random fraction ``r`` of the points (1 = all), to test a proposer at
other densities; the median point spacing is reported per row. Times are the proposer's alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from scenegrep.indexer.evaluate import evaluate_masks, evaluate_scan_dir, load_ground_truth
from scenegrep.indexer.proposals import make_proposer
from scenegrep.indexer.proposals.base import MaskSet
from scenegrep.indexer.proposals.geometric import point_spacing
from scenegrep.indexer.scans import Scan, read_scan
from scenegrep.indexer.synthetic import generate_scan

REPO = Path(__file__).resolve().parents[1]


def best_ious(masks: MaskSet, gt: np.ndarray) -> list[float]:
    """Best IoU of every gt instance (ascending id) over all masks."""
    out = []
    for g in np.unique(gt[gt > 0]):
        inside = gt == g
        inter = np.array([inside[m].sum() for m in masks])
        out.append(round(float((inter / (inside.sum() + masks.sizes - inter)).max()) if len(masks) else 0.0, 3))
    return out


def eval_folder(folder: Path, proposer, rate: float, seed: int, voxel: float) -> dict:
    is_7scenes = not (folder / "gt_instances.npy").exists() and any(folder.glob("frame-*.label.png"))
    scan = read_scan(folder, voxel_size=voxel) if is_7scenes else read_scan(folder)
    gt, _ = load_ground_truth(scan)  # gt_instances.npy, else the label maps lifted to the points
    if rate < 1:
        keep = np.sort(np.random.default_rng(seed).choice(scan.num_points, int(scan.num_points * rate),
                                                          replace=False))
        scan = Scan(scan.name, scan.root, scan.layout, scan.points[keep], scan.colors[keep], scan.frames)
        gt = gt[keep]
    t0 = time.perf_counter()
    masks = proposer.propose(scan)
    seconds = time.perf_counter() - t0
    res = evaluate_masks(masks, gt)
    row = {"scan": folder.name, "rate": rate, "points": scan.num_points,
           "spacing_cm": round(100 * point_spacing(scan.points), 2),
           "ap": round(res.ap, 4), "ap50": round(res.ap50, 4), "ap25": round(res.ap25, 4),
           "masks": res.num_pred, "gt": res.num_gt, "seconds": round(seconds, 2)}
    if is_7scenes:
        row["best_iou"] = best_ious(masks, gt)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4],
                    help="synthetic room seeds (none: only --scans)")
    ap.add_argument("--preset", choices=["small", "scannet"], default="small")
    ap.add_argument("--scans", type=Path, nargs="*", default=[], help="real scan folders")
    ap.add_argument("--subsample", type=float, nargs="+", default=[1.0], help="point fractions for --scans")
    ap.add_argument("--subsample-seed", type=int, default=10)
    ap.add_argument("--voxel", type=float, default=0.02, help="7-Scenes back-projection voxel (m)")
    ap.add_argument("--proposer", default="geometric")
    ap.add_argument("--options", type=json.loads, default={}, help="proposer options as JSON")
    ap.add_argument("--data", type=Path, default=REPO / ".bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    proposer = make_proposer(args.proposer, **args.options)
    rows = []
    for seed in args.seeds:
        scan_dir = args.data / f"ap-{args.preset}" / f"ap_{seed}"
        if not (scan_dir / "gt_instances.npy").exists():
            generate_scan(scan_dir.parent, scan_dir.name, seed=seed, preset=args.preset)
        t0 = time.perf_counter()
        res = evaluate_scan_dir(scan_dir, proposer)
        rows.append({"seed": seed, "ap": round(res.ap, 4), "ap50": round(res.ap50, 4), "ap25": round(res.ap25, 4),
                     "masks": res.num_pred, "gt": res.num_gt, "seconds": round(time.perf_counter() - t0, 2)})
        print(json.dumps(rows[-1]), flush=True)
    for folder in args.scans:
        for rate in args.subsample:
            rows.append(eval_folder(folder, proposer, rate, args.subsample_seed, args.voxel))
            print(json.dumps(rows[-1]), flush=True)
    scored = [r for r in rows if not np.isnan(r["ap"])]
    mean = {k: round(sum(r[k] for r in scored) / len(scored), 4) for k in ("ap", "ap50", "ap25")} if scored else {}
    out = {"preset": args.preset, "proposer": args.proposer, "options": args.options, "scans": rows, "mean": mean}
    print(json.dumps({"mean": mean}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
