"""Weight-free class-agnostic instance proposals from geometry and colour.

The pipeline (all of it on a voxel-downsampled copy of the cloud, mapped back at the end):

1. **Voxel grid.** Points are binned into cubes of ``voxel_size``; each occupied voxel becomes one node with
   the mean xyz and mean colour of its points. The point -> voxel map is kept to map regions back.
2. **Normals** by PCA over each voxel's ``knn`` nearest voxels (batched 3x3 covariances + ``np.linalg.eigh``).
   They are oriented consistently per connected surface (minimum spanning tree propagation, Hoppe et al.
   1992) and then flipped so that they face the scanner (see :func:`orient_normals`), which is what makes
   the convex/concave distinction of step 3 possible.
3. **Graph.** The ``graph_knn`` nearest voxels of each voxel, closer than ``max_edge_factor * voxel_size``,
   give undirected edges with weight (a dissimilarity, 0 = same surface)::

       w = normal_weight * w_normal + w_color
       w_normal = (1 - n_i . n_j) * f                               in [0, 2]
       w_color  = |F(c_i) - F(c_j)|,  F(c) = (chroma_weight * c / (r + g + b), intensity_weight * (r + g + b) / 3)

   with ``f = convex_factor`` when the edge is convex (``(n_i - n_j) . (p_i - p_j) > 0``: the surfaces fold
   away from the viewer, as on the edges of a box), else 1. Object boundaries against their support (a box
   on the floor, a cup on a table) are concave, faces of one object meet at convex edges: discounting convex
   folds keeps objects together while the concave fold still cuts them from the floor (the ScanNet
   segmentator's rule, on a point graph). The colour features (:func:`color_features`) separate chromaticity,
   which shading does not change, from intensity, which it does: the lit top and the shaded side of one
   object differ mostly in intensity, an object and the floor in chromaticity.
4. **Superpoints** by Felzenszwalb-Huttenlocher graph segmentation: edges in ascending weight, two
   components merge when ``w <= min(Int(A) + k/|A|, Int(B) + k/|B|)``, ``Int`` being the largest edge
   weight inside a component's minimum spanning tree; then components smaller than ``fh_min_size`` voxels
   are merged into their cheapest neighbour.
5. **Hierarchy.** Adjacent superpoints are merged agglomeratively, cheapest pair first, with the cost::

       cost(A, B) = mean over the A-B boundary edges of
                        (merge_normal_weight * w_normal + merge_color_weight * w_color)
                    + region_color_weight * |mean F(A) - mean F(B)|

   (average linkage over the shared boundary plus a region colour term). The normal term is down-weighted
   here (superpoints already follow the geometry) so that parts of one object meeting at concave joints -
   a table's legs under its top - still merge when their colour agrees. Merge costs are made monotone (a
   merge is never recorded cheaper than the one before) so that cutting the tree at a level gives a
   partition.
6. **Proposals** are the regions of the partitions at every cost in ``merge_levels`` (one region may be
   alive at several levels; it is emitted once). Each is mapped back to full-resolution point indices;
   masks under ``min_points`` points are dropped, then near-duplicates (IoU > ``dedupe_iou``).

**Scores** in [0, 1] measure how object-like a region is. Its *persistence* in the hierarchy: a region is
born at the cost of the merge that formed it (0 for superpoints) and dies at the cost at which it is merged
into something bigger; ``persistence = (min(death, score_cap) - birth) / score_cap``. A region that is
internally coherent (formed cheaply) and clearly separated from its surroundings (survives until an
expensive merge) persists long: that is what a whole object looks like, while its fragments and
object+floor unions die young. It is multiplied by an area prior ``area / (area + area_prior)`` (area ~
occupied voxels x voxel face, m^2) because small leftover fragments (a leg, a strip along a fold) are far more
often parts than objects. The masks are returned sorted by descending score.

Defaults were tuned for class-agnostic AP on seeded synthetic ``small`` rooms (scenegrep.indexer.synthetic, seeds
0-4: mean AP 0.987 / AP50 0.990; held-out seeds 5-14: AP 0.964 / AP50 0.987). Those rooms separate objects
by colour more cleanly than real scans do, so real data may want a larger ``merge_normal_weight``.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree
from scipy.spatial import cKDTree

from scenegrep.indexer.proposals.base import MaskSet

if TYPE_CHECKING:
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)


@dataclass
class GeometricConfig:
    """Settings of :class:`GeometricProposer` (defaults tuned on the synthetic ``small`` rooms).

    Attributes:
        voxel_size: edge of the downsampling voxel in metres.
        knn: neighbours (voxels) for the PCA normal of each voxel.
        graph_knn: neighbours per voxel in the segmentation graph (edges are made undirected).
        max_edge_factor: graph edges longer than ``max_edge_factor * voxel_size`` are dropped, so separate
            objects a few centimetres apart are not connected at all.
        normal_weight: weight of the normal term ``1 - n_i . n_j`` in the segmentation edge weight.
        chroma_weight: scale of chromaticity ``rgb / (r + g + b)`` in the colour features.
        intensity_weight: scale of intensity ``(r + g + b) / 3`` (colours in [0, 1]) in the colour features.
        convex_factor: multiplier of the normal term on convex edges (1 = no convexity prior).
        orient_normals: orient normals (needed for ``convex_factor`` to mean anything).
        fh_k: Felzenszwalb-Huttenlocher scale ``k`` (larger = bigger superpoints), in edge-weight units
            times voxels.
        fh_min_size: superpoints smaller than this many voxels are merged into a neighbour.
        merge_normal_weight: weight of the mean boundary normal term in the merge cost.
        merge_color_weight: weight of the mean boundary colour term in the merge cost.
        region_color_weight: weight of the distance of mean region colour features in the merge cost.
        merge_levels: merge costs at which the hierarchy is cut; the regions of every cut are proposals.
        score_cap: cost at which a region's persistence is capped (the score's scale).
        area_prior: area (m^2) at which the area factor of the score is 1/2; 0 disables it.
        min_points: proposals with fewer full-resolution points are dropped.
        dedupe_iou: proposals with IoU above this with a higher-scoring one are dropped.
        max_proposals: keep at most this many (highest score); ``None`` for all.
    """

    voxel_size: float = 0.025
    knn: int = 16
    graph_knn: int = 10
    max_edge_factor: float = 2.5
    normal_weight: float = 1.0
    chroma_weight: float = 3.0
    intensity_weight: float = 0.4
    convex_factor: float = 0.25
    orient_normals: bool = True
    fh_k: float = 2.0
    fh_min_size: int = 20
    merge_normal_weight: float = 0.1
    merge_color_weight: float = 1.0
    region_color_weight: float = 1.0
    merge_levels: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)
    score_cap: float = 1.0
    area_prior: float = 0.1
    min_points: int = 100
    dedupe_iou: float = 0.9
    max_proposals: int | None = 300

    def __post_init__(self) -> None:
        if self.voxel_size <= 0:
            raise ValueError(f"voxel_size must be > 0, got {self.voxel_size}")
        if self.knn < 3 or self.graph_knn < 1:
            raise ValueError("knn must be >= 3 and graph_knn >= 1")
        if not self.merge_levels:
            raise ValueError("merge_levels must not be empty")
        self.merge_levels = tuple(sorted(float(x) for x in self.merge_levels))
        if self.score_cap <= 0:
            raise ValueError("score_cap must be > 0")


# --------------------------------------------------------------------------------------------------
# Steps (module-level functions so that each can be tested on small arrays)
# --------------------------------------------------------------------------------------------------


@dataclass
class VoxelGrid:
    """A voxel-downsampled cloud.

    Attributes:
        xyz: (V, 3) float64 mean position of the points in each occupied voxel.
        rgb: (V, 3) float64 mean colour in [0, 1].
        counts: (V,) int64 points per voxel.
        inverse: (N,) int64 voxel of every input point.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    counts: np.ndarray
    inverse: np.ndarray


