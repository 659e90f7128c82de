"""Mask3D inference on a ScanNet-size synthetic scan: time and peak memory per stage.

    python benchmarks/bench_mask3d.py --json benchmarks/results/bench_mask3d_cpu.json
    python benchmarks/bench_mask3d.py --device cuda --json benchmarks/results/bench_mask3d_gpu.json

Without ``--checkpoint`` a random full-size ScanNet200 checkpoint (Res16UNet34C, 150 queries, 39.7M
parameters, seeded) is written to ``--data`` once and loaded through the same code path as a real one;
random weights cost the same as trained ones, but their masks are large (they cover most of the room),
which makes post-processing slower than with trained weights. Peak memory is the process's resident
high-water mark above the level before the stage (Linux VmHWM, reset per stage); on CUDA also
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from scenegrep.indexer.proposals.mask3d.arch import scannet200_arch  # noqa: E402
from scenegrep.indexer.proposals.mask3d.proposer import Mask3DOptions, Mask3DProposer  # noqa: E402
from scenegrep.testing import write_random_mask3d_checkpoint  # noqa: E402
from scenegrep.indexer.scans import read_scan  # noqa: E402
from scenegrep.indexer.synthetic import generate_scan  # noqa: E402
from memory import reset_peak, status_kb  # noqa: E402  (benchmarks/memory.py)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=["small", "scannet"], default="scannet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=REPO / ".bench", help="cache for the scan and the random checkpoint")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a real Mask3D checkpoint (default: random full-size)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--postprocess", default="default", choices=["default", "openmask3d", "mask3d"])
    ap.add_argument("--repeat", type=int, default=1, help="runs; medians of times, max of peak memory")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    scan_dir = args.data / f"mask3d-{args.preset}-{args.seed}" / "room"
    if not scan_dir.is_dir():
        generate_scan(scan_dir.parent, "room", args.seed, args.preset)
    scan = read_scan(scan_dir)
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = args.data / "mask3d-random-scannet200.ckpt"
        if not ckpt.is_file():
            write_random_mask3d_checkpoint(ckpt, scannet200_arch(), seed=0)

    t0 = time.perf_counter()
    proposer = Mask3DProposer(Mask3DOptions(checkpoint=ckpt, device=args.device, postprocess=args.postprocess))
    load_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeat):
        rss0 = reset_peak()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        masks, stats = proposer.propose_with_stats(scan)
        stats["total_s"] = time.perf_counter() - t0
        stats["peak_rss_mb"] = max(0, status_kb("VmHWM") - rss0) / 1024
        if args.device.startswith("cuda"):
            stats["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        stats["mean_mask_points"] = float(masks.sizes.mean()) if len(masks) else 0.0
        runs.append(stats)

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 3)

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "checkpoint": "random Res16UNet34C ScanNet200" if args.checkpoint is None else str(ckpt),
        "architecture": proposer.arch.summary(), "points": scan.num_points, "voxels": runs[0]["voxels"],
        "queries": runs[0]["queries"], "masks": runs[0]["masks"], "postprocess": args.postprocess,
        "mean_mask_points": round(runs[0]["mean_mask_points"], 1), "repeat": args.repeat, "load_s": round(load_s, 3),
        **{k: med(k) for k in ("voxelize_s", "backbone_s", "decoder_s", "network_s", "postprocess_s", "total_s")},
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
    }
    if args.device.startswith("cuda"):
        result["cuda_peak_mb"] = round(max(r["cuda_peak_mb"] for r in runs), 1)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
