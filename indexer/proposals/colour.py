"""Colour splits: extra candidate masks for regions whose colours are clearly two-coloured.

The geometric hierarchy (:mod:`scenegrep.indexer.proposals.geometric`) joins what touches and bends little;
two objects of different colour that lie flush against each other (a red bag and the white straws sticking
out of it, a poster on a board) come out as one region at every level. Its edge weights do see colour, but
weakly, because real colours are dull and textured and a strong colour term splits printed boxes. So
colour is used here a second way: not to change the hierarchy, but to *add* candidates. Each region of the
hierarchy is tested for a clear two-colour structure; where it has one, the region's parts of each colour
become extra masks, scored below the region itself so that AP's ranking of the hierarchy is kept.

Per region (voxels of the voxel grid, point-weighted):

1. **Colour space.** CIELAB (``skimage.color.rgb2lab``), where Euclidean distance approximates perceived
   difference; ``L*`` is multiplied by ``lightness_weight`` (< 1) because shading changes lightness over
   one surface while it hardly changes hue (``a*``, ``b*``). Each voxel's colour is first averaged with its
   graph neighbours inside the region (one step of mean filtering) to damp sensor noise.
2. **Two means.** Lloyd iterations from the two ends of the principal colour axis (deterministic).
3. **Separation test.** The colours are projected onto the line joining the two means and Ashman's D is
   computed, ``D = sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2)`` (Ashman, Bird & Zepf 1994, "Detecting bimodality
   in astronomical datasets"): a mixture of two Gaussians is cleanly separated only for D > 2. The split
   is kept only if ``D >= min_separation`` and the mean colours differ by at least ``min_contrast`` (Lab
   units; a JND is about 2.3): texture and noise give unimodal spreads with low D, a two-coloured region a
   high one.
4. **Spatial coherence.** The assignment is smoothed by majority vote over each voxel's graph neighbours
   (``smooth_steps`` times), then each colour's voxels are split into connected components over the graph
   edges inside the region (the cloud's own spacing: the edges are the proposer's kNN graph). Components
   with fewer than ``min_fraction`` of the region's points are speckle and dropped.
5. **Score.** A part's score is the lowest score of the hierarchy's masks times its region's score times
   the part's share of the region's points (:func:`~scenegrep.indexer.proposals.geometric.propose_points`):
   every part ranks below every hierarchy mask, so the ranking AP sees for those is unchanged and a part
   can only add recall (a ground-truth object is matched by the highest-scoring mask that overlaps it
   enough); among themselves, parts of strong regions and big parts come first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from skimage.color import rgb2lab


@dataclass
class ColourSplitConfig:
    """Settings of the colour splits (see the module docstring).

    Attributes:
        enabled: add colour-split candidates at all.
        lightness_weight: factor on ``L*`` (shading changes lightness more than hue).
        min_separation: Ashman's D of the two colour clusters along the line joining their means.
        min_contrast: least distance (weighted Lab units) between the two mean colours.
        min_fraction: a part must hold at least this share of its region's points.
        min_voxels: regions with fewer voxels are not tested.
        smooth_steps: majority-vote smoothing steps of the two-colour assignment over the graph.
        iterations: Lloyd iterations of the two-means.
        max_regions: test at most this many regions (the highest scoring), a bound on time.
    """

    enabled: bool = True
    lightness_weight: float = 0.1
    min_separation: float = 2.0
    min_contrast: float = 10.0
    min_fraction: float = 0.2
    min_voxels: int = 40
    smooth_steps: int = 2
    iterations: int = 10
    max_regions: int = 600


def lab_features(rgb: np.ndarray, cfg: ColourSplitConfig) -> np.ndarray:
    """(V, 3) CIELAB of colours in [0, 1], ``L*`` scaled by ``lightness_weight``."""
    lab = rgb2lab(np.clip(rgb, 0.0, 1.0)[None].astype(np.float64))[0]
    lab[:, 0] *= cfg.lightness_weight
    return lab


def two_means(x: np.ndarray, w: np.ndarray, iterations: int) -> np.ndarray:
    """(n,) bool assignment of weighted points to the second of two clusters (Lloyd's algorithm started
    from the 10th and 90th weighted percentiles along the principal axis)."""
    mu = np.average(x, axis=0, weights=w)
    c = x - mu
    cov = (c * w[:, None]).T @ c / w.sum()
    axis = np.linalg.eigh(cov)[1][:, -1]
    proj = c @ axis
    order = np.argsort(proj)
    cw = np.cumsum(w[order]) / w.sum()
    lo, hi = proj[order[np.searchsorted(cw, 0.1)]], proj[order[min(np.searchsorted(cw, 0.9), len(order) - 1)]]
    centres = np.stack([mu + lo * axis, mu + hi * axis])
    assign = np.zeros(len(x), bool)
    for _ in range(iterations):
        d0 = ((x - centres[0]) ** 2).sum(axis=1)
        d1 = ((x - centres[1]) ** 2).sum(axis=1)
        new = d1 < d0
        if new.all() or not new.any():
            return new
        if np.array_equal(new, assign):
            break
        assign = new
        centres = np.stack([np.average(x[~assign], axis=0, weights=w[~assign]),
                            np.average(x[assign], axis=0, weights=w[assign])])
    return assign


def ashman_d(x: np.ndarray, w: np.ndarray, assign: np.ndarray) -> tuple[float, float]:
    """(Ashman's D along the line joining the two weighted means, distance of the means)."""
    m0 = np.average(x[~assign], axis=0, weights=w[~assign])
    m1 = np.average(x[assign], axis=0, weights=w[assign])
    gap = float(np.linalg.norm(m1 - m0))
    if gap == 0:
        return 0.0, 0.0
    u = (m1 - m0) / gap
    p = x @ u
    v0 = np.average((p[~assign] - p[~assign].mean()) ** 2, weights=w[~assign])
    v1 = np.average((p[assign] - p[assign].mean()) ** 2, weights=w[assign])
    d = math.sqrt(2.0) * gap / max(math.sqrt(float(v0 + v1)), 1e-9)
    return d, gap


def split_region(vox: np.ndarray, lab: np.ndarray, counts: np.ndarray, adj: sp.csr_matrix,
                 cfg: ColourSplitConfig) -> list[np.ndarray]:
    """Colour parts of one region (global voxel ids ``vox``): a list of voxel-id arrays, empty when the
    region is not clearly two-coloured (module docstring, steps 1-4). ``adj`` is the symmetric voxel
    adjacency (CSR, V x V) of the proposer's graph."""
    if vox.size < cfg.min_voxels:
        return []
    sub = adj[vox][:, vox].tocsr()
    w = counts[vox].astype(np.float64)
    # one step of mean filtering over the region's own graph (self included), point-weighted
    ws = sub.multiply(w[None, :]).tocsr() + sp.diags(w)
    x = (ws @ lab[vox]) / np.asarray(ws.sum(axis=1)).reshape(-1, 1)
    assign = two_means(x, w, cfg.iterations)
    if assign.all() or not assign.any():
        return []
    d, gap = ashman_d(x, w, assign)
    if d < cfg.min_separation or gap < cfg.min_contrast:
        return []
    deg = np.asarray(sub.sum(axis=1)).reshape(-1)
    for _ in range(cfg.smooth_steps):
        ones = sub @ assign.astype(np.float64)
        flip = np.where(2 * ones > deg, True, np.where(2 * ones < deg, False, assign))
        if np.array_equal(flip, assign):
            break
        assign = flip
    total = w.sum()
    parts: list[np.ndarray] = []
    coo = sub.tocoo()
    ok = assign[coo.row] == assign[coo.col]  # only the edges within one colour
    same = sp.csr_matrix((coo.data[ok], (coo.row[ok], coo.col[ok])), shape=sub.shape)
    ncomp, comp = connected_components(same, directed=False)
    share = np.bincount(comp, weights=w, minlength=ncomp) / total
    for c in np.flatnonzero((share >= cfg.min_fraction) & (share < 1.0)):
        parts.append(vox[comp == c])
    return parts
