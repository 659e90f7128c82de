"""SAM's automatic mask generation per frame, and the lifted proposer with SAM on a real scan.

    python benchmarks/bench_sam_amg.py --sam-model vit_b --sam-random --frames 3 \\
        --json benchmarks/results/bench_sam_amg_cpu.json
    python benchmarks/bench_sam_amg.py --sam-model vit_h --sam-checkpoint sam_vit_h_4b8939.pth \\
        --device cuda --frames 15 --lifted --json benchmarks/results/bench_sam_amg_gpu.json

Frames are the scan's own (``--scan``, default labelfusion-shelf: 640x480 colour images). Each frame goes
through :class:`~scenegrep.indexer.proposals.segmenters.SamAutomaticSegmenter`, the segmenter that
``--proposer lifted --sam-checkpoint`` uses (its ``SamAutomaticOptions`` defaults: a 32 x 32 prompt grid,
64 prompts per batch), loaded through :func:`~scenegrep.indexer.proposals.segmenters.load_sam_segmenter`
as a user's checkpoint is. The first frame is reported apart (warm-up: kernel selection, allocator);
``per_frame_s`` is the median of the others. ``--lifted`` also runs the whole lifted proposer on the scan
(segment every used frame, lift, merge) and evaluates it against the scan's ground truth.

``--sam-random`` writes a random-weight checkpoint of ``--sam-model`` first
(:func:`scenegrep.testing.write_random_sam_checkpoint`, calibrated so that its masks cover about 5 % of
the image and most predicted IoUs are positive): the image encoder and the 1,024 prompt decodings cost what
the real model's do, but how many masks survive SAM's IoU and stability filters, and so the time spent
after decoding, depends on the weights. Random weights give meaningless masks: the AP of ``--lifted`` then
says nothing. The estimate per ScanNet-size scan is ``per_frame_s`` x 100 (the lifted proposer's default
frame budget) plus the lifting and merging measured by ``bench_lifted.py`` (about 1.5 s on this machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

from memory import reset_peak, status_kb  # benchmarks/memory.py (run from the repo root or benchmarks/)

REPO = Path(__file__).resolve().parents[1]


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=Path, default=REPO.parent / "shared" / "data" / "labelfusion-shelf")
    ap.add_argument("--sam-model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--sam-checkpoint", type=Path, help="a SAM checkpoint (the official .pth files)")
    src.add_argument("--sam-random", action="store_true", help="random weights (timing only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--frames", type=int, default=3, help="frames to time (the first is the warm-up)")
    ap.add_argument("--points-per-side", type=int, default=None,
                    help="prompt grid of the generator [default: SamAutomaticOptions's, 32]")
    ap.add_argument("--lifted", action="store_true", help="also run the lifted proposer on the whole scan")
    ap.add_argument("--max-frames", type=int, default=None, help="frame budget of --lifted [default: 100]")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.frames < 2:
        ap.error("--frames must be at least 2 (the first is the warm-up)")

    from scenegrep.errors import ScenegrepError
    from scenegrep.indexer.evaluate import evaluate_masks, load_ground_truth
    from scenegrep.indexer.proposals.lifted import LiftedConfig, LiftedProposer
    from scenegrep.indexer.proposals.segmenters import SamAutomaticOptions, load_sam_segmenter
    from scenegrep.indexer.scans import read_scan

    scan = read_scan(args.scan)
    if len(scan.frames) < args.frames:
        raise SystemExit(f"{args.scan}: {len(scan.frames)} frames, fewer than --frames {args.frames}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.sam_checkpoint
        if args.sam_random:
            from scenegrep.testing import write_random_sam_checkpoint

            checkpoint = write_random_sam_checkpoint(Path(tmp) / f"sam_{args.sam_model}_random.pth",
                                                     args.sam_model, device=args.device)
        t0 = time.perf_counter()
        options = SamAutomaticOptions() if args.points_per_side is None else SamAutomaticOptions(
            points_per_side=args.points_per_side)
        segmenter = load_sam_segmenter(args.sam_model, checkpoint, device=args.device, precision=args.precision,
                                       options=options)
        load_s = time.perf_counter() - t0

    base = reset_peak()
    times, masks = [], []
    for frame in scan.frames[: args.frames]:
        image = frame.load_color()
        t0 = time.perf_counter()
        out = segmenter.segment(frame, image)
        times.append(time.perf_counter() - t0)
        masks.append(len(out))
    res = {
        "device": args.device, "device_name": device_name(args.device), "sam_model": args.sam_model,
        "weights": "random" if args.sam_random else str(args.sam_checkpoint), "precision": args.precision,
        "image_size": list(scan.frames[0].color_size), "options": segmenter.identity(),
        "load_s": round(load_s, 2), "first_frame_s": round(times[0], 3),
        "per_frame_s": round(statistics.median(times[1:]), 3), "frame_s": [round(t, 3) for t in times],
        "masks_per_frame": masks, "peak_rss_growth_mb": round((status_kb("VmHWM") - base) / 1024, 1),
    }
    res["estimate_scannet_scan_s"] = round(100 * res["per_frame_s"] + 1.5, 1)
    print(json.dumps(res, indent=1), flush=True)
    if args.lifted:
        t0 = time.perf_counter()
        prop = LiftedProposer(segmenter, LiftedConfig() if args.max_frames is None else LiftedConfig(
            max_frames=args.max_frames))
        ms = prop.propose(scan)
        res["lifted"] = {"scan": scan.name, "seconds": round(time.perf_counter() - t0, 2), "masks": len(ms),
                         **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in prop.last_stats.items()}}
        try:
            gt, source = load_ground_truth(scan)
        except ScenegrepError as e:  # a scan without ground truth still gets its timing
            res["lifted"]["ap"] = f"no ground truth: {e}"
        else:
            r = evaluate_masks(ms, gt)
            res["lifted"].update(ap=round(r.ap, 3), ap50=round(r.ap50, 3), ap25=round(r.ap25, 3), gt=source)
        print(json.dumps({"lifted": res["lifted"]}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
