"""Mask3D architecture numbers, read from a checkpoint's key names and tensor shapes.

Nothing here is fixed to one configuration: widths, depths, kernel sizes, the number of decoder levels
and of classes come from the tensors themselves. The few numbers no tensor carries (attention heads,
query count, decoder passes, which backbone levels the decoder visits, voxel size) come from the
checkpoint's ``hyper_parameters`` (``config.model.*``), or from explicit overrides when the file has none.
Every inconsistency raises :class:`ArchError` naming what disagrees.

Known variants, for names in logs (checkpoints are never matched against them):

* ``Res16UNet34C``: blocks (2, 3, 4, 6, 2, 2, 2, 2), planes (32, 64, 128, 256, 256, 128, 96, 96), init 32,
  first kernel 5; Mask3D ScanNet200: hidden 128, 8 heads, FFN 1024, 150 queries, 201 classes.
* Tiny parity variant (``../shared/fixtures/mask3d-parity``): blocks 1 x 8, planes (16, 32, 32, 32, 32, 32,
  16, 16), init 16; hidden 32, 4 heads, FFN 64, 16 queries.
"""

from __future__ import annotations

from scenegrep.errors import ScenegrepError

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KNOWN_BACKBONES: dict[tuple[tuple[int, ...], tuple[int, ...], int], str] = {
    ((2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 96, 96), 32): "Res16UNet34C",
    ((2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 64, 64), 32): "Res16UNet34B",
    ((2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 96, 128), 32): "Res16UNet34D",
}


class ArchError(ScenegrepError, ValueError):
    """The checkpoint's tensors and settings do not describe a Mask3D model this code can run."""


