"""Mask3D checkpoint tensors (MinkowskiEngine layouts) -> the spconv model's state dict.

MinkowskiEngine stores a convolution kernel as (K, in, out) with K = k**3 offsets, offset index
``(dx + r) + k * (dy + r) + k * k * (dz + r)`` (r = k // 2 for odd k, r = 0 for the kernel-2 strided and
transposed convolutions): x varies fastest. spconv's weight is (out, kx, ky, kz, in) with the same
meaning of an offset (input minus output coordinate in units of the level's stride; for kernel 2:
child = 2 * parent + offset). So ``W_spconv = W_me.reshape(k, k, k, in, out).permute(4, 2, 1, 0, 3)``.
One-voxel kernels ((in, out)) and biases ((1, out)) stay as they are (:class:`~.backbone.Pointwise`).

Every other tensor has the same name and layout in both. Keys are checked both ways: a missing,
unexpected or mis-shaped key is an error naming it (Mask3D's own loader silently re-initialises such
weights). ``criterion.*`` tensors (the training loss's class weights) are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from scenegrep.indexer.proposals.mask3d.arch import ArchError

#: Checkpoint key prefixes that are not part of the network.
IGNORED_PREFIXES = ("criterion.",)


def strip_model_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Lightning keys ``model.xxx`` -> ``xxx``; ``criterion.*`` dropped; bare keys kept as they are."""
    keys = [k for k in state_dict if not k.startswith(IGNORED_PREFIXES)]
    prefixed = [k for k in keys if k.startswith("model.")]
    if prefixed and len(prefixed) != len(keys):
        stray = next(k for k in keys if not k.startswith("model."))
        raise ArchError(f"unexpected key {stray} (every network key of a Lightning checkpoint starts with 'model.')")
    cut = len("model.") if prefixed else 0
    return {k[cut:]: v for k, v in state_dict.items() if not k.startswith(IGNORED_PREFIXES)}


def me_kernel_to_spconv(kernel: torch.Tensor) -> torch.Tensor:
    """(k**3, in, out) MinkowskiEngine kernel -> (out, k, k, k, in) spconv weight."""
    vol, cin, cout = kernel.shape
    k = round(vol ** (1 / 3))
    return kernel.reshape(k, k, k, cin, cout).permute(4, 2, 1, 0, 3).contiguous()


def _sources(model: nn.Module) -> dict[str, tuple[str, bool]]:
    """Our state-dict key -> (checkpoint key, is a spconv kernel)."""
    conv_weights = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, SparseConvolution)}
    return {key: ((key[: -len("weight")] + "kernel", True) if key in conv_weights else (key, False))
            for key in model.state_dict()}


def _spconv_shape(me_shape: tuple[int, ...]) -> tuple[int, ...]:
    vol, cin, cout = me_shape
    k = round(vol ** (1 / 3))
    return (cout, k, k, k, cin)


def load_mask3d_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = "model.") -> None:
    """Copy a stripped Mask3D state dict into ``model`` (strict, both ways).

    Args:
        model: a freshly built :class:`~.model.Mask3D`.
        state_dict: checkpoint tensors without the ``model.`` prefix (:func:`strip_model_prefix`).
        prefix: prepended to key names in error messages, so they read like the checkpoint's own keys.

    Raises:
        ArchError: missing / unexpected key or a shape that does not match the architecture.
    """
    sources = _sources(model)
    wanted = {src for src, _ in sources.values()}
    missing = sorted(wanted - set(state_dict))
    unexpected = sorted(set(state_dict) - wanted)
    for what, keys in (("missing key", missing), ("unexpected key", unexpected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ArchError(f"{what} {prefix}{keys[0]}{more}")
    target = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, (src, is_kernel) in sources.items():
        tensor = state_dict[src]
        want = tuple(target[key].shape)
        got = tuple(tensor.shape)
        if is_kernel:
            ok = len(got) == 3 and _spconv_shape(got) == want
            expect = (want[1] ** 3, want[4], want[0])
        else:
            ok, expect = got == want, want
        if not ok:
            raise ArchError(f"{prefix}{src} has shape {got}, but the architecture read from this checkpoint "
                            f"needs {expect}")
        if tensor.dtype != target[key].dtype and not (tensor.is_floating_point() and target[key].is_floating_point()):
            raise ArchError(f"{prefix}{src} has dtype {tensor.dtype}, expected {target[key].dtype}")
        converted[key] = me_kernel_to_spconv(tensor) if is_kernel else tensor
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in converted.items()}, strict=True)


def expected_checkpoint_shapes(model: nn.Module, prefix: str = "model.") -> dict[str, tuple[int, ...]]:
    """The checkpoint keys and MinkowskiEngine-layout shapes ``model`` loads from (for tests and docs)."""
    target = model.state_dict()
    out = {}
    for key, (src, is_kernel) in _sources(model).items():
        shape = tuple(target[key].shape)
        out[prefix + src] = (shape[1] ** 3, shape[4], shape[0]) if is_kernel else shape
    return out


def spconv_to_me_kernel(weight: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`me_kernel_to_spconv`: (out, k, k, k, in) -> (k**3, in, out)."""
    cout, k, _, _, cin = weight.shape
    return weight.permute(3, 2, 1, 4, 0).reshape(k ** 3, cin, cout).contiguous()


def export_mask3d_state(model: nn.Module, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """``model``'s weights as a Mask3D checkpoint ``state_dict`` (MinkowskiEngine layouts, ``model.`` keys).

    Used to write small random-weight checkpoints that load through the same code path as real ones.
    """
    target = model.state_dict()
    return {prefix + src: (spconv_to_me_kernel(target[key]) if is_kernel else target[key].clone())
            for key, (src, is_kernel) in _sources(model).items()}
