"""Index one synthetic scan and report time and peak memory per stage.

    python benchmarks/bench_index.py --preset scannet --json benchmarks/results/bench_index.json

The scan is generated once (seeded) into ``--data`` and reused. The encoder is a tiny random-weight
open_clip ViT written to a temp local-dir folder (the cost of CLIP itself is not what this measures on a
2-core CPU; pass --clip-model/--clip-pretrained to measure a real one). Peak memory is the process's
resident high-water mark (Linux VmHWM, reset per stage through /proc/self/clear_refs) minus the resident
size when the stage started, so model weights loaded before the stage do not count.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from indexer.features.encoders import load_encoder  # noqa: E402
from indexer.features.extractor import FeatureConfig, extract_features  # noqa: E402
from indexer.features.tinyclip import write_local_dir_model  # noqa: E402
from indexer.pipeline import build_entries, encoder_identity  # noqa: E402
from indexer.proposals import make_proposer  # noqa: E402
from indexer.scans import read_scan  # noqa: E402
from indexer.synthetic import generate_scan  # noqa: E402
from storage import Store  # noqa: E402
from storage.maskcodec import encode_indices  # noqa: E402


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Stage:
    """Times a block and measures its peak resident memory above the level at its start (MB)."""

    def __init__(self, results: dict, name: str):
        self.results, self.name = results, name

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        self.rss0 = _status_kb("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.results[f"{self.name}_s"] = round(time.perf_counter() - self.t0, 3)
        self.results[f"{self.name}_peak_mb"] = round(max(0, _status_kb("VmHWM") - self.rss0) / 1024, 1)
        return False


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=["small", "scannet"], default="scannet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=REPO / ".bench", help="where the synthetic scan is cached")
    ap.add_argument("--frame-step", type=int, default=10)
    ap.add_argument("--clip-model", default=None, help="default: a tiny random-weight local-dir model")
    ap.add_argument("--clip-pretrained", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3,
                    help="repeat the feature stage; medians of times, max of peak memory are reported")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    res: dict = {"preset": args.preset, "seed": args.seed, "frame_step": args.frame_step,
                 "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                 "cpus": __import__("os").cpu_count(), "python": platform.python_version()}
    scan_dir = args.data / f"{args.preset}-{args.seed}" / f"bench_{args.preset}"
    if not (scan_dir / "gt_instances.npy").exists():
        t0 = time.perf_counter()
        generate_scan(scan_dir.parent, scan_dir.name, seed=args.seed, preset=args.preset)
        res["generate_s"] = round(time.perf_counter() - t0, 2)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.clip_model or f"local-dir:{write_local_dir_model(Path(tmp) / 'tinyclip')}"
        encoder = load_encoder(model, args.clip_pretrained, device=args.device)
        res["encoder"] = encoder.spec.model if args.clip_model else "tiny random-weight ViT (local-dir)"

        with Stage(res, "read"):
            scan = read_scan(scan_dir)
        res.update(points=scan.num_points, frames=len(scan.frames))
        with Stage(res, "propose"):
            masks = make_proposer("geometric").propose(scan)
        res["masks"] = len(masks)
        res["mask_indices"] = int(masks.point_indices.size)
        res["masks_bytes"] = int(sum(len(encode_indices(m)) for m in masks))
        res["masks_dense_float16_bytes"] = int(scan.num_points * len(masks) * 2)

        cfg = FeatureConfig(frame_step=args.frame_step)
        runs = []
        for _ in range(max(1, args.repeat)):
            r: dict = {}
            with Stage(r, "features"):
                feats = extract_features(scan, masks, encoder, cfg)
            r.update({k: v for k, v in feats.stats.items() if isinstance(v, (int, float))})
            runs.append(r)
        for key in runs[0]:
            vals = [r[key] for r in runs if key in r]
            if key.endswith("_peak_mb"):  # later runs reuse pages the first one made resident
                res[key] = max(vals)
            elif isinstance(vals[0], float):
                res[key] = round(statistics.median(vals), 3)
            else:
                res[key] = vals[0]
        res["searchable"] = int(np.count_nonzero(feats.valid))
        # RSS growth misses memory that an earlier stage freed and this one reuses; tracemalloc sees every
        # numpy and Python allocation (not torch's own CPU allocator), so report both.
        tracemalloc.start()
        extract_features(scan, masks, encoder, cfg)
        res["features_traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()

        with Stage(res, "store"):
            with Store.open(Path(tmp) / "home") as store:
                entry, inst = build_entries(scan, masks, feats, "geometric", encoder.spec, "projected-points-box")
                store.add_scans([(entry, inst)], encoder_identity(encoder.spec))
                res["store_stats"] = store.stats()

    text = json.dumps(res, indent=2, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return res


if __name__ == "__main__":
    main()
