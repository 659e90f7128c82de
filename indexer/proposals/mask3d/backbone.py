"""Res16UNet (MinkowskiEngine Res16UNetBase as used by Mask3D) on spconv.

The module tree and parameter names mirror Mask3D's ``backbone.*`` keys, so a checkpoint maps onto it
name for name; only the spconv kernels differ in layout (see :mod:`.convert`). The numbers (blocks per
stage, planes, first-conv kernel) come from :class:`~scenegrep.indexer.proposals.mask3d.arch.BackboneArch`, so the
full Res16UNet34C and the tiny parity variant are one code path.

Coordinates: spconv indexes a non-negative grid, so voxel coordinates are shifted by a multiple of 16 (the
coarsest stride); ``floor(c / s)`` then groups children exactly as MinkowskiEngine's ``floor(c/s)*s``.
Stride-1 rows keep the input voxel order (submanifold convolutions and the transposed convolutions
reuse the encoder's index tensors), coarser levels are in spconv's own order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import spconv.pytorch as spconv
import torch
from torch import nn

from scenegrep.indexer.proposals.mask3d.arch import BackboneArch


def _mute_fx_tracing_notice() -> None:
    """spconv asks ``torch.fx.is_fx_tracing()`` on every call, and torch logs a deprecation notice the
    first time (to stderr, where it would land in the CLI's output). The notice is emitted once per
    process (lru_cache), so emit it here with its logger muted."""
    try:
        from torch.fx import _symbolic_trace
    except ImportError:  # pragma: no cover - other torch versions
        return
    notice = getattr(_symbolic_trace, "is_fx_tracing_warning", None)
    if notice is None:
        return
    logger = logging.getLogger(_symbolic_trace.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        notice()
    finally:
        logger.setLevel(level)


_mute_fx_tracing_notice()

#: MinkowskiBatchNorm's eps (torch BatchNorm1d default).
BN_EPS = 1e-5


def _relu(x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
    return x.replace_feature(torch.relu(x.features))


class SparseBatchNorm(nn.Module):
    """MinkowskiBatchNorm: BatchNorm1d over the features (keys ``<name>.bn.*``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, eps=BN_EPS)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        return x.replace_feature(self.bn(x.features))


class Pointwise(nn.Module):
    """A one-voxel MinkowskiConvolution: ``features @ kernel + bias``, kept in ME's layout
    (``kernel`` (in, out), ``bias`` (1, out)) so the checkpoint loads as is."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool):
        super().__init__()
        # initialised like nn.Linear (real values always come from a checkpoint)
        bound = 1.0 / max(1, in_channels) ** 0.5
        self.kernel = nn.Parameter(torch.empty(in_channels, out_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(1, out_channels).uniform_(-bound, bound)) if bias else None

    def linear(self, feats: torch.Tensor) -> torch.Tensor:
        out = feats @ self.kernel
        return out if self.bias is None else out + self.bias

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        return x.replace_feature(self.linear(x.features))


class BasicBlock(nn.Module):
    """ResNet basic block on one level: conv3-BN-ReLU-conv3-BN, plus a (1x1 conv, BN) shortcut when the
    width changes, then ReLU."""

    def __init__(self, in_channels: int, channels: int, indice_key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(in_channels, channels, 3, bias=False, indice_key=indice_key)
        self.norm1 = SparseBatchNorm(channels)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, bias=False, indice_key=indice_key)
        self.norm2 = SparseBatchNorm(channels)
        self.downsample = (nn.Sequential(Pointwise(in_channels, channels, bias=False), SparseBatchNorm(channels))
                           if in_channels != channels else None)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = _relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return _relu(out.replace_feature(out.features + residual.features))


def _stage(in_channels: int, channels: int, blocks: int, indice_key: str) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(in_channels if i == 0 else channels, channels, indice_key)
                           for i in range(blocks)])


def _down(channels: int, key: str) -> spconv.SparseConv3d:
    """Kernel-2 stride-2 convolution: the output at floor(c/2s)*2s gathers its (up to 8) children."""
    return spconv.SparseConv3d(channels, channels, 2, stride=2, bias=False, indice_key=key)


def _up(in_channels: int, out_channels: int, key: str) -> spconv.SparseInverseConv3d:
    """Kernel-2 transposed convolution back onto the encoder's coordinates of the finer level."""
    return spconv.SparseInverseConv3d(in_channels, out_channels, 2, bias=False, indice_key=key)


@dataclass
class Pyramid:
    """The backbone's feature maps, coarsest first: strides 16, 8, 4, 2, 1 (Mask3D's ``aux``).

    Attributes:
        levels: five spconv tensors; ``levels[-1]`` is the stride-1 output (= ``pcd_features``), its rows in
            the input voxel order.
        strides: (16, 8, 4, 2, 1).
    """

    levels: list[spconv.SparseConvTensor]
    strides: tuple[int, ...] = (16, 8, 4, 2, 1)


class Res16UNet(nn.Module):
    """Encoder p1 -> p2 -> p4 -> p8 -> p16, decoder back to p1 with skip concatenations (ME ``me.cat``:
    upsampled features first, then the skip). ``final`` (a 1x1 conv to the semantic labels) is loaded
    but, as in Mask3D, never used."""

    def __init__(self, arch: BackboneArch):
        super().__init__()
        p, n, c0 = arch.planes, arch.layers, arch.init_dim
        self.conv0p1s1 = spconv.SubMConv3d(arch.in_channels, c0, arch.conv1_kernel_size, bias=False, indice_key="subm1_first")
        self.bn0 = SparseBatchNorm(c0)
        self.conv1p1s2, self.bn1 = _down(c0, "down2"), SparseBatchNorm(c0)
        self.block1 = _stage(c0, p[0], n[0], "subm2")
        self.conv2p2s2, self.bn2 = _down(p[0], "down4"), SparseBatchNorm(p[0])
        self.block2 = _stage(p[0], p[1], n[1], "subm4")
        self.conv3p4s2, self.bn3 = _down(p[1], "down8"), SparseBatchNorm(p[1])
        self.block3 = _stage(p[1], p[2], n[2], "subm8")
        self.conv4p8s2, self.bn4 = _down(p[2], "down16"), SparseBatchNorm(p[2])
        self.block4 = _stage(p[2], p[3], n[3], "subm16")
        self.convtr4p16s2, self.bntr4 = _up(p[3], p[4], "down16"), SparseBatchNorm(p[4])
        self.block5 = _stage(p[4] + p[2], p[4], n[4], "subm8")
        self.convtr5p8s2, self.bntr5 = _up(p[4], p[5], "down8"), SparseBatchNorm(p[5])
        self.block6 = _stage(p[5] + p[1], p[5], n[5], "subm4")
        self.convtr6p4s2, self.bntr6 = _up(p[5], p[6], "down4"), SparseBatchNorm(p[6])
        self.block7 = _stage(p[6] + p[0], p[6], n[6], "subm2")
        self.convtr7p2s2, self.bntr7 = _up(p[6], p[7], "down2"), SparseBatchNorm(p[7])
        self.block8 = _stage(p[7] + c0, p[7], n[7], "subm1")
        self.final = Pointwise(p[7], arch.out_channels, bias=True)

    def forward(self, x: spconv.SparseConvTensor) -> Pyramid:
        def up(conv, bn, out, skip):
            out = _relu(bn(conv(out)))
            return out.replace_feature(torch.cat([out.features, skip.features], dim=1))

        out_p1 = _relu(self.bn0(self.conv0p1s1(x)))
        out_b1p2 = self.block1(_relu(self.bn1(self.conv1p1s2(out_p1))))
        out_b2p4 = self.block2(_relu(self.bn2(self.conv2p2s2(out_b1p2))))
        out_b3p8 = self.block3(_relu(self.bn3(self.conv3p4s2(out_b2p4))))
        p16 = self.block4(_relu(self.bn4(self.conv4p8s2(out_b3p8))))
        p8 = self.block5(up(self.convtr4p16s2, self.bntr4, p16, out_b3p8))
        p4 = self.block6(up(self.convtr5p8s2, self.bntr5, p8, out_b2p4))
        p2 = self.block7(up(self.convtr6p4s2, self.bntr6, p4, out_b1p2))
        p1 = self.block8(up(self.convtr7p2s2, self.bntr7, p2, out_p1))
        return Pyramid([p16, p8, p4, p2, p1])
