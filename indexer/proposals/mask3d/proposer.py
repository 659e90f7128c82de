"""``make_proposer("mask3d", checkpoint=...)``: Mask3D instance proposals for one scan.

Pipeline per scan: voxelise (2 cm, first point per voxel, colours normalised as the checkpoint expects),
run the network once with every voxel attended, then post-process the last decoder output
(:mod:`.postprocess`) back to full resolution through the voxel inverse map. Masks come out as sparse
point-index sets with their scores.

The checkpoint is read and checked when the proposer is built (a bad file fails before any scan is
read) and the model is kept for every scan of a job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenegrep.choices import MASK3D_POSTPROCESS, MASK3D_TOPK
from scenegrep.indexer.proposals.base import MaskSet

if TYPE_CHECKING:
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)

#: Post-processing modes, the first is the default.
POSTPROCESS_MODES = MASK3D_POSTPROCESS


@dataclass
class Mask3DOptions:
    """How to run Mask3D.

    Attributes:
        checkpoint: a Mask3D checkpoint (Lightning ``.ckpt`` with ``state_dict``, or a bare state dict).
        postprocess: "default" (every connected part of every query once, best class), "openmask3d"
            (OpenMask3D's top-k selection) or "mask3d" (Mask3D's own top-k, ``topk``).
        topk: Mask3D's ``topk_per_image`` for ``postprocess="mask3d"``.
        colors: "scannet" (ScanNet mean/std, what the released checkpoints were trained on) or "unit"
            (colours in [0, 1], what OpenMask3D's single-scene script feeds).
        device: "cpu" or "cuda[:n]".
        dbscan_eps: metres; parts of a query mask farther apart than this are separate instances.
        num_heads / num_queries: override the checkpoint's settings (needed for files without
            ``hyper_parameters``; ``num_queries`` may also be changed deliberately).
    """

    checkpoint: Path
    postprocess: str = "default"
    topk: int = MASK3D_TOPK
    colors: str = "scannet"
    device: str = "cpu"
    dbscan_eps: float = 0.95
    num_heads: int | None = None
    num_queries: int | None = None

    def __post_init__(self) -> None:
        from scenegrep.indexer.proposals.mask3d.voxelize import COLOR_MODES

        self.checkpoint = Path(self.checkpoint)
        if self.postprocess not in POSTPROCESS_MODES:
            raise ValueError(f"postprocess must be one of {POSTPROCESS_MODES}, got {self.postprocess!r}")
        if self.colors not in COLOR_MODES:
            raise ValueError(f"colors must be one of {COLOR_MODES}, got {self.colors!r}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")


class Mask3DProposer:
    """Mask3D proposals from a checkpoint (see module doc)."""

    name = "mask3d"

    def __init__(self, options: Mask3DOptions):
        import torch

        from scenegrep.indexer.proposals.mask3d.arch import ArchError, infer_arch
        from scenegrep.indexer.proposals.mask3d.checkpoint import (
            Mask3DCheckpointError,
            read_checkpoint,
        )
        from scenegrep.indexer.proposals.mask3d.convert import (
            load_mask3d_state,
            strip_model_prefix,
        )
        from scenegrep.indexer.proposals.mask3d.model import Mask3D

        self.options = options
        ck = read_checkpoint(options.checkpoint)
        try:
            sd = strip_model_prefix(ck.state_dict)
            self.arch = infer_arch(sd, ck.hyper_parameters,
                                   {"num_heads": options.num_heads, "num_queries": options.num_queries})
            model = Mask3D(self.arch)
            load_mask3d_state(model, sd)
        except (ArchError, ValueError, TypeError) as e:  # ValueError/TypeError: a setting of the wrong type
            raise Mask3DCheckpointError(options.checkpoint, f"not a usable Mask3D checkpoint: {e}") from None
        self.model = model.eval().to(torch.device(options.device))
        self.checkpoint_sha256 = ck.sha256
        log.info("Mask3D %s from %s on %s", self.arch.summary(), options.checkpoint, options.device)

    def identity(self) -> dict[str, Any]:
        """What the catalog records about the masks' origin."""
        o = self.options
        return {"checkpoint": str(o.checkpoint), "checkpoint_sha256": self.checkpoint_sha256,
                "architecture": self.arch.summary(), "postprocess": o.postprocess, "colors": o.colors,
                **({"topk": o.topk} if o.postprocess == "mask3d" else {})}

    def propose(self, scan: Scan) -> MaskSet:
        return self.propose_with_stats(scan)[0]

    def propose_with_stats(self, scan: Scan) -> tuple[MaskSet, dict[str, Any]]:
        """Masks plus timings (voxelize_s, network_s = backbone_s + decoder_s, postprocess_s) and sizes
        (voxels, queries, masks)."""
        import torch

        from scenegrep.indexer.proposals.mask3d.postprocess import PostprocessConfig, postprocess
        from scenegrep.indexer.proposals.mask3d.voxelize import voxelize

        o, stats = self.options, {}
        t0 = time.perf_counter()
        vox = voxelize(scan.points, scan.colors, self.arch.voxel_size, o.colors)
        stats["voxelize_s"] = time.perf_counter() - t0
        if len(vox) < 2:
            log.warning("%s: %d voxel(s), too few for Mask3D: no masks", scan.name, len(vox))
            return MaskSet.empty(scan.num_points), stats
        device = next(self.model.parameters()).device
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(vox.coords).to(device), torch.from_numpy(vox.features).to(device),
                             torch.from_numpy(vox.raw_coords).to(device))
            logits = out.pred_logits.float().cpu().numpy()
            masks = out.pred_masks.float().cpu().numpy()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats["network_s"] = time.perf_counter() - t0
        stats.update(out.timings)
        del out
        t0 = time.perf_counter()
        result = postprocess(logits, masks, vox.raw_coords, vox.inverse_map,
                             PostprocessConfig(mode=o.postprocess, topk=o.topk, dbscan_eps=o.dbscan_eps))
        stats["postprocess_s"] = time.perf_counter() - t0
        stats.update(voxels=len(vox), queries=int(logits.shape[0]), masks=len(result.masks))
        log.info("%s: Mask3D %d voxels -> %d masks (network %.2fs, post-processing %.2fs)", scan.name,
                 len(vox), len(result.masks), stats["network_s"], stats["postprocess_s"])
        return result.masks, stats