def voxelize(points: np.ndarray, colors: np.ndarray, voxel_size: float) -> VoxelGrid:
    """Average points and colours per ``voxel_size`` cube (one 1-D ``np.unique`` over packed keys)."""
    pts = np.asarray(points, dtype=np.float64)
    q = np.floor((pts - pts.min(axis=0)) / voxel_size).astype(np.int64)
    dims = q.max(axis=0) + 1
    # Pack the 3 integer coordinates into one int64 key: a 1-D unique is far faster than unique(axis=0).
    key = (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    v = counts.size
    xyz = np.stack([np.bincount(inverse, pts[:, d], minlength=v) for d in range(3)], axis=1) / counts[:, None]
    col = np.asarray(colors, dtype=np.float64) / 255.0
    rgb = np.stack([np.bincount(inverse, col[:, d], minlength=v) for d in range(3)], axis=1) / counts[:, None]
    return VoxelGrid(xyz, rgb, counts.astype(np.int64), inverse.astype(np.int64))


def pca_normals(xyz: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """(V, 3) unit normals: the smallest-eigenvalue eigenvector of each neighbourhood's covariance.

    ``nbr`` is (V, k) neighbour indices (each row may include the point itself). Unoriented.
    """
    nb = xyz[nbr]  # (V, k, 3)
    centred = nb - nb.mean(axis=1, keepdims=True)
    cov = np.einsum("vki,vkj->vij", centred, centred) / nbr.shape[1]
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, :, 0]


def orient_normals(xyz: np.ndarray, normals: np.ndarray, ei: np.ndarray, ej: np.ndarray,
                   viewpoints: np.ndarray | None = None) -> np.ndarray:
    """Flip normals so that they agree along each connected surface and face the scanner.

    Consistency: a minimum spanning tree of the graph with weights ``1 - |n_i . n_j|`` (plus a small
    constant so that zero-weight edges are kept) is traversed breadth-first and each normal takes the sign
    that agrees with its tree parent. The sign product along the root path is computed by pointer jumping,
    so the whole thing is vectorised. The MST prefers edges between nearly parallel normals, so the
    propagation goes around sharp folds through the smoothed normals near them.

    Facing: each connected component is then flipped as a whole so that most of its normals point towards
    the nearest viewpoint (the camera centres when known; otherwise the cloud's centre, which suits a room
    scanned from inside).
    """
    v = xyz.shape[0]
    n = normals.copy()
    if v == 0:
        return n
    if viewpoints is None or len(viewpoints) == 0:
        viewpoints = xyz.mean(axis=0, keepdims=True)
    w = 1.0 - np.abs(np.einsum("ij,ij->i", n[ei], n[ej])) + 1e-3
    graph = sp.coo_matrix((w, (ei, ej)), shape=(v, v)).tocsr()
    mst = minimum_spanning_tree(graph)
    ncomp, comp = connected_components(mst, directed=False)
    # One breadth-first traversal over all components: a virtual node ``v`` is linked to one root per
    # component (scipy's BFS costs O(V) per call, so one call per component would be quadratic).
    roots = np.unique(comp, return_index=True)[1]
    tree = sp.coo_matrix(mst)
    rows = np.concatenate([tree.row, tree.col, np.full(roots.size, v)])
    cols = np.concatenate([tree.col, tree.row, roots])
    tree = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(v + 1, v + 1))
    _, pred = breadth_first_order(tree, v, directed=True, return_predecessors=True)
    parent = pred[:v].astype(np.int64)
    parent[parent == v] = -1  # component roots
    has_parent = parent >= 0
    idx = np.arange(v)
    rel = np.ones(v, dtype=np.int8)
    dots = np.einsum("ij,ij->i", n[has_parent], n[parent[has_parent]])
    rel[has_parent] = np.where(dots < 0, -1, 1)
    # Pointer jumping: sign[i] becomes the product of ``rel`` over the path from i up to its root.
    sign = rel
    anc = np.where(has_parent, parent, idx)
    while np.any(anc[anc] != anc):
        sign, anc = sign * sign[anc], anc[anc]
    n *= sign[:, None]
    # Face the scanner per component (majority vote).
    _, nearest = cKDTree(np.asarray(viewpoints, dtype=np.float64)).query(xyz, k=1)
    to_view = np.asarray(viewpoints, dtype=np.float64)[nearest] - xyz
    facing = np.einsum("ij,ij->i", n, to_view) > 0
    votes = np.bincount(comp, weights=np.where(facing, 1.0, -1.0), minlength=ncomp)
    n *= np.where(votes[comp] < 0, -1.0, 1.0)[:, None]
    return n


