"""Test support (not product code): small random-weight models written in the formats users' real files have.

Tests, benchmarks and offline demos load them through exactly the code paths real weights take, so the
loaders are exercised without downloading anything. Their outputs carry no meaning.

* :func:`write_local_dir_model`: a tiny open_clip ViT in open_clip's ``local-dir:`` format;
* :func:`write_random_mask3d_checkpoint` / :func:`random_mask3d_state`: a seeded Mask3D checkpoint;
* :func:`write_random_sam_checkpoint`: a seeded ``segment_anything`` checkpoint of a registered architecture.

torch and open_clip are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from scenegrep.indexer.features.sam import SamArch
    from scenegrep.indexer.proposals.mask3d.arch import Mask3DArch

__all__ = ["write_local_dir_model", "random_mask3d_state", "write_random_mask3d_checkpoint",
           "write_random_sam_checkpoint", "tiny_sam_arch", "registered_sam_arch", "CONFIG_NAME", "WEIGHTS_NAME"]

log = logging.getLogger(__name__)

# -- open_clip ----------------------------------------------------------------------------------------

#: OpenAI CLIP's normalisation, the same open_clip uses by default.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"


def write_local_dir_model(
    path: Path | str,
    *,
    embed_dim: int = 64,
    image_size: int = 64,
    width: int = 64,
    layers: int = 2,
    patch_size: int = 16,
    text_width: int = 64,
    text_layers: int = 2,
    context_length: int = 77,
    vocab_size: int = 49408,
    seed: int = 0,
) -> Path:
    """Write a random ViT CLIP to folder ``path`` (created); return the folder.

    The folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
    ``open_clip_model.safetensors``. Weights come from open_clip's own initialisation under
    ``torch.manual_seed(seed)``, so equal arguments give an equal model on one torch version. Both towers
    use 2 attention heads (head width = width / 2).
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    if width % 2 or text_width % 2:
        raise ValueError("width and text_width must be even (2 attention heads)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width,
                       "patch_size": patch_size, "head_width": width // 2},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": text_width,
                     "heads": 2, "layers": text_layers},
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(_CLIP_MEAN), "std": list(_CLIP_STD)}}

    # Initialise under a private RNG state so writing a model does not disturb the caller's torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**model_cfg)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1), encoding="utf-8")
    log.debug("wrote tiny open_clip model (embed_dim %d, image %d) to %s", embed_dim, image_size, folder)
    return folder


# -- Mask3D -------------------------------------------------------------------------------------------


def random_mask3d_state(arch: "Mask3DArch", seed: int = 0) -> dict[str, "torch.Tensor"]:
    """A seeded random ``state_dict`` (with ``model.`` prefixes) for ``arch``."""
    import torch

    from scenegrep.indexer.proposals.mask3d.convert import export_mask3d_state
    from scenegrep.indexer.proposals.mask3d.model import Mask3D

    torch.manual_seed(seed)
    model = Mask3D(arch)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_var.uniform_(0.5, 2.0, generator=gen)
        for name, p in model.named_parameters():
            if p.dim() == 5 or name.endswith("kernel"):  # spconv kernels and one-voxel convolutions
                # Kaiming-like scale for sparse kernels: keeps activations O(1) through the U-Net.
                fan_in = p[0].numel() if p.dim() == 5 else p.shape[0]
                p.normal_(0.0, (2.0 / max(1, fan_in)) ** 0.5, generator=gen)
        model.pos_enc.gauss_B.normal_(generator=gen)
        # As in the parity fixture's recipe: with default-scale query projections all queries predict the
        # same mask; larger ones keep them apart.
        for conv in (model.query_projection.layers[0], model.query_projection.layers[2]):
            conv.weight.mul_(8.0)
    state = export_mask3d_state(model)
    state["criterion.empty_weight"] = torch.cat([torch.ones(arch.num_classes - 1), torch.tensor([0.1])])
    return state


def write_random_mask3d_checkpoint(path: Path | str, arch: "Mask3DArch", seed: int = 0) -> Path:
    """Save a seeded random Mask3D checkpoint for ``arch`` at ``path``, in the original file layout (a
    ``torch.save`` dict with a Lightning ``state_dict``: ``model.`` keys, MinkowskiEngine kernel layouts,
    ``criterion.empty_weight``, and ``hyper_parameters.config``); returns the path."""
    import torch

    from scenegrep.indexer.proposals.mask3d.arch import arch_hparams
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": random_mask3d_state(arch, seed), "hyper_parameters": arch_hparams(arch),
                "epoch": 0, "global_step": 0}, path)
    return path


