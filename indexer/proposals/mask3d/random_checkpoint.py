"""Write random-weight Mask3D checkpoints in the original file layout (tests, benchmarks, offline demos).

The file is what a user's real checkpoint looks like to the loader: a ``torch.save`` dict with a
Lightning ``state_dict`` (``model.`` keys, MinkowskiEngine kernel layouts, ``criterion.empty_weight``) and
``hyper_parameters.config``. Weights are seeded; BatchNorm and LayerNorm affines are randomised and the query projection
scaled up (as the parity fixture's recipe does), so a random network still produces varied masks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scenegrep.indexer.proposals.mask3d.arch import Mask3DArch, arch_hparams
from scenegrep.indexer.proposals.mask3d.convert import export_mask3d_state


def random_mask3d_state(arch: Mask3DArch, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random ``state_dict`` (with ``model.`` prefixes) for ``arch``."""
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


def write_random_checkpoint(path: Path | str, arch: Mask3DArch, seed: int = 0) -> Path:
    """Save a seeded random Mask3D checkpoint for ``arch`` at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": random_mask3d_state(arch, seed), "hyper_parameters": arch_hparams(arch),
                "epoch": 0, "global_step": 0}, path)
    return path