@dataclass
class VoxelGraph:
    """Undirected kNN graph over voxels; every edge once with ``i < j``.

    Attributes:
        i, j: (E,) int64 endpoints.
        w_normal: (E,) float64 normal term ``1 - n_i . n_j`` (convex folds discounted), in [0, 2].
        w_color: (E,) float64 colour term (distance of :func:`color_features`).
        w: (E,) float64 the segmentation weight ``normal_weight * w_normal + w_color``.
    """

    i: np.ndarray
    j: np.ndarray
    w_normal: np.ndarray
    w_color: np.ndarray
    w: np.ndarray


def knn_edges(nbr: np.ndarray, dist: np.ndarray, graph_knn: int, max_len: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges ``(i, j)``, ``i < j``, from the first ``graph_knn`` non-self neighbours."""
    v = nbr.shape[0]
    cols = nbr[:, 1 : graph_knn + 1]
    d = dist[:, 1 : graph_knn + 1]
    src = np.broadcast_to(np.arange(v)[:, None], cols.shape)
    ok = (d <= max_len) & (cols < v) & (cols != src)
    a, b = src[ok], cols[ok]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo * np.int64(v) + hi)
    return key // v, key % v


def build_graph(grid: VoxelGrid, normals: np.ndarray, ei: np.ndarray, ej: np.ndarray,
                cfg: GeometricConfig) -> VoxelGraph:
    """Edge dissimilarities: normal term (convex folds discounted) plus colour distance."""
    ni, nj = normals[ei], normals[ej]
    w_n = np.clip(1.0 - np.einsum("ij,ij->i", ni, nj), 0.0, 2.0)
    if not cfg.orient_normals:
        # unoriented normals: only the angle between the lines is meaningful
        w_n = np.minimum(w_n, 2.0 - w_n)
    else:
        convex = np.einsum("ij,ij->i", ni - nj, grid.xyz[ei] - grid.xyz[ej]) > 0
        w_n = np.where(convex, w_n * cfg.convex_factor, w_n)
    feat = color_features(grid.rgb, cfg)
    w_c = np.linalg.norm(feat[ei] - feat[ej], axis=1)
    return VoxelGraph(ei, ej, w_n, w_c, cfg.normal_weight * w_n + w_c)


def color_features(rgb: np.ndarray, cfg: GeometricConfig) -> np.ndarray:
    """(V, 4) colour features whose Euclidean distance is the colour term of an edge weight.

    Chromaticity ``(r, g, b) / (r + g + b)`` (times ``chroma_weight``) does not change with shading, so the
    differently lit faces of one object look alike while a red box on a grey floor does not; intensity
    ``(r + g + b) / 3`` (times ``intensity_weight``) still separates white, grey and black. A small
    ``eps`` pulls the chromaticity of near-black colours to grey, where sensor noise would dominate it.
    """
    eps = 0.05
    total = rgb.sum(axis=1, keepdims=True)
    chroma = (rgb + eps) / (total + 3 * eps)
    return np.concatenate([chroma * cfg.chroma_weight, total / 3.0 * cfg.intensity_weight], axis=1)


def felzenszwalb(num_nodes: int, graph: VoxelGraph, k: float, min_size: int) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segmentation of a weighted graph; returns (V,) labels 0..S-1.

    Edges are visited in ascending weight with an array-based union-find (path halving, union by size).
    ``thr[root] = Int(C) + k / |C|`` is kept per component; since edges arrive sorted, the edge that joins two
    components is the new component's largest MST edge, i.e. its ``Int``. A second pass over the same sorted
    edges then merges components smaller than ``min_size`` (the paper's post-processing).
    """
    order = np.argsort(graph.w, kind="stable")
    ea = graph.i[order].tolist()
    eb = graph.j[order].tolist()
    ew = graph.w[order].tolist()
    parent = list(range(num_nodes))
    size = [1] * num_nodes
    thr = [float(k)] * num_nodes
    # The loop is plain Python on lists (faster than numpy scalar indexing): ~0.5 s per million edges.
    for a, b, w in zip(ea, eb, ew):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a == b or w > thr[a] or w > thr[b]:
            continue
        if size[a] < size[b]:
            a, b = b, a
        parent[b] = a
        size[a] += size[b]
        thr[a] = w + k / size[a]
    if min_size > 1:
        for a, b in zip(ea, eb):
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            while parent[b] != b:
                parent[b] = parent[parent[b]]
                b = parent[b]
            if a != b and (size[a] < min_size or size[b] < min_size):
                if size[a] < size[b]:
                    a, b = b, a
                parent[b] = a
                size[a] += size[b]
    roots = np.asarray(parent, dtype=np.int64)
    while True:  # full path compression, vectorised
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            break
        roots = nxt
    return np.unique(roots, return_inverse=True)[1].reshape(-1)


@dataclass
class Hierarchy:
    """Agglomerative merge tree over superpoints.

    Attributes:
        num_leaves: S, the number of superpoints (nodes ``0..S-1``).
        left, right: (S-1 at most,) child node ids of merge ``m``, which creates node ``S + m``.
        cost: (merges,) monotone non-decreasing merge cost of each merge.
    """

    num_leaves: int
    left: np.ndarray
    right: np.ndarray
    cost: np.ndarray

    @property
    def num_nodes(self) -> int:
        return self.num_leaves + self.cost.size

    def birth_death(self) -> tuple[np.ndarray, np.ndarray]:
        """(birth, death) cost per node; leaves are born at 0, never-merged nodes die at +inf."""
        birth = np.concatenate([np.zeros(self.num_leaves), self.cost])
        death = np.full(self.num_nodes, np.inf)
        death[self.left] = self.cost
        death[self.right] = self.cost
        return birth, death

    def cut(self, level: float) -> np.ndarray:
        """(S,) node id of the region each superpoint belongs to after all merges with cost <= level."""
        s = self.num_leaves
        m = int(np.searchsorted(self.cost, level, side="right"))
        # Parent pointers of the first m merges (others point to themselves), then pointer jumping.
        up = np.arange(self.num_nodes)
        up[self.left[:m]] = s + np.arange(m)
        up[self.right[:m]] = s + np.arange(m)
        while True:
            nxt = up[up]
            if np.array_equal(nxt, up):
                return up[:s]
            up = nxt


def agglomerate(labels: np.ndarray, grid: VoxelGrid, graph: VoxelGraph, features: np.ndarray,
                cfg: GeometricConfig, max_cost: float = math.inf) -> Hierarchy:
    """Merge adjacent superpoints cheapest-first (until the cheapest merge costs more than ``max_cost``).

    The cost of a pair of adjacent regions A, B is::

        merge_normal_weight * mean w_normal over the A-B boundary edges
        + merge_color_weight * mean w_color over the A-B boundary edges
        + region_color_weight * |mean feature(A) - mean feature(B)|      (point-weighted colour features)

    Boundary sums and counts are kept per pair and added up on merge, so each merge costs O(degree). A heap
    holds candidate pairs; entries whose endpoints were merged away are skipped when popped.
    """
    s = int(labels.max()) + 1 if labels.size else 0
    sa, sb = labels[graph.i], labels[graph.j]
    cross = sa != sb
    lo, hi = np.minimum(sa[cross], sb[cross]), np.maximum(sa[cross], sb[cross])
    ukey, inv = np.unique(lo * np.int64(s) + hi, return_inverse=True)
    inv = inv.reshape(-1)
    nsum = np.bincount(inv, weights=graph.w_normal[cross]).tolist()
    csum_e = np.bincount(inv, weights=graph.w_color[cross]).tolist()
    cnt = np.bincount(inv).astype(np.float64).tolist()
    pa, pb = (ukey // s).tolist(), (ukey % s).tolist()

    weight = grid.counts.astype(np.float64)
    size: list[float] = np.bincount(labels, weights=weight, minlength=s).tolist()
    fsum = np.stack([np.bincount(labels, weights=features[:, d] * weight, minlength=s)
                     for d in range(features.shape[1])], axis=1)
    feat: list[np.ndarray] = list(fsum)  # feature sums (point-weighted)
    a_n, a_c, a_r = cfg.merge_normal_weight, cfg.merge_color_weight, cfg.region_color_weight

    # boundary table: nbrs[a][b] is a shared [sum w_normal, sum w_color, count] list
    nbrs: list[dict[int, list[float]]] = [dict() for _ in range(s)]
    for a, b, e in zip(pa, pb, zip(nsum, csum_e, cnt)):
        nbrs[a][b] = nbrs[b][a] = list(e)

    def pair_cost(a: int, b: int, e: list[float]) -> float:
        df = feat[a] / size[a] - feat[b] / size[b]
        return (a_n * e[0] + a_c * e[1]) / e[2] + a_r * math.sqrt(float(df @ df))

    heap = [(pair_cost(a, b, nbrs[a][b]), a, b) for a, b in zip(pa, pb)]
    heapq.heapify(heap)
    alive = [True] * s
    left: list[int] = []
    right: list[int] = []
    costs: list[float] = []
    last = 0.0
    while heap:
        c, a, b = heapq.heappop(heap)
        if c > max_cost:
            break
        if not (alive[a] and alive[b]):
            continue
        new = len(alive)
        alive[a] = alive[b] = False
        alive.append(True)
        last = max(last, c)  # monotone: a cut at any level is then a partition
        left.append(a)
        right.append(b)
        costs.append(last)
        size.append(size[a] + size[b])
        feat.append(feat[a] + feat[b])
        # merge the boundary tables (small into large)
        na, nb = nbrs[a], nbrs[b]
        if len(na) < len(nb):
            na, nb = nb, na
        for d, e in nb.items():
            if d in na:
                t = na[d]
                t[0] += e[0]
                t[1] += e[1]
                t[2] += e[2]
            else:
                na[d] = e
        na.pop(a, None)
        na.pop(b, None)
        nbrs.append(na)
        nbrs[a] = nbrs[b] = {}
        for d, e in na.items():
            t = nbrs[d]
            t.pop(a, None)
            t.pop(b, None)
            t[new] = e  # the same list object on both sides
            heapq.heappush(heap, (pair_cost(new, d, e), new, d))
    return Hierarchy(s, np.asarray(left, np.int64), np.asarray(right, np.int64), np.asarray(costs, np.float64))


class GeometricProposer:
    """Class-agnostic proposals from geometry and colour, no learned weights (see the module docstring)."""

    name = "geometric"

    def __init__(self, config: GeometricConfig | None = None):
        self.config = config or GeometricConfig()

    def propose(self, scan: "Scan") -> MaskSet:
        masks, _ = self.propose_with_stats(scan)
        return masks

    def propose_with_stats(self, scan: "Scan") -> tuple[MaskSet, dict[str, float]]:
        """``propose`` plus a dict of stage timings (seconds) and sizes, for tuning and benchmarks."""
        viewpoints = None
        if scan.frames:
            viewpoints = np.stack([f.pose_c2w[:3, 3] for f in scan.frames]).astype(np.float64)
        return propose_points(scan.points, scan.colors, self.config, viewpoints)


def region_scores(persistence: np.ndarray, area: np.ndarray, cfg: GeometricConfig) -> np.ndarray:
    """Scores in [0, 1]: persistence times the area prior ``area / (area + area_prior)``."""
    if cfg.area_prior <= 0:
        return persistence
    return persistence * area / (area + cfg.area_prior)


def propose_points(points: np.ndarray, colors: np.ndarray, cfg: GeometricConfig,
                   viewpoints: np.ndarray | None = None,
                   debug: dict | None = None) -> tuple[MaskSet, dict[str, float]]:
    """The whole proposer on bare arrays: (N, 3) points, (N, 3) uint8 colours, optional (F, 3) viewpoints.

    Returns the masks and a dict of stage timings (``t_*``, seconds) and sizes. When ``debug`` is a dict it
    receives per-mask arrays aligned with the result: ``node``, ``birth``, ``death``, ``persistence``,
    ``area`` (m^2).
    """
    stats: dict[str, float] = {}
    n_points = int(points.shape[0])
    t0 = time.perf_counter()
    if n_points == 0:
        return MaskSet.empty(0), stats

    grid = voxelize(points, colors, cfg.voxel_size)
    v = grid.xyz.shape[0]
    stats["voxels"] = v
    t1 = time.perf_counter()
    stats["t_voxelize"] = t1 - t0
    if v < 4:
        return MaskSet.empty(n_points), stats

    k = min(max(cfg.knn, cfg.graph_knn + 1), v)
    dist, nbr = cKDTree(grid.xyz).query(grid.xyz, k=k, workers=-1)
    normals = pca_normals(grid.xyz, nbr[:, : min(cfg.knn, k)])
    ei, ej = knn_edges(nbr, dist, min(cfg.graph_knn, k - 1), cfg.max_edge_factor * cfg.voxel_size)
    if cfg.orient_normals:
        normals = orient_normals(grid.xyz, normals, ei, ej, viewpoints)
    graph = build_graph(grid, normals, ei, ej, cfg)
    stats["edges"] = int(ei.size)
    t2 = time.perf_counter()
    stats["t_graph"] = t2 - t1

    labels = felzenszwalb(v, graph, cfg.fh_k, cfg.fh_min_size)
    s = int(labels.max()) + 1
    stats["superpoints"] = s
    t3 = time.perf_counter()
    stats["t_superpoints"] = t3 - t2

    tree = agglomerate(labels, grid, graph, color_features(grid.rgb, cfg), cfg)
    birth, death = tree.birth_death()
    # Regions alive at any cut level, each once: (node, superpoint) pairs made unique.
    pairs = np.unique(np.concatenate([tree.cut(lv) * np.int64(s) + np.arange(s) for lv in cfg.merge_levels]))
    node, sup = pairs // s, pairs % s
    nodes, row = np.unique(node, return_inverse=True)
    member = sp.csr_matrix((np.ones(sup.size, np.float32), (row.reshape(-1), sup)), shape=(nodes.size, s))
    # superpoint -> full-resolution points; one sparse product maps every region back at once
    seg_of_point = labels[grid.inverse]
    sup_points = sp.csr_matrix((np.ones(n_points, np.float32), (seg_of_point, np.arange(n_points))),
                               shape=(s, n_points))
    region_points = (member @ sup_points).tocsr()
    region_points.sort_indices()
    # region area ~ occupied voxels x voxel face (the surfaces are 2-D sheets in the grid)
    area = member @ np.bincount(labels, minlength=s).astype(np.float64) * cfg.voxel_size**2
    persistence = np.clip((np.minimum(death[nodes], cfg.score_cap) - birth[nodes]) / cfg.score_cap, 0.0, 1.0)
    scores = region_scores(persistence, area, cfg)
    masks = MaskSet(region_points.indices, region_points.indptr, scores, n_points)
    stats["regions"] = len(masks)
    keep = np.flatnonzero(masks.sizes >= cfg.min_points)
    keep = keep[masks.select(keep).dedupe_indices(cfg.dedupe_iou)]
    keep = keep[np.argsort(-masks.scores[keep], kind="stable")]
    if cfg.max_proposals is not None:
        keep = keep[: cfg.max_proposals]
    masks = masks.select(keep)
    if debug is not None:
        debug.update(node=nodes[keep], birth=birth[nodes[keep]], death=death[nodes[keep]],
                     persistence=persistence[keep], area=area[keep])
    t4 = time.perf_counter()
    stats["t_hierarchy"] = t4 - t3
    stats["proposals"] = len(masks)
    stats["t_total"] = t4 - t0
    log.debug("geometric proposer: %s", stats)
    return masks, stats
