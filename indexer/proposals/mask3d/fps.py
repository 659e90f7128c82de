"""Farthest-point sampling with the exact semantics of pointnet2's CUDA kernel, as Mask3D uses it.

Mask3D picks its non-parametric queries with ``furthest_point_sample`` from
``third_party/pointnet2/_ext_src/src/sampling_gpu.cu`` on the float32 voxel coordinates (row order).
This module reproduces that kernel with plain torch ops, one vectorised pass per pick, so the same
function runs on CPU tensors and, unchanged, on CUDA tensors. The kernel's rules:

* The first pick is always row 0. A distance buffer starts at 1e10 (float32).
* A point with ``x*x + y*y + z*z <= 1e-3`` (products and sums in float32, compared with the double
  literal 1e-3) is skipped entirely: its buffer is never updated and it is never picked (only the fixed
  first pick can be such a point).
* Each pick, every other point's buffer becomes ``min(d, buffer)`` with ``d = (dx*dx + dy*dy) + dz*dz``
  in float32 (no fused multiply-add), and the point with the largest buffer is picked.
* Ties: one CUDA block of ``T = max(min(2**floor(log2 N), 512), 1)`` threads; thread ``t`` scans
  ``k = t, t+T, ...`` keeping the first strictly larger value, then a shared-memory tree reduction with
  strides T/2, ..., 1 in which a slot keeps its own entry unless the other is strictly larger. Among
  equal maxima the winner is therefore the thread whose id is smallest with its bits reversed, and
  within that thread the smallest index. Here: the candidate minimising ``(bitrev(k mod T), k)``.

Degenerate inputs, as the kernel behaves:

* ``npoint == 0``: an empty result (the kernel returns without writing).
* ``npoint`` larger than the number of distinct non-skipped points (including ``N < npoint``): once
  every point's buffer is 0 the maximum is 0, reached by every non-skipped point, so the tie rule picks
  (again) the non-skipped point with the smallest ``(bitrev(k mod T), k)``; picks repeat.
* Every point except possibly row 0 skipped: each thread reports (-1, index 0) and the reduction keeps
  slot 0, so every pick is row 0.

The kernel's arithmetic is reproduced exactly for any float32 input except that nvcc may contract the
distance into fused multiply-adds; for integer-valued coordinates below 2**12 in magnitude (Mask3D's voxel
coordinates) every product and sum is an exact integer and the result is identical to the CUDA kernel.
"""

from __future__ import annotations

import math

import torch

#: pointnet2's TOTAL_THREADS: the largest CUDA block the kernel is launched with.
MAX_THREADS = 512
#: The kernel's skip threshold on the squared norm (a double literal in the CUDA source).
SKIP_NORM2 = 1e-3
#: Initial value of the distance buffer (the Python wrapper's ``fill_(1e10)``).
INIT_DIST = 1e10


def kernel_threads(n: int) -> int:
    """The kernel's block size for ``n`` points: ``opt_n_threads`` (log computed in double, truncated)."""
    if n < 1:
        raise ValueError(f"kernel_threads needs n >= 1, got {n}")
    pow_2 = int(math.log(float(n)) / math.log(2.0))
    return max(min(1 << pow_2, MAX_THREADS), 1)


def _bit_reverse(t: torch.Tensor, bits: int) -> torch.Tensor:
    """Reverse the lowest ``bits`` bits of each entry of an int64 tensor."""
    out = torch.zeros_like(t)
    for b in range(bits):
        out |= ((t >> b) & 1) << (bits - 1 - b)
    return out


def tie_break_keys(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) int64 rank of each point among equal maxima: ``bitrev(k mod T) * n + k`` (smaller wins)."""
    threads = kernel_threads(n)
    k = torch.arange(n, dtype=torch.int64, device=device)
    return _bit_reverse(k % threads, threads.bit_length() - 1) * n + k


def _check(xyz: torch.Tensor, npoint: int) -> None:
    if not isinstance(xyz, torch.Tensor):  # one exception type for every bad input at this boundary
        raise ValueError(  # noqa: TRY004
            f"furthest_point_sample: xyz must be a torch.Tensor, got {type(xyz).__name__}")
    if xyz.dim() != 2 or xyz.shape[1] != 3:
        raise ValueError(f"furthest_point_sample: xyz must have shape (N, 3), got {tuple(xyz.shape)}")
    if xyz.dtype != torch.float32:
        raise ValueError(f"furthest_point_sample: xyz must be float32 (as the CUDA kernel), got {xyz.dtype}")
    if xyz.shape[0] == 0:
        raise ValueError("furthest_point_sample: xyz has no points")
    if isinstance(npoint, bool) or not isinstance(npoint, int) or npoint < 0:
        raise ValueError(f"furthest_point_sample: npoint must be an int >= 0, got {npoint!r}")
    if not bool(torch.isfinite(xyz).all()):
        raise ValueError("furthest_point_sample: xyz contains NaN or infinite coordinates")


def furthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """(npoint,) int64 row indices of ``xyz`` (N, 3) float32, picked as pointnet2's CUDA kernel does.

    Runs on ``xyz.device`` (CPU or CUDA) with one vectorised pass of torch ops per pick and no host sync
    inside the loop. Raises ValueError for a wrong shape/dtype, no points, non-finite coordinates or a
    negative ``npoint``. See the module doc for the exact rules and the degenerate cases.
    """
    _check(xyz, npoint)
    n, device = xyz.shape[0], xyz.device
    out = torch.zeros(npoint, dtype=torch.int64, device=device)
    if npoint <= 1:
        return out
    xyz = xyz.contiguous()
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    skipped = ((x * x + y * y) + z * z).double() <= SKIP_NORM2
    keys = tie_break_keys(n, device)
    never = torch.iinfo(torch.int64).max
    minus_one = torch.tensor(-1.0, dtype=torch.float32, device=device)
    dist = torch.full((n,), INIT_DIST, dtype=torch.float32, device=device)
    old = out[0:1]  # a (1,) tensor: indexing with it keeps the loop free of host syncs on CUDA
    for j in range(1, npoint):
        p = xyz.index_select(0, old)[0]
        dx, dy, dz = x - p[0], y - p[1], z - p[2]
        dist = torch.minimum((dx * dx + dy * dy) + dz * dz, dist)
        # A skipped point looks like a thread with no candidate (-1); real buffers are >= 0.
        best = torch.where(skipped, minus_one, dist)
        ties = best == best.max()
        old = torch.where(ties, keys, never).argmin().reshape(1)
        out[j] = old[0]
    return out
