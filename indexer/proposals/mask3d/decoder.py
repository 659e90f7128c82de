"""Mask3D's query-decoder building blocks (Mask2Former-style post-norm layers, 3DETR Fourier encodings).

Parameter names match Mask3D's (``multihead_attn``, ``self_attn``, ``linear1``, ``norm``, ``layers.0``,
``gauss_B``), so checkpoints load name for name. Dropout is 0 at inference and omitted.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CrossAttentionLayer(nn.Module):
    """Queries attend to one backbone level: ``norm(q + attn(q + q_pos, k + k_pos, k, mask))``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None,
                key_pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """queries (Q, 1, D), keys (N, 1, D), mask (heads, Q, N) bool (True = blocked)."""
        out = self.multihead_attn(query=queries + query_pos, key=keys + key_pos, value=keys, attn_mask=mask,
                                  need_weights=False)[0]
        return self.norm(queries + out)


class SelfAttentionLayer(nn.Module):
    """Queries attend to each other: ``norm(q + attn(q + pos, q + pos, q))``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        qk = queries + query_pos
        out = self.self_attn(qk, qk, value=queries, need_weights=False)[0]
        return self.norm(queries + out)


class FFNLayer(nn.Module):
    """``norm(x + linear2(relu(linear1(x))))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(torch.relu(self.linear1(x))))


class FourierPositionalEncoding(nn.Module):
    """3DETR's ``PositionEmbeddingCoordsSine(pos_type="fourier")``: ``[sin(2 pi x B), cos(2 pi x B)]`` of
    coordinates optionally scaled to [0, 1] by a given range. ``gauss_B`` (3, D/2) is a loaded buffer,
    never re-sampled."""

    def __init__(self, dim: int, normalize: bool):
        super().__init__()
        self.normalize = normalize
        self.register_buffer("gauss_B", torch.zeros(3, dim // 2))

    def forward(self, xyz: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """xyz (N, 3) float32 with the range's (3,) min / max -> (N, D)."""
        xyz = xyz.float()
        if self.normalize:
            # 3DETR's shift_scale_points to [0, 1], same operation order (bit-identical inputs to sin/cos).
            xyz = ((xyz - lo) * torch.ones_like(lo)) / (hi - lo) + torch.zeros_like(lo)
        xyz = xyz * (2 * math.pi)
        proj = torch.mm(xyz, self.gauss_B)
        return torch.cat([proj.sin(), proj.cos()], dim=1)


class QueryProjection(nn.Module):
    """3DETR ``GenericMLP`` with 1x1 Conv1d layers: conv-ReLU-conv-ReLU (keys ``layers.0``/``layers.2``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.ReLU(), nn.Conv1d(dim, dim, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(Q, D) -> (Q, D)."""
        return self.layers(x.T.unsqueeze(0))[0].T
