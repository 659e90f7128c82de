"""The lifted proposer: the oracle degradation curve, the weight-free segmenter's AP, and the cost per scan.

    python benchmarks/bench_lifted.py --seeds 0 1 2 3 4 --json benchmarks/results/bench_lifted.json
    python benchmarks/bench_lifted.py --seeds --cost-preset scannet       # cost only

* **Oracle curve** (``--seeds``): seeded small synthetic rooms (``generate_scan(out, f"lift_{s}", seed=s)``)
  get ``instance-filt/<i>.png`` label maps rendered from their scenes
  (:func:`scenegrep.indexer.labelmaps.write_synthetic_label_maps`); the oracle segmenter returns those
  maps as 2D masks (:class:`~scenegrep.indexer.proposals.segmenters.LabelMapSegmenter`), degraded by
  :class:`~scenegrep.indexer.proposals.segmenters.PerturbedSegmenter` at the rates of ``CASES`` (erosion in
  pixels at 320x240; split and merge as the probability per 2D mask). AP is pooled over the rooms.
* **Weight-free** (``felzenszwalb``, the default segmenter without a SAM checkpoint) on the same rooms and
  on ``--shelf`` (labelfusion-shelf, ground truth lifted from its label maps).
* **Cost** (``--cost-preset scannet``): one ScanNet-size room (225k points, 300 frames 640x480; the
  default frame budget uses 100 of them), lifted proposer with the weight-free segmenter and with the
  oracle (which isolates lifting + merging from segmentation); wall time per step and peak resident memory
  growth (VmHWM after reset).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from scenegrep.indexer.evaluate import evaluate_many, evaluate_masks, load_ground_truth
from scenegrep.indexer.labelmaps import write_synthetic_label_maps
from scenegrep.indexer.proposals.lifted import LiftedConfig, LiftedProposer
from scenegrep.indexer.proposals.segmenters import FelzenszwalbSegmenter, LabelMapSegmenter, PerturbedSegmenter
from scenegrep.indexer.scans import read_scan
from scenegrep.indexer.synthetic import generate_scan

from memory import reset_peak, status_kb  # benchmarks/memory.py (run from the repo root or benchmarks/)

#: Degradations of the oracle: (label, PerturbedSegmenter options).
CASES: list[tuple[str, dict]] = [
    ("clean", {}),
    ("erode 1 px", {"erode_px": 1}),
    ("erode 2 px", {"erode_px": 2}),
    ("erode 4 px", {"erode_px": 4}),
    ("split 10 %", {"split_rate": 0.1}),
    ("split 20 %", {"split_rate": 0.2}),
    ("split 40 %", {"split_rate": 0.4}),
    ("merge 10 %", {"merge_rate": 0.1}),
    ("merge 20 %", {"merge_rate": 0.2}),
    ("merge 40 %", {"merge_rate": 0.4}),
    ("erode 1 + split 10 % + merge 10 %", {"erode_px": 1, "split_rate": 0.1, "merge_rate": 0.1}),
    ("erode 2 + split 20 % + merge 20 %", {"erode_px": 2, "split_rate": 0.2, "merge_rate": 0.2}),
]


def _scan_with_maps(data: Path, name: str, seed: int, preset: str) -> Path:
    path = data / name
    if not (path / "instance-filt").is_dir():
        generate_scan(data, name, seed=seed, preset=preset)
        write_synthetic_label_maps(path)
    return path


def _row(label: str, res, seconds: float) -> dict:
    return {"case": label, "ap": round(res.ap, 3), "ap50": round(res.ap50, 3), "ap25": round(res.ap25, 3),
            "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--data", type=Path, default=Path("bench-data/lifted"))
    ap.add_argument("--shelf", type=Path, default=Path("../shared/data/labelfusion-shelf"))
    ap.add_argument("--cost-preset", default=None, help="also time one room of this preset (scannet)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--config", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="LiftedConfig fields for every run, e.g. contained_ratio=0.6 consensus=0.7")
    args = ap.parse_args()
    fields = {f.name: f.type for f in dataclasses.fields(LiftedConfig)}
    overrides: dict = {}
    for item in args.config:
        key, _, value = item.partition("=")
        if key not in fields:
            ap.error(f"--config {item}: no LiftedConfig field {key!r}")
        kind = str(fields[key])
        overrides[key] = (None if value == "None" else value.lower() in ("1", "true") if "bool" in kind
                          else int(value) if "int" in kind else float(value))
    config = LiftedConfig(**overrides)
    logging.basicConfig(level=logging.WARNING)
    args.data.mkdir(parents=True, exist_ok=True)
    out: dict = {"config": dataclasses.asdict(config), "oracle": [], "weight_free": [], "cost": []}

    scans = []
    for s in args.seeds:
        p = _scan_with_maps(args.data, f"lift_{s}", s, "small")
        scans.append((read_scan(p), np.load(p / "gt_instances.npy")))
    if scans:
        for label, opts in CASES:
            seg = PerturbedSegmenter(LabelMapSegmenter(), **opts) if opts else LabelMapSegmenter()
            t0 = time.perf_counter()
            res = evaluate_many([(LiftedProposer(seg, config).propose(s), gt) for s, gt in scans])
            out["oracle"].append(_row(label, res, (time.perf_counter() - t0) / len(scans)))
            print("oracle", out["oracle"][-1], flush=True)
        t0 = time.perf_counter()
        res = evaluate_many([(LiftedProposer(FelzenszwalbSegmenter(), config).propose(s), gt) for s, gt in scans])
        out["weight_free"].append({"scans": f"synthetic x{len(scans)}",
                                   **_row("felzenszwalb", res, (time.perf_counter() - t0) / len(scans))})
        print("weight-free", out["weight_free"][-1], flush=True)
    if args.shelf.is_dir():
        shelf = read_scan(args.shelf)
        gt, source = load_ground_truth(shelf)
        for label, seg in (("felzenszwalb", FelzenszwalbSegmenter()), ("label maps (oracle)", LabelMapSegmenter())):
            t0 = time.perf_counter()
            res = evaluate_masks(LiftedProposer(seg, config).propose(shelf), gt, per_instance=True)
            row = {"scans": "labelfusion-shelf", **_row(label, res, time.perf_counter() - t0),
                   "best_iou": {i["gt"]: round(i["best_iou"], 3) for i in res.instances}, "gt": source}
            out["weight_free"].append(row)
            print("shelf", row, flush=True)

    if args.cost_preset:
        p = _scan_with_maps(args.data, f"cost_{args.cost_preset}", 0, args.cost_preset)
        scan = read_scan(p)
        gt = np.load(p / "gt_instances.npy")
        for label, seg in (("felzenszwalb", FelzenszwalbSegmenter()), ("label maps (oracle)", LabelMapSegmenter())):
            base = reset_peak()
            prop = LiftedProposer(seg, config)
            t0 = time.perf_counter()
            masks = prop.propose(scan)
            total = time.perf_counter() - t0
            res = evaluate_many([(masks, gt)])
            st = prop.last_stats
            row = {"segmenter": label, "points": scan.num_points, "frames_total": len(scan.frames),
                   "frames_used": st["frames"], "masks_2d": st["masks_2d"], "masks_lifted": st["masks_lifted"],
                   "instances": st["instances"], "segment_s": round(st["segment_s"], 2),
                   "lift_s": round(st["lift_s"], 2), "merge_s": round(st["merge_s"], 2),
                   "total_s": round(total, 2), "peak_rss_growth_mb": round((status_kb("VmHWM") - base) / 1024, 1),
                   "ap": round(res.ap, 3), "ap50": round(res.ap50, 3), "ap25": round(res.ap25, 3)}
            out["cost"].append(row)
            print("cost", row, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