# -- SAM ----------------------------------------------------------------------------------------------


def write_random_sam_checkpoint(path: Path | str, model_type: str, *, seed: int = 0,
                                mask_fraction: float | None = 0.05, positive_iou: float = 0.8,
                                device: str = "cpu") -> Path:
    """Save a random-weight SAM state dict of ``model_type`` to ``path`` (tests, benchmarks).

    Weights are segment_anything's initialisation under ``torch.manual_seed(seed)``, except that tensors it
    initialises to zero (positional embeddings) get small noise too, so every part of the model matters.

    A plain random SAM predicts IoUs around 0 and masks covering half the image, so every view would
    either fall back or get the whole image as its box. With ``mask_fraction`` set, two output biases
    are calibrated on one seeded probe image: the mask logits get a constant offset (through one
    upscaling channel made constant) so about ``mask_fraction`` of the pixels are foreground, and the
    IoU head's bias so about ``positive_iou`` of the prompts predict an IoU above 0. The model is still
    meaningless; it exists to run every branch of the real code path offline. The calibration runs the
    image encoder once on ``device`` (ViT-H takes a minute on a small CPU; ``mask_fraction=None`` skips it).
    """
    import torch

    from scenegrep.indexer.features.sam import build_sam

    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(model_type)
        with torch.no_grad():
            for p in sam.parameters():
                if not p.any():
                    p.normal_(0.0, 0.02)
        if mask_fraction is not None:
            _calibrate(sam, model_type, mask_fraction, positive_iou, seed, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.to("cpu").state_dict(), path)
    return path


def _calibrate(sam: Any, model_type: str, mask_fraction: float, positive_iou: float, seed: int,
               device: str) -> None:
    """Shift a random SAM's mask logits and IoU predictions (see :func:`write_random_sam_checkpoint`)."""
    import numpy as np
    import torch

    from scenegrep.indexer.features.sam import SamRefiner

    dec = sam.mask_decoder
    up = dec.output_upscaling[3]  # last ConvTranspose2d: its channel 0 becomes the constant GELU(10) = 10
    with torch.no_grad():
        up.weight[:, 0] = 0.0
        up.bias[0] = 10.0
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight[0] = 0.0
            mlp.layers[-1].bias[0] = 0.0
    rng = np.random.default_rng(seed)
    size = sam.image_encoder.img_size
    image = np.repeat(np.repeat(rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8), 16, 0), 16, 1)
    probe = SamRefiner(sam, model_type, device=device)
    probe.embed(image)
    coords = rng.integers(0, size, (32, 5, 2))
    logits, iou = probe.decode(coords)
    cut = float(np.quantile(logits.cpu().numpy(), 1.0 - mask_fraction))
    bar = float(np.quantile(iou, 1.0 - positive_iou))
    with torch.no_grad():
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].bias[0] = -cut / 10.0
        dec.iou_prediction_head.layers[-1].bias -= bar


def tiny_sam_arch(encoder_embed_dim: int = 32, encoder_depth: int = 2,
                  encoder_global_attn_indexes: tuple[int, ...] = (1,), decoder_depth: int = 2) -> "SamArch":
    """A SAM architecture small enough for CPU tests: 128 px input (an 8 x 8 image embedding), 2 encoder
    heads, 32-wide prompts; register it with ``register_sam_arch`` under a test name."""
    from scenegrep.indexer.features.sam import SamArch

    return SamArch(encoder_embed_dim, encoder_depth, 2, encoder_global_attn_indexes, image_size=128, patch_size=16,
                   window_size=4, prompt_embed_dim=32, decoder_depth=decoder_depth, decoder_mlp_dim=64,
                   decoder_num_heads=2, iou_head_hidden_dim=32, mask_in_chans=4)


@contextmanager
def registered_sam_arch(name: str, arch: "SamArch") -> Iterator[str]:
    """Register ``arch`` as SAM model ``name`` for the duration of the block (a test's), then remove it, so
    one test module's architectures never leak into another's error messages."""
    from scenegrep.indexer.features.sam import SAM_ARCHS, register_sam_arch

    register_sam_arch(name, arch)
    try:
        yield name
    finally:
        SAM_ARCHS.pop(name, None)
