"""Weight-free class-agnostic instance proposals for real captures, from geometry and colour.

Real scans are noisy, unevenly dense and dull-coloured; their objects touch each other and stand on floors
and against walls. Segmenting them as one graph (the previous version of this module) joined objects to
the floor and walls and split them wherever the colour changed. So the proposer works in three stages:
**architecture first** (planes), **objects from what remains** (a graph hierarchy), **scored masks**.

**Scale.** Every length derives from the cloud itself: the voxel edge ``h`` starts at ``spacing_factor``
times the median nearest-neighbour distance (:func:`point_spacing`). A raw depth-camera cloud is sampled
finer than its noise (a Kinect table top: 1.4 mm spacing, millimetres of depth noise), which makes normals
noise; so while the flattest quarter of the surfaces is still rough (:func:`surface_noise` above
``max_noise``) and coarsening smooths it, ``h`` grows by sqrt(2) (meshes and synthetic scans are not
touched; thick fused surfaces, which coarsening does not smooth, are not coarsened either). Only then is
``h`` grown if more than ``max_voxels`` voxels would be occupied, a bound on time (it must not decide the
scale: at 60k voxels it coarsened a 225k-point synthetic room to 6 cm voxels, 2.2x its spacing, and merged
its small objects). All other lengths are multiples of ``h`` and all areas counts of voxels, so one setting
serves a 1 cm ScanNet mesh, the same room subsampled to 3.5 cm and a 1.5 mm depth-camera capture.

1. **Voxel grid** (:mod:`scenegrep.indexer.voxels`): one node per occupied voxel with the mean xyz and
   colour of its points; the point -> voxel map is kept to map regions back.
2. **Normals and curvature** by PCA over each voxel's ``knn`` nearest voxels, oriented consistently per
   surface (minimum spanning tree propagation, Hoppe et al. 1992) and towards the scanner
   (:func:`orient_normals`) so that convex and concave folds can be told apart.
3. **Planes and gravity** (:mod:`scenegrep.indexer.proposals.planes`): normal-based region growing (one
   ``connected_components`` over the edges between flat, parallel, coplanar neighbours), a robust plane
   fit per region, then the up direction: from the camera poses when the scan has frames (RGB-D captures
   are taken with upright cameras, so up is the direction perpendicular to every camera's x axis:
   :func:`~scenegrep.indexer.proposals.planes.camera_up`; the support is then a bounding plane facing that
   way, or none), else from the data (the largest plane with nearly the whole scan on one side: a room's
   floor, the table under table-top objects; z-like normals are only a tie-breaker, as camera-coordinate
   clouds have y down). Guessing from the data fails where a wall bounds the scan better than the floor
   does: in a shelf bin a side wall became the "floor" and the opposite wall, with an object leaning on
   it, a "ceiling". Floor, walls and ceiling (coplanar pieces merged; each must bound the scan) become fixed
   regions, proposed as masks of their own; their voxels leave the object graph, which is what separates
   a chair from the floor and a picture from the wall.
4. **Object graph** over the remaining voxels: the ``graph_knn`` nearest voxels closer than
   ``max_edge_factor * h``, with a dissimilarity (0 = same surface)::

       w = normal_weight * w_normal + w_color
       w_normal = (1 - n_i . n_j) * f                               in [0, 2]
       w_color  = |F(c_i) - F(c_j)|,  F(c) = (chroma_weight * c / (r + g + b), intensity_weight * (r + g + b) / 3)

   with ``f = convex_factor`` on convex edges (``(n_i - n_j) . (p_i - p_j) > 0``): faces of one object meet
   at convex folds, an object meets its support at a concave one (the ScanNet segmentator's rule). Colour
   separates chromaticity, which shading does not change, from intensity, which it does; its weights are
   low because real colours are dull and textured (printed boxes, noise), and colour is a weaker cue than
   geometry there.
5. **Superpoints** by Felzenszwalb-Huttenlocher graph segmentation (``fh_k``; components under
   ``fh_min_size`` voxels are merged into their cheapest neighbour).
6. **Hierarchy.** Adjacent superpoints merge agglomeratively, cheapest pair first, with the cost::

       cost(A, B) = mean over the A-B boundary edges of
                        (merge_normal_weight * w_normal + merge_color_weight * w_color)
                    + region_color_weight * |mean F(A) - mean F(B)|

   (average linkage over the shared boundary plus a region colour term), made monotone so that a cut at
   any level is a partition. Regions never merge across a gap, so the top of the hierarchy is the set of
   connected pieces left once the architecture is gone: separate objects come out whole.
7. **Proposals** are the regions of the partitions at every cost in ``merge_levels`` plus the
   architecture, mapped back to full-resolution points (one sparse product); masks under ``min_points``
   points are dropped, then near-duplicates (IoU > ``dedupe_iou``).
8. **Colour splits** (:mod:`scenegrep.indexer.proposals.colour`): the hierarchy cannot separate two
   differently coloured things lying flush (a cyan print on a white box, a red bag and the white straws in
   it): colour is a weak term of its weights, on purpose (textured boxes). So colour is used a second way,
   as *extra candidates*: each object region (the ``max_regions`` best, of at least ``min_voxels``
   voxels) is clustered into two colours in CIELAB, lightness damped (shading), and where the two are
   clearly apart (Ashman's D >= 2 along the line joining the means, a documented bimodality test, and
   a minimum contrast) each colour's connected pieces over the proposer's own graph, smoothed by majority
   vote, become masks. They score below every hierarchy mask, so AP's ranking of the hierarchy is kept
   and they can only add recall: on labelfusion-shelf the box's best IoU rose from 0.511 to 0.836, and no
   AP, AP50 or AP25 of ScanNet scene0451_01 (full, 20 % subsampled), the mOSD table tops or the synthetic
   rooms went down (BENCHMARKS.md). The shelf's straws stay at 0.358: their labelled points' colours
   range from red to near black, so no colour cluster of their regions beats 0.39.

**Scores** in [0, 1] decide AP's ranking. A region's *persistence* in the hierarchy: born at the cost of
the merge that formed it (0 for superpoints and planes), dead at the cost at which it joins something
bigger; ``persistence = (min(death, score_cap) - birth) / score_cap``. Whole objects are formed cheaply and
survive long; fragments and unions die young. It is multiplied by a size prior ``voxels / (voxels +
area_prior)`` (small leftovers are more often parts than objects) and by ``(1 - t) ** touch_power``, ``t``
the share of the region's voxels that touch floor, wall or ceiling voxels: strips of architecture the plane
fit missed hug a removed plane along their whole length, an object only along its base.

Tuning used real and synthetic scans together (``benchmarks/bench_masks.py``; per-scene numbers in
BENCHMARKS.md): ScanNet scene0451_01 at full density and subsampled, the two mOSD table tops (camera
coordinates), and the seeded synthetic ``small`` rooms.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree
from scipy.spatial import cKDTree

from scenegrep.indexer.proposals.base import MaskSet
from scenegrep.indexer.proposals.colour import ColourSplitConfig, lab_features, split_region
from scenegrep.indexer.proposals.planes import PlaneConfig, camera_up, classify_planes, estimate_up, grow_planes
from scenegrep.indexer.voxels import group_mean, voxel_index

if TYPE_CHECKING:
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)


@dataclass
class GeometricConfig:
    """Settings of :class:`GeometricProposer`. Lengths are in voxel edges ``h``, areas in voxels (``h^2``),
    so the same settings work at every point density (see the module docstring).

    Attributes:
        voxel_size: fixed voxel edge in metres; ``None`` (default) derives it from the cloud as
            ``spacing_factor x`` the median nearest-neighbour distance.
        spacing_factor: voxel edge in units of the cloud's median point spacing.
        max_voxels: the voxel edge grows (by the square root of the excess) until at most this many voxels
            are occupied, which bounds the time on very large or very dense clouds.
        max_noise: while :func:`surface_noise` (the flattest quarter's PCA surface variation) is above
            this, the voxel edge grows by sqrt(2) (at most ``noise_steps`` times), as long as each step
            lowers the noise below ``noise_gain`` times its previous value; ``None`` disables it.
        noise_steps: most sqrt(2) steps of the noise rule.
        noise_gain: a step must divide the noise by at least ``1 / noise_gain`` to be taken.
        knn: neighbours (voxels) for the PCA normal of each voxel.
        graph_knn: neighbours per voxel in the segmentation graph (edges are made undirected).
        max_edge_factor: graph edges longer than ``max_edge_factor * h`` are dropped, so separate
            objects a few voxels apart are not connected at all.
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
        area_prior: region size (voxels) at which the size factor of the score is 1/2; 0 disables it.
        planes: find planes and take floors, walls and ceilings out before segmenting objects.
        camera_up: when the scan has camera poses, take gravity from them (:func:`~scenegrep.indexer.
            proposals.planes.camera_up`: upright cameras) instead of guessing it from the planes.
        plane: settings of the plane stage (:class:`~scenegrep.indexer.proposals.planes.PlaneConfig`).
        colour: colour splits, extra candidates for clearly two-coloured regions
            (:class:`~scenegrep.indexer.proposals.colour.ColourSplitConfig`).
        plane_edge_weight: added to the normal term of edges that leave a non-architectural plane (a table
            top, a seat), so objects standing on it separate before the plane joins its own legs.
        touch_power: a region's score is multiplied by ``(1 - t) ** touch_power``, ``t`` the share of its
            voxels next to floor/wall/ceiling voxels (leftover strips of architecture score low).
        min_points: proposals with fewer full-resolution points are dropped.
        dedupe_iou: proposals with IoU above this with a higher-scoring one are dropped.
        max_proposals: keep at most this many (highest score); ``None`` for all.
    """

    voxel_size: float | None = None
    spacing_factor: float = 1.6
    max_voxels: int = 200000
    max_noise: float | None = 0.008
    noise_steps: int = 4
    noise_gain: float = 0.8
    knn: int = 16
    graph_knn: int = 10
    max_edge_factor: float = 2.5
    normal_weight: float = 1.0
    chroma_weight: float = 1.75
    intensity_weight: float = 0.22
    convex_factor: float = 0.25
    orient_normals: bool = True
    fh_k: float = 0.5
    fh_min_size: int = 20
    merge_normal_weight: float = 0.1
    merge_color_weight: float = 1.0
    region_color_weight: float = 0.6
    merge_levels: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3)
    score_cap: float = 1.0
    area_prior: float = 160.0
    planes: bool = True
    camera_up: bool = True
    plane: PlaneConfig = field(default_factory=PlaneConfig)
    colour: ColourSplitConfig = field(default_factory=ColourSplitConfig)
    plane_edge_weight: float = 0.0
    touch_power: float = 4.0
    min_points: int = 100
    dedupe_iou: float = 0.9
    max_proposals: int | None = 300

    def __post_init__(self) -> None:
        if self.voxel_size is not None and not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0 (or None to derive it), got {self.voxel_size}")
        if not self.spacing_factor > 0 or self.max_voxels < 1:
            raise ValueError("spacing_factor must be > 0 and max_voxels >= 1")
        if self.knn < 3 or self.graph_knn < 1:
            raise ValueError("knn must be >= 3 and graph_knn >= 1")
        if not self.merge_levels:
            raise ValueError("merge_levels must not be empty")
        self.merge_levels = tuple(sorted(float(x) for x in self.merge_levels))
        if self.score_cap <= 0:
            raise ValueError("score_cap must be > 0")
        if isinstance(self.plane, dict):
            self.plane = PlaneConfig(**self.plane)
        if isinstance(self.colour, dict):
            self.colour = ColourSplitConfig(**self.colour)


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
    """Average points and colours per ``voxel_size`` cube (the shared grid of :mod:`scenegrep.indexer.voxels`)."""
    pts = np.asarray(points, dtype=np.float64)
    index = voxel_index(pts, voxel_size, origin=pts.min(axis=0))
    xyz = group_mean(index, pts)
    rgb = group_mean(index, np.asarray(colors, dtype=np.float64) / 255.0)
    return VoxelGrid(xyz, rgb, index.counts, index.inverse)


def point_spacing(points: np.ndarray, sample: int = 20000, seed: int = 0) -> float:
    """Median distance from a point to its nearest neighbour (on a seeded sample of at most ``sample``
    points, against the whole cloud): the scale every other length of the proposer derives from."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[0] < 2:
        return 0.0
    q = pts
    if pts.shape[0] > sample:
        q = pts[np.random.default_rng(seed).choice(pts.shape[0], sample, replace=False)]
    d, _ = cKDTree(pts).query(q, k=2, workers=-1)
    pos = d[:, 1][d[:, 1] > 0]  # exact duplicates say nothing about spacing
    return float(np.median(pos)) if pos.size else 0.0


def pca_normals(xyz: np.ndarray, nbr: np.ndarray, return_curvature: bool = False):
    """(V, 3) unit normals: the smallest-eigenvalue eigenvector of each neighbourhood's covariance.

    ``nbr`` is (V, k) neighbour indices (each row may include the point itself). Unoriented. With
    ``return_curvature`` also the (V,) surface variation ``l0 / (l0 + l1 + l2)`` (0 on a plane, 1/3 for
    isotropic scatter).
    """
    nb = xyz[nbr]  # (V, k, 3)
    centred = nb - nb.mean(axis=1, keepdims=True)
    cov = np.einsum("vki,vkj->vij", centred, centred) / nbr.shape[1]
    vals, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    if not return_curvature:
        return vecs[:, :, 0]
    curvature = np.clip(vals[:, 0], 0, None) / np.maximum(np.clip(vals, 0, None).sum(axis=1), 1e-30)
    return vecs[:, :, 0], curvature


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

    def identity(self) -> dict:
        """The settings, recorded in the catalog with the masks they made."""
        return {"config": asdict(self.config)}

    def propose(self, scan: "Scan") -> MaskSet:
        masks, _ = self.propose_with_stats(scan)
        return masks

    def propose_with_stats(self, scan: "Scan", debug: dict | None = None) -> tuple[MaskSet, dict[str, float]]:
        """``propose`` plus a dict of stage timings (seconds) and sizes, for tuning and benchmarks;
        ``debug``: filled with per-mask arrays and the up direction (:func:`propose_points`)."""
        viewpoints = up_prior = None
        if scan.frames:
            poses = np.stack([f.pose_c2w for f in scan.frames]).astype(np.float64)
            viewpoints = poses[:, :3, 3]
            if self.config.camera_up:
                up_prior = camera_up(poses[:, :3, :3])
        return propose_points(scan.points, scan.colors, self.config, viewpoints, debug, up_prior=up_prior)


def region_scores(persistence: np.ndarray, voxels: np.ndarray, cfg: GeometricConfig) -> np.ndarray:
    """Scores in [0, 1]: persistence times the size prior ``voxels / (voxels + area_prior)``."""
    if cfg.area_prior <= 0:
        return persistence
    return persistence * voxels / (voxels + cfg.area_prior)


def surface_noise(points: np.ndarray, h: float, knn: int = 16, sample: int = 4000, seed: int = 0) -> float:
    """Noise level of the cloud's surfaces at voxel edge ``h``: the 25th percentile of the PCA surface
    variation ``l0 / (l0 + l1 + l2)`` over the ``knn`` nearest voxels of a seeded sample of voxels.

    The flattest quarter of a scan is walls, floors, table tops and box faces, where the variation is
    sensor noise and not shape: ~0 on a mesh or a synthetic scan, ~0.02 on a single Kinect frame at
    1.4 x its spacing, ~0.06 on frames fused with pose error.
    """
    pts = np.asarray(points, dtype=np.float64)
    xyz = group_mean(voxel_index(pts, h, origin=pts.min(axis=0)), pts)
    if xyz.shape[0] <= knn:
        return 0.0
    q = xyz
    if xyz.shape[0] > sample:
        q = xyz[np.random.default_rng(seed).choice(xyz.shape[0], sample, replace=False)]
    _, nbr = cKDTree(xyz).query(q, k=knn, workers=-1)
    nb = xyz[nbr]
    centred = nb - nb.mean(axis=1, keepdims=True)
    vals = np.clip(np.linalg.eigvalsh(np.einsum("vki,vkj->vij", centred, centred)), 0, None)
    return float(np.percentile(vals[:, 0] / np.maximum(vals.sum(axis=1), 1e-30), 25))


def choose_voxel_size(points: np.ndarray, cfg: GeometricConfig) -> float:
    """The voxel edge ``h``: ``cfg.voxel_size`` if set, else ``spacing_factor x`` the median point spacing,
    coarsened while the surfaces are noisier than ``max_noise`` and coarsening smooths them (a depth
    camera's raw cloud: its spacing is finer than its noise), then grown until at most ``max_voxels``
    voxels are occupied (time bound)."""
    if cfg.voxel_size is not None:
        return float(cfg.voxel_size)
    pts = np.asarray(points, dtype=np.float64)
    spacing = point_spacing(pts)
    if not spacing > 0:  # all points coincide: any positive edge gives one voxel
        return 1.0
    h = cfg.spacing_factor * spacing
    if cfg.max_noise is not None:
        noise = surface_noise(pts, h, cfg.knn)
        for _ in range(cfg.noise_steps):
            if noise <= cfg.max_noise:
                break
            coarser = surface_noise(pts, h * math.sqrt(2), cfg.knn)
            # Noise averages out with the voxel edge; thick, fused surfaces (pose error) do not: there a
            # coarser grid only loses detail.
            if coarser > cfg.noise_gain * noise:
                break
            h, noise = h * math.sqrt(2), coarser
    for _ in range(4):
        v = len(voxel_index(pts, h, origin=pts.min(axis=0)))
        if v <= cfg.max_voxels:
            break
        h *= math.sqrt(v / cfg.max_voxels) * 1.02
    return h


def propose_points(points: np.ndarray, colors: np.ndarray, cfg: GeometricConfig,
                   viewpoints: np.ndarray | None = None,
                   debug: dict | None = None, *,
                   up_prior: np.ndarray | None = None) -> tuple[MaskSet, dict[str, float]]:
    """The whole proposer on bare arrays: (N, 3) points, (N, 3) uint8 colours, optional (F, 3) viewpoints
    and optional (3,) gravity prior ``up_prior`` (:func:`~scenegrep.indexer.proposals.planes.camera_up` of
    the scan's cameras; without it gravity is estimated from the planes).

    Returns the masks and a dict of stage timings (``t_*``, seconds) and sizes. When ``debug`` is a dict it
    receives per-mask arrays aligned with the result: ``node``, ``birth``, ``death``, ``persistence``,
    ``area`` (voxels), ``kind`` (plane kind or "object"), plus ``voxel_size``, ``up`` and
    ``point_superpoint`` (N,) (each point's superpoint; architecture instances are superpoints too).
    """
    stats: dict[str, float] = {}
    n_points = int(points.shape[0])
    t0 = time.perf_counter()
    if n_points == 0:
        return MaskSet.empty(0), stats

    h = choose_voxel_size(points, cfg)
    grid = voxelize(points, colors, h)
    v = grid.xyz.shape[0]
    stats["voxel_size"] = h
    stats["voxels"] = v
    t1 = time.perf_counter()
    stats["t_voxelize"] = t1 - t0
    if v < 4:
        return MaskSet.empty(n_points), stats

    k = min(max(cfg.knn, cfg.graph_knn + 1), v)
    dist, nbr = cKDTree(grid.xyz).query(grid.xyz, k=k, workers=-1)
    normals, curvature = pca_normals(grid.xyz, nbr[:, : min(cfg.knn, k)], return_curvature=True)
    ei, ej = knn_edges(nbr, dist, min(cfg.graph_knn, k - 1), cfg.max_edge_factor * h)
    if cfg.orient_normals:
        normals = orient_normals(grid.xyz, normals, ei, ej, viewpoints)
    graph = build_graph(grid, normals, ei, ej, cfg)
    stats["edges"] = int(ei.size)
    t2 = time.perf_counter()
    stats["t_graph"] = t2 - t1

    # Planes: architecture (floor, walls, ceiling) becomes fixed regions; other planes only weigh edges.
    arch_id = np.full(v, -1, np.int64)
    arch_kinds: list[str] = []
    up = None
    if cfg.planes:
        planes = grow_planes(grid.xyz, normals, curvature, ei, ej, h, cfg.plane)
        up, support = estimate_up(planes, cfg.plane, up_prior)
        arch = classify_planes(planes, grid.xyz, up, support, h, cfg.plane)
        for a_i, pl in enumerate(arch):
            arch_id[pl.voxels] = a_i
            arch_kinds.append(pl.kind)
        if cfg.plane_edge_weight > 0:
            other = np.full(v, -1, np.int64)
            for p_i, pl in enumerate(planes):
                if pl.kind == "other":
                    other[pl.voxels] = p_i
            leave = (other[graph.i] != other[graph.j]) & ((other[graph.i] >= 0) | (other[graph.j] >= 0))
            bump = np.where(leave, cfg.plane_edge_weight, 0.0)
            graph = VoxelGraph(graph.i, graph.j, graph.w_normal + bump, graph.w_color,
                               graph.w + cfg.normal_weight * bump)
        stats["planes"] = len(planes)
        stats["architecture"] = len(arch)
    is_arch = arch_id >= 0
    keep_e = ~(is_arch[graph.i] | is_arch[graph.j])
    obj_graph = VoxelGraph(graph.i[keep_e], graph.j[keep_e], graph.w_normal[keep_e], graph.w_color[keep_e],
                           graph.w[keep_e])
    t3 = time.perf_counter()
    stats["t_planes"] = t3 - t2

    fh = felzenszwalb(v, obj_graph, cfg.fh_k, cfg.fh_min_size)
    labels = np.empty(v, np.int64)
    n_obj = 0
    if (~is_arch).any():
        _, inv = np.unique(fh[~is_arch], return_inverse=True)
        labels[~is_arch] = inv.reshape(-1)
        n_obj = int(inv.max()) + 1
    labels[is_arch] = n_obj + arch_id[is_arch]
    s = n_obj + len(arch_kinds)
    stats["superpoints"] = s
    t4 = time.perf_counter()
    stats["t_superpoints"] = t4 - t3

    tree = agglomerate(labels, grid, obj_graph, color_features(grid.rgb, cfg), cfg)
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
    area = member @ np.bincount(labels, minlength=s).astype(np.float64)
    persistence = np.clip((np.minimum(death[nodes], cfg.score_cap) - birth[nodes]) / cfg.score_cap, 0.0, 1.0)
    # Leftovers of architecture (a strip of table edge the plane fit missed) lie along a removed plane:
    # the share of a region's voxels that touch architecture lowers its score.
    touch = np.zeros(v)
    cut = is_arch[graph.i] != is_arch[graph.j]
    touch[graph.i[cut & ~is_arch[graph.i]]] = 1.0
    touch[graph.j[cut & ~is_arch[graph.j]]] = 1.0
    touch_frac = (member @ np.bincount(labels, weights=touch, minlength=s)) / np.maximum(area, 1)
    scores = region_scores(persistence, area, cfg) * (1.0 - touch_frac) ** cfg.touch_power
    kind = np.array(["object"] * n_obj + arch_kinds + ["object"] * (tree.num_nodes - s), dtype=object)[nodes]
    colour_part = np.zeros(nodes.size, bool)
    t_colour = time.perf_counter()
    if cfg.colour.enabled:
        # Two-coloured object regions add their colour parts as extra candidates, scored below them.
        region_vox = (member @ sp.csr_matrix((np.ones(v, np.float32), (labels, np.arange(v))), shape=(s, v))).tocsr()
        adj = sp.csr_matrix((np.ones(2 * obj_graph.i.size, np.float32),
                             (np.r_[obj_graph.i, obj_graph.j], np.r_[obj_graph.j, obj_graph.i])), shape=(v, v))
        lab = lab_features(grid.rgb, cfg.colour)
        tested = np.flatnonzero((kind == "object") & (area >= cfg.colour.min_voxels))
        tested = tested[np.argsort(-scores[tested], kind="stable")][: cfg.colour.max_regions]
        parent, part_vox = [], []
        for r in tested:
            vox = region_vox.indices[region_vox.indptr[r]:region_vox.indptr[r + 1]].astype(np.int64)
            for part in split_region(vox, lab, grid.counts, adj, cfg.colour):
                parent.append(r)
                part_vox.append(part)
        if part_vox:
            parent_a = np.asarray(parent, np.int64)
            rows = np.repeat(np.arange(len(part_vox)), [p.size for p in part_vox])
            pv = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, np.concatenate(part_vox))),
                               shape=(len(part_vox), v))
            vox_points = sp.csr_matrix((np.ones(n_points, np.float32), (grid.inverse, np.arange(n_points))),
                                       shape=(v, n_points))
            part_points = (pv @ vox_points).tocsr()
            part_points.sort_indices()
            region_sizes = np.diff(region_points.indptr)
            share = np.diff(part_points.indptr) / np.maximum(region_sizes[parent_a], 1)
            region_points = sp.vstack([region_points, part_points]).tocsr()
            # Below every hierarchy mask (AP's ranking of those is unchanged, the parts only add recall),
            # ordered among themselves by their region's score and their share of it.
            sized = region_sizes >= cfg.min_points
            floor = float(scores[sized].min()) if sized.any() else 0.0
            scores = np.r_[scores, floor * scores[parent_a] * share]
            rows_of = np.r_[np.arange(nodes.size), parent_a]  # each part carries its region's node and kind
            nodes, persistence, kind = nodes[rows_of], persistence[rows_of], kind[rows_of]
            area = np.r_[area, np.diff(pv.indptr).astype(np.float64)]
            colour_part = np.r_[colour_part, np.ones(len(part_vox), bool)]
        stats["colour_tested"] = int(tested.size)
        stats["colour_parts"] = len(part_vox)
    stats["t_colour"] = time.perf_counter() - t_colour
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
                     persistence=persistence[keep], area=area[keep], kind=kind[keep],
                     colour_part=colour_part[keep], voxel_size=h, up=up, point_superpoint=seg_of_point)
    t5 = time.perf_counter()
    stats["t_hierarchy"] = t5 - t4
    stats["proposals"] = len(masks)
    stats["t_total"] = t5 - t0
    log.debug("geometric proposer: %s", stats)
    return masks, stats
