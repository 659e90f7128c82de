"""Index one synthetic scan and report time and peak memory per stage.

    python benchmarks/bench_index.py --preset scannet --json benchmarks/results/bench_index.json

The scan is generated once (seeded) into ``--data`` and reused. The encoder is a tiny random-weight
open_clip ViT written to a temp local-dir folder (the cost of CLIP itself is not what this measures on a
2-core CPU; pass --clip-model/--clip-pretrained to measure a real one, with --allow-random-weights for a
full-size random one). ``--sam-model/--sam-checkpoint`` add SAM refinement (``--sam-random`` writes a
random-weight checkpoint of ``--sam-model`` first: same cost as the real one). ``--feature-preset``
picks the mask-feature settings (``--frame-step`` always overrides it; ``--preset`` is the scan's size).
The JSON reports ``sam_image_encodings`` and ``clip_crops`` next to what OpenMask3D's method does on the
same masks and views (``openmask3d_sam_encodings``: one SAM image encoding per (mask, view) pair;
``openmask3d_clip_crops``: every level of every pair). Peak memory is the process's
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

import numpy as np  # noqa: E402

from scenegrep.indexer.features.crops import ProjectedPointsRefiner  # noqa: E402
from scenegrep.indexer.features.encoders import load_encoder  # noqa: E402
from scenegrep.indexer.features.extractor import extract_features  # noqa: E402
from scenegrep.indexer.features.presets import PRESETS, SAM_MODELS, get_preset, sam_model_for  # noqa: E402
from scenegrep.testing import write_local_dir_model  # noqa: E402
from scenegrep.indexer.pipeline import IndexOptions, build_entries, build_refiner, encoder_identity, job_info  # noqa: E402
from scenegrep.indexer.proposals import make_proposer  # noqa: E402
from scenegrep.indexer.scans import read_scan  # noqa: E402
from scenegrep.indexer.synthetic import generate_scan  # noqa: E402
from scenegrep.storage import Store  # noqa: E402
from scenegrep.storage.maskcodec import encode_indices  # noqa: E402
from memory import reset_peak, status_kb  # noqa: E402  (benchmarks/memory.py)


class Stage:
    """Times a block and measures its peak resident memory above the level at its start (MB)."""

    def __init__(self, results: dict, name: str):
        self.results, self.name = results, name

    def __enter__(self):
        self.rss0 = reset_peak()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.results[f"{self.name}_s"] = round(time.perf_counter() - self.t0, 3)
        self.results[f"{self.name}_peak_mb"] = round(max(0, status_kb("VmHWM") - self.rss0) / 1024, 1)
        return False


def _register_small_sam() -> None:
    """``--sam-model small``: a small SAM (width 64, 2 blocks, 256 px input, 64-wide decoder) registered for
    this benchmark only, so SAM's per-frame / per-prompt work can be counted and timed on a CPU."""
    from scenegrep.indexer.features.sam import SamArch, register_sam_arch

    register_sam_arch("small", SamArch(64, 2, 2, (1,), image_size=256, patch_size=16, window_size=8,
                                       prompt_embed_dim=64, decoder_depth=2, decoder_mlp_dim=256,
                                       decoder_num_heads=4, iou_head_hidden_dim=64, mask_in_chans=8),
                      overwrite=True)


