"""Proposers x scans: class-agnostic AP / AP50 / AP25 and time, through the public API.

    python benchmarks/bench_proposers.py --proposers geometric lifted union \\
        --scans ../shared/data/scannet-scene0451_01 ../shared/data/mosd-tabletop/test50 \\
        ../shared/data/mosd-tabletop/test55 ../shared/data/labelfusion-shelf --synthetic 0 1 2 \\
        --json benchmarks/results/bench_proposers.json

Each (proposer, scan) row is ``scenegrep.evaluate_masks(scan, proposer=..., per_instance=True)``: ground
truth from ``gt_instances.npy`` or, without one, the scan's 2D label maps. ``--synthetic`` seeds add
generated ``small`` rooms (cached under ``--data``). Times cover reading, proposing and evaluating. Scans
without frames give the ``lifted`` proposer nothing to lift (0 masks), so ``union`` equals ``geometric``
there. Weight-free only: ``lifted`` uses Felzenszwalb superpixels (no SAM weights here).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import scenegrep

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proposers", nargs="+", default=["geometric", "lifted", "union"])
    ap.add_argument("--scans", nargs="*", type=Path, default=[])
    ap.add_argument("--synthetic", nargs="*", type=int, default=[], help="seeds of synthetic small rooms")
    ap.add_argument("--data", type=Path, default=REPO / ".bench" / "proposers")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    scans = list(args.scans)
    for seed in args.synthetic:
        folder = args.data / f"synth_{seed}"
        if not folder.is_dir():
            scenegrep.generate_scans(folder, 1, seed=seed, preset="small")
        scans.extend(sorted(p for p in folder.iterdir() if p.is_dir()))
    rows = []
    for scan in scans:
        for proposer in args.proposers:
            t0 = time.perf_counter()
            try:
                res = scenegrep.evaluate_masks(scan, proposer=proposer, per_instance=True)
            except scenegrep.ScenegrepError as e:
                rows.append({"scan": scan.name, "proposer": proposer, "error": str(e)})
                continue
            row = {"scan": res.scan, "proposer": proposer, "masks": res.masks, "ap": round(res.ap, 3),
                   "ap50": round(res.ap50, 3), "ap25": round(res.ap25, 3),
                   "seconds": round(time.perf_counter() - t0, 1), "gt_source": res.gt_source,
                   "best_iou": {str(i["gt"]): round(i["best_iou"], 3) for i in res.instances or []
                                if not i.get("ignored")} if len(res.instances or []) <= 4 else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"machine": f"{platform.machine()}, {platform.python_version()}", "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
