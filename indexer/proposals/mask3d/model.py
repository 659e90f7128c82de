"""Mask3D (Schult et al., ICRA 2023) for one scene: Res16UNet backbone + transformer query decoder.

The forward pass is Mask3D's ``forward`` in eval mode for a single scene (``is_eval``: every voxel of
every level is a key, no sub-sampling, no segments), written for batch size one:

1. backbone -> pyramid at strides 16, 8, 4, 2, 1; ``mask_features`` = 1x1 head on stride 1;
2. raw coordinates average-pooled up the pyramid -> Fourier key encodings per level;
3. queries: farthest-point-sampled voxels -> Fourier encoding -> projection = query positions; query
   features start at zero;
4. ``num_decoders`` passes over ``hlevels``: predict masks from the current queries, pool them to the
   level, block keys whose pooled mask is < 0.5 (a query blocked everywhere sees everything), then
   cross-attention, self-attention, FFN;
5. a last prediction gives ``pred_logits`` (Q, C+1) and ``pred_masks`` (V, Q) voxel logits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import spconv.pytorch as spconv
import torch
from torch import nn

from scenegrep.indexer.proposals.mask3d.arch import Mask3DArch
from scenegrep.indexer.proposals.mask3d.backbone import Pointwise, Pyramid, Res16UNet
from scenegrep.indexer.proposals.mask3d.decoder import (
    CrossAttentionLayer,
    FFNLayer,
    FourierPositionalEncoding,
    QueryProjection,
    SelfAttentionLayer,
)

#: The coarsest stride; spconv's grid is shifted by a multiple of it.
COARSEST_STRIDE = 16


@dataclass
class Mask3DOutput:
    """Network outputs for one scene (V voxels, Q queries, C + 1 class logits).

    Attributes:
        pred_logits: (Q, C + 1) class logits of the last prediction; the last column is "no object".
        pred_masks: (V, Q) mask logits per voxel (rows in input voxel order).
        fps_idx: (Q,) int64 voxel rows of the sampled queries.
        backbone_features: (V, planes[7]) stride-1 backbone output.
        mask_features: (V, hidden) output of the mask-features head.
        aux: with ``keep_aux``, every intermediate (pred_logits, pred_masks, attention mask (N_level, Q) bool,
            True = blocked), computed before each decoder step.
        pyramid: (coords (N, 3) int64 in voxel units, floor(c/s)*s, features (N, C)) per stride 16..1.
        parents: ``parents[i]`` (N_{i+1},) row of each level-(i+1) voxel's parent in level i.
        timings: seconds spent in the backbone and in the decoder (queries, attention, predictions).
    """

    pred_logits: torch.Tensor
    pred_masks: torch.Tensor
    fps_idx: torch.Tensor
    backbone_features: torch.Tensor
    mask_features: torch.Tensor
    aux: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    pyramid: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    parents: list[torch.Tensor] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def _spconv_threads(device: torch.device) -> Iterator[None]:
    """spconv's CPU convolutions give wrong results (differences of 0.5 on values of 3, changing from run
    to run) when torch uses several intra-op threads: run them on one thread. CUDA is unaffected."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _clock(like: torch.Tensor) -> float:
    """perf_counter after the device's queued work is done (CUDA kernels run asynchronously)."""
    if like.is_cuda:
        torch.cuda.synchronize(like.device)
    return time.perf_counter()


def _avg_pool(feats: torch.Tensor, parent: torch.Tensor, n_parent: int) -> torch.Tensor:
    """MinkowskiAvgPooling(kernel 2, stride 2): each parent gets the mean of its present children."""
    out = torch.zeros(n_parent, feats.shape[1], dtype=feats.dtype, device=feats.device)
    out.index_add_(0, parent, feats)
    count = torch.bincount(parent, minlength=n_parent).to(feats.dtype)
    return out / count[:, None]


