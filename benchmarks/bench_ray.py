"""Indexing throughput on Ray with 1 and 2 workers (and sequentially), and an estimate for N GPUs.

    python benchmarks/bench_ray.py --scans 8 --json benchmarks/results/bench_ray.json

``--scans`` seeded synthetic rooms (``--preset small``) are generated once into ``--data`` and indexed into
fresh homes through the public API: once in this process (``sequential``, torch on every CPU) and on one
local Ray instance (all CPUs) with each ``--workers`` count (each worker gets CPUs / workers torch threads).
CLIP is a tiny random-weight ViT (what is measured is the fan-out, not CLIP; ``--clip-model`` for a real
one). Per run: wall time, the time until the first scan was handed to a worker (``startup_s``: Ray's
actors start and load the models), scans per second over the whole run and after start-up, and the
per-stage seconds summed over scans (read, propose, features in the workers; store in the one writer).

The estimate for N GPU workers uses the measured per-stage times: a scan costs ``work_s`` = read +
propose + features in a worker and ``store_s`` in the single writer, which commits while the workers
work; the run's time is about ``startup + scans * max(work_s / N, store_s)``, so throughput grows with N
until ``N = work_s / store_s`` workers keep the writer busy. ``--gpu-scan-seconds`` replaces ``work_s`` by
a GPU's per-scan time (default 10 s, a ScanNet scan with SAM on one modern GPU; OpenMask3D reports 554 s
on an A100) to say where that bound lies for real scans; ``store_s`` is scaled by the real scans' size
(``--instances-per-scan`` masks of a ``--points-per-scan`` cloud against the measured synthetic ones).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import ray  # noqa: E402

import scenegrep  # noqa: E402
from scenegrep.indexer.synthetic import generate_scans  # noqa: E402
from scenegrep.testing import write_local_dir_model  # noqa: E402

STAGES = ("read", "propose", "features", "store")


def run(paths: list[Path], home: Path, options: dict) -> dict:
    """Index ``paths`` into a fresh ``home``; wall time, start-up, per-stage sums."""
    first_read: list[float] = []

    def progress(scan: str, stage: str, done: int, total: int) -> None:
        if stage == "read" and done == 0 and not first_read:
            first_read.append(time.perf_counter())

    t0 = time.perf_counter()
    with scenegrep.open(home, write=True) as col:
        outcomes = col.index(paths, progress=progress, **options)
        points = sum(s.point_count for s in col.scans())
    wall = time.perf_counter() - t0
    assert all(o.status == "indexed" for o in outcomes), [o.error for o in outcomes]
    startup = (first_read[0] - t0) if first_read else 0.0
    stages = {s: round(sum(o.seconds.get(s, 0.0) for o in outcomes), 3) for s in STAGES}
    n = len(outcomes)
    return {"scans": n, "instances": sum(o.instances for o in outcomes), "points": points,
            "wall_s": round(wall, 3), "startup_s": round(startup, 3),
            "scans_per_s": round(n / wall, 4), "scans_per_s_after_startup": round(n / (wall - startup), 4),
            "stage_s": stages}


def estimate(measured: dict, args: argparse.Namespace) -> dict:
    """Throughput for N GPU workers from the per-stage times (see the module docstring)."""
    n = measured["scans"]
    work = (measured["stage_s"]["read"] + measured["stage_s"]["propose"] + measured["stage_s"]["features"]) / n
    store = measured["stage_s"]["store"] / n
    # the writer's cost grows with what it writes: instances (vectors, catalog rows) and points (the point file)
    scale = max(args.instances_per_scan / (measured["instances"] / n), args.points_per_scan / (measured["points"] / n))
    store_real = store * scale
    rows = []
    for workers in (1, 2, 4, 8, 16, 32, 64, 128):
        per_scan = max(args.gpu_scan_seconds / workers, store_real)
        rows.append({"gpus": workers, "scans_per_hour": round(3600 / per_scan), "writer_bound": per_scan == store_real})
    return {"measured_work_s_per_scan": round(work, 3), "measured_store_s_per_scan": round(store, 4),
            "gpu_scan_seconds": args.gpu_scan_seconds, "store_s_per_real_scan": round(store_real, 3),
            "writer_saturates_at_gpus": round(args.gpu_scan_seconds / store_real, 1), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--preset", default="small", help="synthetic scan size (small or scannet)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to measure")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "scenegrep-bench-ray")
    ap.add_argument("--clip-model", default=None, help="default: a tiny random-weight ViT")
    ap.add_argument("--gpu-scan-seconds", type=float, default=10.0)
    ap.add_argument("--instances-per-scan", type=float, default=200.0)
    ap.add_argument("--points-per-scan", type=float, default=150_000.0)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    scans_dir = args.data / f"{args.preset}-{args.scans}-{args.seed}"
    if not scans_dir.is_dir():
        generate_scans(scans_dir, args.scans, seed=args.seed, preset=args.preset)
    paths = sorted(p for p in scans_dir.iterdir() if p.is_dir())
    clip = args.clip_model or f"local-dir:{write_local_dir_model(args.data / 'tiny-clip')}"
    options = dict(clip_model=clip, allow_random_weights=True)

    cpus = os.cpu_count() or 1
    results: dict = {"machine": f"{platform.machine()}, {cpus} CPUs, no GPU", "python": sys.version.split()[0],
                     "ray": ray.__version__, "preset": args.preset, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        results["runs"]["sequential"] = run(paths, Path(tmp) / "seq", options)
        print("sequential", results["runs"]["sequential"], flush=True)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        try:
            for w in (int(x) for x in args.workers.split(",")):
                key = f"ray_{w}_workers"
                results["runs"][key] = run(paths, Path(tmp) / key, dict(options, ray_address="local", workers=w))
                print(key, results["runs"][key], flush=True)
        finally:
            ray.shutdown()
    runs = results["runs"]
    if "ray_1_workers" in runs and "ray_2_workers" in runs:
        results["speedup_2_vs_1"] = round(runs["ray_2_workers"]["scans_per_s"] / runs["ray_1_workers"]["scans_per_s"], 3)
        results["speedup_2_vs_1_after_startup"] = round(
            runs["ray_2_workers"]["scans_per_s_after_startup"] / runs["ray_1_workers"]["scans_per_s_after_startup"], 3)
    results["estimate"] = estimate(runs["sequential"], args)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