@dataclass(frozen=True)
class BackboneArch:
    """Res16UNet numbers.

    Attributes:
        in_channels: input feature channels (3: colours).
        conv1_kernel_size: kernel of the first convolution (5 in Mask3D).
        init_dim: channels of the first convolution.
        layers: basic blocks per stage, block1..block8.
        planes: output channels per stage, block1..block8.
        out_channels: channels of the (unused) ``final`` 1x1 convolution.
    """

    in_channels: int
    conv1_kernel_size: int
    init_dim: int
    layers: tuple[int, ...]
    planes: tuple[int, ...]
    out_channels: int

    @property
    def name(self) -> str:
        return KNOWN_BACKBONES.get((self.layers, self.planes, self.init_dim), "Res16UNet(custom)")

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of the pyramid levels at strides 16, 8, 4, 2, 1 (Mask3D's ``PLANES[-5:]``)."""
        return tuple(self.planes[-5:])


@dataclass(frozen=True)
class Mask3DArch:
    """Everything needed to build the network.

    Attributes:
        backbone: the U-Net numbers.
        hidden_dim: query / mask-feature width.
        num_heads: attention heads.
        dim_feedforward: FFN width.
        num_queries: farthest-point-sampled queries.
        num_classes: class logits per query, including the last "no object" class.
        num_decoders: passes over ``hlevels``.
        shared_decoder: every pass uses decoder 0's layers.
        hlevels: pyramid levels (0 = stride 16 ... 4 = stride 1) visited in each pass.
        use_level_embed: a learned embedding is added per level.
        normalize_pos_enc: Fourier encodings see coordinates scaled to [0, 1] per scene.
        voxel_size: metres.
    """

    backbone: BackboneArch
    hidden_dim: int
    num_heads: int
    dim_feedforward: int
    num_queries: int
    num_classes: int
    num_decoders: int = 3
    shared_decoder: bool = True
    hlevels: tuple[int, ...] = (0, 1, 2, 3)
    use_level_embed: bool = False
    normalize_pos_enc: bool = True
    voxel_size: float = 0.02
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def decoder_stacks(self) -> int:
        return 1 if self.shared_decoder else self.num_decoders

    def summary(self) -> str:
        b = self.backbone
        return (f"{b.name} (blocks {list(b.layers)}, planes {list(b.planes)}), hidden {self.hidden_dim}, "
                f"{self.num_heads} heads, FFN {self.dim_feedforward}, {self.num_queries} queries, "
                f"{self.num_classes} classes, {self.num_decoders} x levels {list(self.hlevels)}")


#: Settings no tensor carries, with where they live in Mask3D's config.
_HPARAM_KEYS = ("num_heads", "num_queries", "num_decoders", "hlevels", "shared_decoder", "normalize_pos_enc",
                "voxel_size")


def _shape(sd: Mapping[str, Any], key: str, ndim: int | None = None) -> tuple[int, ...]:
    if key not in sd:
        raise ArchError(f"missing key {key}")
    shape = tuple(int(s) for s in sd[key].shape)
    if ndim is not None and len(shape) != ndim:
        raise ArchError(f"{key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _indices(sd: Mapping[str, Any], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over the keys; must be 0..n-1."""
    rx = re.compile(pattern)
    found = sorted({int(m.group(1)) for k in sd for m in [rx.fullmatch(k)] if m})
    if found != list(range(len(found))):
        raise ArchError(f"keys matching {pattern!r} are not numbered 0..n-1 (found {found})")
    return found


def model_hparams(hparams: Any) -> dict[str, Any]:
    """``config.model`` (plus ``config.data.voxel_size``) of Lightning ``hyper_parameters``, or {}."""
    if not isinstance(hparams, Mapping):
        return {}
    config = hparams.get("config", hparams)
    if not isinstance(config, Mapping):
        return {}
    model = config.get("model", {})
    out = dict(model) if isinstance(model, Mapping) else {}
    data = config.get("data", {})
    if isinstance(data, Mapping) and "voxel_size" in data and "voxel_size" not in out:
        out["voxel_size"] = data["voxel_size"]
    return out


def infer_arch(sd: Mapping[str, Any], hparams: Any = None, overrides: Mapping[str, Any] | None = None) -> Mask3DArch:
    """The architecture of a Mask3D state dict whose keys have no ``model.`` prefix.

    Args:
        sd: key -> tensor (anything with ``.shape``).
        hparams: the checkpoint's ``hyper_parameters`` (plain data) or None.
        overrides: explicit values for the settings no tensor carries (``num_heads``, ``num_queries``,
            ``num_decoders``, ``hlevels``, ``shared_decoder``, ``normalize_pos_enc``, ``voxel_size``);
            they win over ``hparams``.

    Raises:
        ArchError: a required key is missing, shapes disagree with each other or with ``hparams``, a
            required setting is neither stored nor given, or the model uses a feature not implemented
            (parametric queries, pre-norm, Bottleneck blocks, non-Fourier encodings).
    """
    hp = model_hparams(hparams)
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(over) - set(_HPARAM_KEYS)
    if unknown:
        raise ArchError(f"unknown architecture override(s) {sorted(unknown)}")

    # -- backbone, from tensors ------------------------------------------------------------------
    k_vol, in_ch, init_dim = _shape(sd, "backbone.conv0p1s1.kernel", 3)
    k1 = round(k_vol ** (1 / 3))
    if k1 ** 3 != k_vol:
        raise ArchError(f"backbone.conv0p1s1.kernel has {k_vol} offsets, not a cube")
    layers, planes = [], []
    for stage in range(1, 9):
        if any(k.startswith(f"backbone.block{stage}.0.conv3.") for k in sd):
            raise ArchError(f"backbone.block{stage} has Bottleneck blocks (conv3): only BasicBlock "
                            "Res16UNet variants (e.g. Res16UNet34C) are supported")
        blocks = _indices(sd, rf"backbone\.block{stage}\.(\d+)\.conv1\.kernel")
        if not blocks:
            raise ArchError(f"missing key backbone.block{stage}.0.conv1.kernel")
        layers.append(len(blocks))
        planes.append(_shape(sd, f"backbone.block{stage}.0.conv2.kernel", 3)[2])
    out_channels = _shape(sd, "backbone.final.kernel", 2)[1]
    backbone = BackboneArch(int(in_ch), int(k1), int(init_dim), tuple(layers), tuple(planes), int(out_channels))

    # -- decoder, from tensors -------------------------------------------------------------------
    mf_in, hidden = _shape(sd, "mask_features_head.kernel", 2)
    if mf_in != planes[7]:
        raise ArchError(f"mask_features_head.kernel takes {mf_in} channels but the backbone gives {planes[7]}")
    ffn = _shape(sd, "ffn_attention.0.0.linear1.weight", 2)[0]
    num_classes = _shape(sd, "class_embed_head.weight", 2)[0]
    stacks = _indices(sd, r"cross_attention\.(\d+)\.\d+\.multihead_attn\.in_proj_weight")
    n_levels = len(_indices(sd, r"cross_attention\.0\.(\d+)\.multihead_attn\.in_proj_weight"))
    if not stacks or not n_levels:
        raise ArchError("missing key cross_attention.0.0.multihead_attn.in_proj_weight")
    if any(k.startswith(("query_feat.", "query_embed.")) for k in sd):
        raise ArchError("this model has learned (parametric) queries; only Mask3D's non-parametric "
                        "(farthest-point sampled) queries are supported")
    gauss = _shape(sd, "pos_enc.gauss_B", 2)
    if gauss != (3, hidden // 2):
        raise ArchError(f"pos_enc.gauss_B has shape {gauss}, expected (3, {hidden // 2}) for hidden_dim {hidden}")

    # -- settings no tensor carries --------------------------------------------------------------
    sources: dict[str, str] = {}

    def setting(name: str, default: Any = None) -> Any:
        if name in over:
            sources[name] = "override"
            return over[name]
        if name in hp and hp[name] is not None:
            sources[name] = "checkpoint"
            return hp[name]
        if default is None:
            raise ArchError(f"{name} is not stored in this checkpoint (no hyper_parameters.config.model."
                            f"{name}); give it explicitly")
        sources[name] = "default"
        return default

    for name, tensor_value in (("hidden_dim", hidden), ("dim_feedforward", ffn), ("num_classes", num_classes)):
        if name in hp and hp[name] is not None and int(hp[name]) != tensor_value:
            raise ArchError(f"hyper_parameters say {name}={hp[name]} but the weights have {tensor_value}")
    if hp.get("positional_encoding_type", "fourier") != "fourier":
        raise ArchError(f"positional_encoding_type {hp['positional_encoding_type']!r}: only 'fourier' is supported")
    if hp.get("non_parametric_queries", True) is not True:
        raise ArchError("non_parametric_queries is false: only farthest-point-sampled queries are supported")
    if hp.get("pre_norm", False):
        raise ArchError("pre_norm is true: only Mask3D's post-norm decoder layers are supported")
    if hp.get("use_np_features", False):
        raise ArchError("use_np_features is true: not supported (Mask3D's released models do not use it)")

    num_heads = int(setting("num_heads"))
    num_queries = int(setting("num_queries"))
    shared = bool(setting("shared_decoder", len(stacks) == 1))
    num_decoders = int(setting("num_decoders", 3 if shared else len(stacks)))
    hlevels = tuple(int(h) for h in setting("hlevels", list(range(n_levels))))
    arch = Mask3DArch(
        backbone=backbone, hidden_dim=int(hidden), num_heads=num_heads, dim_feedforward=int(ffn),
        num_queries=num_queries, num_classes=int(num_classes), num_decoders=num_decoders,
        shared_decoder=shared, hlevels=hlevels, use_level_embed="level_embed.weight" in sd,
        normalize_pos_enc=bool(setting("normalize_pos_enc", True)),
        voxel_size=float(setting("voxel_size", 0.02)), sources=sources,
    )
    _check(arch, sd, len(stacks), n_levels)
    return arch


def _check(arch: Mask3DArch, sd: Mapping[str, Any], stacks: int, n_levels: int) -> None:
    """Settings that must agree with the tensors."""
    if arch.hidden_dim % arch.num_heads:
        raise ArchError(f"num_heads={arch.num_heads} does not divide hidden_dim={arch.hidden_dim}")
    if arch.num_queries < 1 or arch.num_decoders < 1:
        raise ArchError("num_queries and num_decoders must be >= 1")
    if stacks != arch.decoder_stacks:
        raise ArchError(f"the weights hold {stacks} decoder stack(s) but shared_decoder={arch.shared_decoder}, "
                        f"num_decoders={arch.num_decoders} need {arch.decoder_stacks}")
    if len(arch.hlevels) != n_levels:
        raise ArchError(f"hlevels {list(arch.hlevels)} has {len(arch.hlevels)} levels but the weights have "
                        f"{n_levels} cross-attention layers per decoder")
    sizes = arch.backbone.level_channels
    for i, h in enumerate(arch.hlevels):
        if not 0 <= h < len(sizes) - 1:
            raise ArchError(f"hlevels entry {h} is not a backbone level the decoder can attend (0..{len(sizes) - 2})")
        got = _shape(sd, f"lin_squeeze.0.{i}.weight", 2)[1]
        if got != sizes[h]:
            raise ArchError(f"lin_squeeze.0.{i}.weight takes {got} channels but level {h} of the backbone has "
                            f"{sizes[h]} (hlevels {list(arch.hlevels)})")
    if arch.voxel_size <= 0:
        raise ArchError(f"voxel_size must be > 0, got {arch.voxel_size}")


def scannet200_arch(num_queries: int = 150) -> Mask3DArch:
    """The released ScanNet200 Mask3D: Res16UNet34C, hidden 128, 8 heads, FFN 1024, 201 classes."""
    return Mask3DArch(BackboneArch(3, 5, 32, (2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 96, 96), 200),
                      hidden_dim=128, num_heads=8, dim_feedforward=1024, num_queries=num_queries, num_classes=201)


def tiny_arch(num_queries: int = 16) -> Mask3DArch:
    """The parity fixture's tiny variant (one block per stage), for tests."""
    return Mask3DArch(BackboneArch(3, 5, 16, (1,) * 8, (16, 32, 32, 32, 32, 32, 16, 16), 200),
                      hidden_dim=32, num_heads=4, dim_feedforward=64, num_queries=num_queries, num_classes=201)


def arch_hparams(arch: Mask3DArch) -> dict[str, Any]:
    """Lightning-style ``hyper_parameters`` describing ``arch`` (what a Mask3D checkpoint stores)."""
    return {"config": {
        "model": {"hidden_dim": arch.hidden_dim, "num_heads": arch.num_heads, "dim_feedforward": arch.dim_feedforward,
                  "num_queries": arch.num_queries, "num_classes": arch.num_classes, "num_decoders": arch.num_decoders,
                  "shared_decoder": arch.shared_decoder, "hlevels": list(arch.hlevels),
                  "use_level_embed": arch.use_level_embed, "normalize_pos_enc": arch.normalize_pos_enc,
                  "positional_encoding_type": "fourier", "non_parametric_queries": True, "pre_norm": False,
                  "voxel_size": arch.voxel_size},
        "data": {"voxel_size": arch.voxel_size, "in_channels": arch.backbone.in_channels,
                 "num_labels": arch.backbone.out_channels},
    }}