def _parents(child: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """Row in ``parent`` (M, 3) grid indices of every child (N, 3) grid index one level finer."""
    p = child // 2
    span = int(max(int(parent.max()), int(p.max()))) + 1
    key_parent = (parent[:, 0] * span + parent[:, 1]) * span + parent[:, 2]
    key_child = (p[:, 0] * span + p[:, 1]) * span + p[:, 2]
    order = torch.argsort(key_parent)
    pos = torch.searchsorted(key_parent[order], key_child)
    rows = order[pos.clamp(max=order.numel() - 1)]
    if not torch.equal(key_parent[rows], key_child):
        raise RuntimeError("backbone pyramid is inconsistent: a voxel has no parent at the next level")
    return rows


class Mask3D(nn.Module):
    """The network; module names follow Mask3D's checkpoint keys (without ``model.``)."""

    def __init__(self, arch: Mask3DArch):
        super().__init__()
        self.arch = arch
        d, h = arch.hidden_dim, arch.num_heads
        self.backbone = Res16UNet(arch.backbone)
        self.mask_features_head = Pointwise(arch.backbone.planes[7], d, bias=True)
        self.query_projection = QueryProjection(d)
        self.mask_embed_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.class_embed_head = nn.Linear(d, arch.num_classes)
        self.pos_enc = FourierPositionalEncoding(d, arch.normalize_pos_enc)
        self.decoder_norm = nn.LayerNorm(d)
        if arch.use_level_embed:
            self.level_embed = nn.Embedding(len(arch.hlevels), d)
        sizes = arch.backbone.level_channels
        stacks, levels = range(arch.decoder_stacks), range(len(arch.hlevels))
        self.cross_attention = nn.ModuleList(nn.ModuleList(CrossAttentionLayer(d, h) for _ in levels) for _ in stacks)
        self.self_attention = nn.ModuleList(nn.ModuleList(SelfAttentionLayer(d, h) for _ in levels) for _ in stacks)
        self.ffn_attention = nn.ModuleList(nn.ModuleList(FFNLayer(d, arch.dim_feedforward) for _ in levels)
                                           for _ in stacks)
        self.lin_squeeze = nn.ModuleList(nn.ModuleList(nn.Linear(sizes[hl], d) for hl in arch.hlevels) for _ in stacks)

    # -- pieces ------------------------------------------------------------------------------------

    def run_backbone(self, voxel_coords: torch.Tensor,
                     features: torch.Tensor) -> tuple[Pyramid, list[torch.Tensor], torch.Tensor]:
        """Backbone on (V, 3) integer voxel coordinates; returns the pyramid, per level each row's parent row
        one level coarser (``parents[i]`` maps level i + 1 rows into level i rows), and the (3,) grid shift."""
        shift = -torch.div(voxel_coords.min(dim=0).values, COARSEST_STRIDE, rounding_mode="floor") * COARSEST_STRIDE
        grid = (voxel_coords + shift).int()
        shape = ((grid.max(dim=0).values // COARSEST_STRIDE + 1) * COARSEST_STRIDE).tolist()
        batch = torch.zeros(grid.shape[0], 1, dtype=torch.int32, device=grid.device)
        x = spconv.SparseConvTensor(features, torch.cat([batch, grid], 1), shape, batch_size=1)
        with _spconv_threads(features.device):
            pyr = self.backbone(x)
        idx = [lvl.indices[:, 1:].long() for lvl in pyr.levels]
        parents = [_parents(idx[i + 1], idx[i]) for i in range(len(idx) - 1)]
        return pyr, parents, shift

    def mask_module(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) queries -> class logits (Q, C + 1) and mask embeddings (Q, D); a voxel's mask logit for
        query q is ``mask_features[v] @ embed[q]``."""
        q = self.decoder_norm(queries)
        return self.class_embed_head(q), self.mask_embed_head(q)

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, voxel_coords: torch.Tensor, features: torch.Tensor, raw_coords: torch.Tensor,
                fps_idx: torch.Tensor | None = None, keep_aux: bool = False) -> Mask3DOutput:
        """voxel_coords (V, 3) int, features (V, in_channels) float32, raw_coords (V, 3) float32.

        ``fps_idx`` (Q,) replaces the farthest-point sampling and ``keep_aux`` keeps every intermediate
        prediction (num_decoders x levels (V, Q) arrays: for tests, not for big scenes)."""
        arch = self.arch
        t0 = _clock(voxel_coords)
        pyr, parents, shift = self.run_backbone(voxel_coords, features)
        t1 = _clock(voxel_coords)
        feats = [lvl.features for lvl in pyr.levels]
        sizes = [f.shape[0] for f in feats]
        mask_features = self.mask_features_head.linear(feats[-1])

        def pool_to(x: torch.Tensor, level: int) -> torch.Tensor:  # stride-1 rows -> rows of ``level``
            for i in range(len(feats) - 1, level, -1):
                x = _avg_pool(x, parents[i - 1], sizes[i - 1])
            return x

        coords = [pool_to(raw_coords, lvl) for lvl in range(len(feats))]
        key_pos = [self.pos_enc(c, c.min(dim=0).values, c.max(dim=0).values) for c in coords]

        if fps_idx is None:
            from scenegrep.indexer.proposals.mask3d.fps import furthest_point_sample

            fps_idx = furthest_point_sample(voxel_coords.float(), arch.num_queries)
        lo, hi = raw_coords.min(dim=0).values, raw_coords.max(dim=0).values
        query_pos = self.query_projection(self.pos_enc(raw_coords[fps_idx], lo, hi))[:, None]  # (Q, 1, D)
        queries = torch.zeros_like(query_pos)

        # Mask3D pools the (V, Q) mask logits up to each level; pooling is linear, so pooling the (V, D)
        # mask features once and projecting per step gives the same logits (up to float rounding) without
        # a full-resolution (V, Q) product and pooling at every step.
        level_features = {hl: pool_to(mask_features, hl) for hl in set(arch.hlevels)}
        aux = []
        for step in range(arch.num_decoders):
            d = 0 if arch.shared_decoder else step
            for i, hlevel in enumerate(arch.hlevels):
                logits, embed = self.mask_module(queries[:, 0])
                blocked = (level_features[hlevel] @ embed.T).sigmoid() < 0.5  # (N, Q), True = key hidden
                blocked[:, blocked.all(dim=0)] = False  # a query blocked everywhere attends to every key
                if keep_aux:
                    aux.append((logits, mask_features @ embed.T, blocked))
                keys = self.lin_squeeze[d][i](feats[hlevel])[:, None]
                if arch.use_level_embed:
                    keys = keys + self.level_embed.weight[i]
                # a (Q, N) mask is shared by all heads (Mask3D repeats it per head: same result)
                out = self.cross_attention[d][i](queries, keys, blocked.T, key_pos[hlevel][:, None], query_pos)
                out = self.self_attention[d][i](out, query_pos)
                queries = self.ffn_attention[d][i](out)
        logits, embed = self.mask_module(queries[:, 0])
        masks = mask_features @ embed.T
        timings = {"backbone_s": t1 - t0, "decoder_s": _clock(masks) - t1}
        # grid index g at stride s -> MinkowskiEngine's voxel coordinate floor(c / s) * s = g * s - shift
        pyramid = [(lvl.indices[:, 1:].long() * s - shift.to(lvl.indices.device), f)
                   for lvl, f, s in zip(pyr.levels, feats, pyr.strides)]
        return Mask3DOutput(pred_logits=logits, pred_masks=masks, fps_idx=fps_idx, backbone_features=feats[-1],
                            mask_features=mask_features, aux=aux, pyramid=pyramid,
                            parents=parents, timings=timings)