def _sam_refiner(args: argparse.Namespace, settings, tmp: Path, res: dict):
    """The SAM refiner the arguments ask for (loaded once, outside the timed stages), or None."""
    checkpoint = args.sam_checkpoint
    if args.sam_model == "small":
        _register_small_sam()
    if args.sam_random:
        if args.sam_model is None:
            raise SystemExit("--sam-random needs --sam-model")
        from scenegrep.testing import write_random_sam_checkpoint

        checkpoint = write_random_sam_checkpoint(tmp / f"sam_{args.sam_model}_random.pth", args.sam_model)
    if checkpoint is None:
        if args.sam_model is not None:
            raise SystemExit("--sam-model needs --sam-checkpoint or --sam-random")
        return None
    model = "small" if args.sam_model == "small" else sam_model_for(checkpoint, args.sam_model, settings)
    t0 = time.perf_counter()
    refiner = build_refiner(model, checkpoint, device=args.device, precision=args.precision, seed=args.sam_seed,
                            rounds=settings.sam_rounds, points=settings.sam_points)
    res["sam_load_s"] = round(time.perf_counter() - t0, 2)
    res["sam"] = f"{model}{' (random weights)' if args.sam_random else ''}"
    return refiner


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=["small", "scannet"], default="scannet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=REPO / ".bench", help="where the synthetic scan is cached")
    ap.add_argument("--frame-step", type=int, default=10, help="overrides the feature preset's (default 10)")
    ap.add_argument("--feature-preset", choices=sorted(PRESETS), default="default",
                    help="mask-feature settings (scenegrep index --preset)")
    ap.add_argument("--clip-model", default=None, help="default: a tiny random-weight local-dir model")
    ap.add_argument("--clip-pretrained", default=None)
    ap.add_argument("--allow-random-weights", action="store_true",
                    help="a --clip-model without local weights runs with random ones (timing only)")
    ap.add_argument("--sam-model", choices=[*SAM_MODELS, "small"], default=None,
                    help="'small': a small random SAM for CPU runs (with --sam-random)")
    ap.add_argument("--sam-checkpoint", type=Path, default=None)
    ap.add_argument("--sam-random", action="store_true",
                    help="write a random-weight checkpoint of --sam-model and use it")
    ap.add_argument("--sam-seed", type=int, default=0, help="SAM prompt sampling seed")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="CLIP and SAM")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3,
                    help="repeat the feature stage; medians of times, max of peak memory are reported")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    settings = get_preset(args.feature_preset).with_overrides(frame_step=args.frame_step)
    res: dict = {"preset": args.preset, "seed": args.seed, "frame_step": args.frame_step,
                 "feature_preset": settings.name, "precision": args.precision, "device": args.device,
                 "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                 "cpus": __import__("os").cpu_count(), "python": platform.python_version()}
    scan_dir = args.data / f"{args.preset}-{args.seed}" / f"bench_{args.preset}"
    if not (scan_dir / "gt_instances.npy").exists():
        t0 = time.perf_counter()
        generate_scan(scan_dir.parent, scan_dir.name, seed=args.seed, preset=args.preset)
        res["generate_s"] = round(time.perf_counter() - t0, 2)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.clip_model or f"local-dir:{write_local_dir_model(Path(tmp) / 'tinyclip')}"
        encoder = load_encoder(model, args.clip_pretrained, device=args.device, precision=args.precision,
                               allow_random_weights=args.allow_random_weights)
        res["encoder"] = encoder.spec.model if args.clip_model else "tiny random-weight ViT (local-dir)"
        if encoder.spec.random_weights and args.clip_model:
            res["encoder"] += " (random weights)"
        refiner = _sam_refiner(args, settings, Path(tmp), res) or ProjectedPointsRefiner()
        res["mask_method_2d"] = refiner.name

        with Stage(res, "read"):
            scan = read_scan(scan_dir)
        res.update(points=scan.num_points, frames=len(scan.frames))
        with Stage(res, "propose"):
            masks = make_proposer("geometric").propose(scan)
        res["masks"] = len(masks)
        res["mask_indices"] = int(masks.point_indices.size)
        res["masks_bytes"] = int(sum(len(encode_indices(m)) for m in masks))
        res["masks_dense_float16_bytes"] = int(scan.num_points * len(masks) * 2)

        cfg = settings.feature_config()
        runs = []
        for _ in range(max(1, args.repeat)):
            r: dict = {}
            with Stage(r, "features"):
                feats = extract_features(scan, masks, encoder, cfg, refiner=refiner)
            r.update({k: v for k, v in feats.stats.items() if isinstance(v, (int, float))})
            # Counts that exist before the SAM stage landed read as 0; OpenMask3D's method runs SAM once
            # per (mask, view) pair with visible pixels and encodes every level of each pair.
            pairs = int(feats.stats.get("openmask3d_sam_encodings", np.count_nonzero(feats.topk_frames >= 0)))
            r.update(sam_image_encodings=int(feats.stats.get("sam_image_encodings", 0)),
                     openmask3d_sam_encodings=pairs, openmask3d_clip_crops=pairs * cfg.crop_levels)
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
        extract_features(scan, masks, encoder, cfg, refiner=refiner)
        res["features_traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()

        with Stage(res, "store"):
            with Store.open(Path(tmp) / "home") as store:
                info = job_info(IndexOptions(features=cfg, refiner=refiner, preset=settings.name,
                                             seed=args.sam_seed), encoder)
                entry, inst = build_entries(scan, masks, feats, "geometric", encoder.spec, refiner.name, info)
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
