"""Class-agnostic AP of a proposer on seeded synthetic rooms (ScanNet evaluator protocol).

    python benchmarks/bench_masks.py --seeds 0 1 2 3 4 --json benchmarks/results/bench_masks.json

Each seed s is ``generate_scan(out, f"ap_{s}", seed=s, preset)``; scans are cached in ``--data``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from scenegrep.indexer.evaluate import evaluate_scan_dir  # noqa: E402
from scenegrep.indexer.proposals import make_proposer  # noqa: E402
from scenegrep.indexer.synthetic import generate_scan  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--preset", choices=["small", "scannet"], default="small")
    ap.add_argument("--proposer", default="geometric")
    ap.add_argument("--data", type=Path, default=REPO / ".bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    proposer = make_proposer(args.proposer)
    rows = []
    for seed in args.seeds:
        scan_dir = args.data / f"ap-{args.preset}" / f"ap_{seed}"
        if not (scan_dir / "gt_instances.npy").exists():
            generate_scan(scan_dir.parent, scan_dir.name, seed=seed, preset=args.preset)
        t0 = time.perf_counter()
        res = evaluate_scan_dir(scan_dir, proposer)
        rows.append({"seed": seed, "ap": round(res.ap, 4), "ap50": round(res.ap50, 4), "ap25": round(res.ap25, 4),
                     "masks": res.num_pred, "gt": res.num_gt, "seconds": round(time.perf_counter() - t0, 2)})
        print(json.dumps(rows[-1]))
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in ("ap", "ap50", "ap25")}
    out = {"preset": args.preset, "proposer": args.proposer, "scans": rows, "mean": mean}
    print(json.dumps({"mean": mean}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
