"""Mask3D / OpenMask3D post-processing: last-decoder outputs -> class-agnostic sparse masks.

Inputs are the network's last decoder outputs for one scene: ``pred_logits`` (Q, C + 1) class logits
(last column = no-object) and ``pred_masks`` (V, Q) voxel mask logits, plus ``raw_coordinates`` (V, 3)
(xyz of each voxel's first point) and ``inverse_map`` (P,) (voxel row of every point).

Common steps, as in both original ``eval_instance_step`` functions:

1. Class probabilities: softmax over the C + 1 logits, the no-object column dropped.
2. Candidates ("parts"): with DBSCAN, each query's mask (voxels with logit > 0) is split into its
   clusters, numbered by their smallest voxel row (sklearn's order); queries with an empty mask give
   none. Without DBSCAN every query is one candidate, even an empty one.
3. Mask score of a part: mean sigmoid of its logits, ``sum(sigmoid) / (count + 1e-6)`` in float32 at voxel
   level (Mask3D's ``get_mask_and_scores``); entry score = class probability x mask score.

Modes (:class:`PostprocessConfig`):

* ``"default"`` (the project's): every part once, with its best class; identical masks (same point set)
  are stored once, with the highest score. Nothing is filtered by class (walls and floors are kept).
* ``"openmask3d"``: OpenMask3D's ``get_class_agn_mask``: top-k over the flattened (part, class)
  probabilities with k = number of parts, then sorted by entry score. One mask can appear several times
  (with different classes) and others vanish; repeats collapse to one stored mask (highest score).
* ``"mask3d"``: Mask3D's ``get_mask_and_scores`` with ``topk_per_image = topk`` (clamped, with a log line,
  where the original would crash because there are fewer candidates), same collapsing.

DBSCAN with ``min_samples = 1`` makes every point a core point, so its clusters are the connected
components of the graph "|xi - xj| <= eps"; :class:`EpsComponents` computes them exactly (the float64
test sklearn's KD-tree applies) with bounded memory, where sklearn materialises every neighbourhood
(millions of pairs per query at eps = 0.95 m on 2 cm voxels).

Scores are bit-identical to the original code where it is cheap to be: mask scores are computed on dense
(V, columns) float32 blocks laid out like the original's ``mask_pred[:, topk_indices]``; torch's float32
sums and sigmoids depend on that layout (and on the CPU's vector width), so when a scene needs more than
one block (V x k > :data:`SCORE_BLOCK_ELEMENTS`) the last bits can differ from the original's.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from scenegrep.indexer.proposals.base import MaskSet

log = logging.getLogger(__name__)

MODES = ("default", "openmask3d", "mask3d")
#: Most elements of one dense float32 (voxels x columns) block used for mask scores (16 MiB).
SCORE_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PostprocessConfig:
    """How to turn decoder outputs into masks.

    Attributes:
        mode: "default", "openmask3d" or "mask3d" (see the module doc).
        topk: Mask3D's ``topk_per_image`` (mode "mask3d" only); -1 means "number of candidates" as in Mask3D.
        dbscan: split each query mask into its connected parts (OpenMask3D always does; Mask3D's
            ``use_dbscan``).
        dbscan_eps: DBSCAN radius in the units of ``raw_coordinates`` (metres).
        dbscan_min_samples: DBSCAN ``min_samples``; 1 (both originals' setting) uses the exact fast path,
            larger values run sklearn's DBSCAN (memory grows with the neighbourhood sizes).
    """

    mode: str = "default"
    topk: int = 750
    dbscan: bool = True
    dbscan_eps: float = 0.95
    dbscan_min_samples: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"postprocess mode must be one of {MODES}, got {self.mode!r}")
        if self.topk != -1 and self.topk < 1:
            raise ValueError(f"topk must be >= 1 (or -1 for all candidates), got {self.topk}")
        if not np.isfinite(self.dbscan_eps) or self.dbscan_eps <= 0:
            raise ValueError(f"dbscan_eps must be a positive number, got {self.dbscan_eps}")
        if self.dbscan_min_samples < 1:
            raise ValueError(f"dbscan_min_samples must be >= 1, got {self.dbscan_min_samples}")


@dataclass
class Mask3DMasks:
    """Post-processed masks of one scene.

    Attributes:
        masks: the distinct non-empty masks over the P points, sorted by descending score (each with the
            highest score it was ranked with).
        classes: (M,) int64 model class (0..C-1) of each stored mask, from its best-scoring entry.
        queries: (M,) int64 decoder query each stored mask came from.
        ranked_mask: (R,) int64 the original code's ranked list before collapsing: row in ``masks`` of
            each entry, -1 for an entry whose mask is empty (possible without DBSCAN).
        ranked_scores: (R,) float32 entry scores, descending (the original's ``sort_scores_values``).
        ranked_classes: (R,) int64 entry classes (0..C-1).
    """

    masks: MaskSet
    classes: np.ndarray
    queries: np.ndarray
    ranked_mask: np.ndarray
    ranked_scores: np.ndarray
    ranked_classes: np.ndarray


# -- exact DBSCAN (min_samples = 1) ---------------------------------------------------------------------

#: Grid cells have side eps / CELLS_PER_EPS: the cell diagonal (0.43 eps) keeps a cell's points connected.
CELLS_PER_EPS = 4
_REACH = CELLS_PER_EPS + 1


def _cell_offsets() -> tuple[np.ndarray, np.ndarray]:
    """Half of the neighbour-cell offsets, split into "every pair of points is within eps" (sure) and
    "some may be" (maybe); all other offsets are farther than eps. No bound lies within 3 % of eps, so
    floating-point cell assignment cannot misclassify a pair."""
    c2, sure, maybe = CELLS_PER_EPS**2, [], []
    for off in itertools.product(range(-_REACH, _REACH + 1), repeat=3):
        if off <= (0, 0, 0):
            continue
        far = sum((abs(o) + 1) ** 2 for o in off)  # (largest distance / cell side)^2, exclusive
        near = sum(max(abs(o) - 1, 0) ** 2 for o in off)  # (smallest distance / cell side)^2
        if near > c2:
            continue
        (sure if far < c2 else maybe).append((near, far, off))
    # Nearest offsets first: the "maybe" pair tested first between two components is the likeliest hit.
    return (np.array([o for *_, o in sorted(sure)], np.int64).reshape(-1, 3),
            np.array([o for *_, o in sorted(maybe)], np.int64).reshape(-1, 3))


class EpsComponents:
    """Connected components of "|xi - xj| <= eps" over subsets of one fixed cloud (DBSCAN, min_samples 1).

    Two points are neighbours iff ``(dx*dx + dy*dy) + dz*dz <= eps*eps`` in float64 (float32 inputs are
    widened first), the test sklearn's KD-tree applies. Built once per cloud: a grid of cells of side
    eps/4 (points of one cell are always connected) and the lists of neighbouring non-empty cell pairs
    that are surely connected or may be. :meth:`labels` then runs a graph search over the cells of a
    subset and tests points only for "maybe" cell pairs that still join different components, so memory
    stays linear in the cloud and no neighbourhood is ever listed.
    """

    def __init__(self, xyz: np.ndarray, eps: float):
        xyz = np.asarray(xyz)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"EpsComponents: points must have shape (N, 3), got {xyz.shape}")
        if not np.all(np.isfinite(xyz)):
            raise ValueError("EpsComponents: points contain NaN or infinite coordinates")
        if not np.isfinite(eps) or eps <= 0:
            raise ValueError(f"EpsComponents: eps must be a positive number, got {eps}")
        self.xyz = xyz.astype(np.float64)
        self.eps = float(eps)
        self.eps2 = self.eps * self.eps
        n = self.xyz.shape[0]
        cell = np.floor(self.xyz / (self.eps / CELLS_PER_EPS)).astype(np.int64) if n else np.zeros((0, 3), np.int64)
        if n:
            cell -= cell.min(axis=0) - _REACH
        dims = (cell.max(axis=0) if n else np.zeros(3, np.int64)) + _REACH + 1
        if float(np.prod(dims.astype(np.float64))) >= 2.0**62:
            raise ValueError(f"EpsComponents: the cloud spans too many cells of side eps/{CELLS_PER_EPS}")
        self._dims = dims
        keys = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        self._keys, self._cell_of = np.unique(keys, return_inverse=True)
        self._cell_of = self._cell_of.reshape(-1).astype(np.int64)
        self._members = np.argsort(self._cell_of, kind="stable")
        self._ptr = np.concatenate([[0], np.cumsum(np.bincount(self._cell_of, minlength=len(self._keys)))])
        sure, maybe = _cell_offsets()
        self._sure = self._neighbour_pairs(sure)
        self._maybe = self._neighbour_pairs(maybe)

    @property
    def num_cells(self) -> int:
        return int(self._keys.size)

    def _neighbour_pairs(self, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) indices of non-empty cells b = a + offset, for every offset."""
        d1, d2 = int(self._dims[1]), int(self._dims[2])
        firsts, seconds = [], []
        for ox, oy, oz in offsets:
            target = self._keys + ((ox * d1 + oy) * d2 + oz)
            pos = np.minimum(np.searchsorted(self._keys, target), self._keys.size - 1)
            hit = self._keys[pos] == target
            firsts.append(np.flatnonzero(hit))
            seconds.append(pos[hit])
        if not firsts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)

    def labels(self, subset: np.ndarray | None = None) -> np.ndarray:
        """Component label of each point of ``subset`` (ascending unique indices; None = all points),
        numbered 0, 1, ... by each component's first point, as sklearn's DBSCAN numbers clusters."""
        subset = np.arange(self.xyz.shape[0]) if subset is None else np.asarray(subset, np.int64)
        if subset.size == 0:
            return np.zeros(0, np.int64)
        present = np.zeros(self.num_cells, bool)
        present[self._cell_of[subset]] = True
        a, b = self._sure
        keep = present[a] & present[b]
        graph = sp.coo_matrix((np.ones(int(keep.sum()), np.int8), (a[keep], b[keep])),
                              shape=(self.num_cells, self.num_cells))
        _, comp = connected_components(graph, directed=False)
        a, b = self._maybe
        keep = present[a] & present[b]
        a, b = a[keep], b[keep]
        cross = comp[a] != comp[b]
        if cross.any():
            inside = np.zeros(self.xyz.shape[0], bool)
            inside[subset] = True
            comp = self._join(comp, a[cross], b[cross], inside)
        lab = comp[self._cell_of[subset]]
        first = np.full(int(comp.max()) + 1, subset.size, np.int64)
        first[lab[::-1]] = np.arange(subset.size - 1, -1, -1)  # the last write wins: first occurrence
        used = np.flatnonzero(first < subset.size)
        rank = np.zeros(first.size, np.int64)
        rank[used[np.argsort(first[used], kind="stable")]] = np.arange(used.size)
        return rank[lab]

    def _join(self, comp: np.ndarray, a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """Merge components across "maybe" cell pairs whose points really come within eps. In rounds:
        test one untested cell pair (the nearest offset) per pair of components still apart, merge the
        hits, repeat until every remaining pair joins one component or has been tested."""
        tested = np.zeros(a.size, bool)
        while True:
            ca, cb = comp[a], comp[b]
            todo = np.flatnonzero((ca != cb) & ~tested)
            if todo.size == 0:
                return comp
            lo, hi = np.minimum(ca[todo], cb[todo]), np.maximum(ca[todo], cb[todo])
            pick = todo[np.unique(lo * (int(comp.max()) + 1) + hi, return_index=True)[1]]
            tested[pick] = True
            hit = np.array([self._cells_touch(self._points_in(int(a[i]), inside), self._points_in(int(b[i]), inside))
                            for i in pick.tolist()], bool)
            if hit.any():
                n = int(comp.max()) + 1
                graph = sp.coo_matrix((np.ones(int(hit.sum()), np.int8), (comp[a[pick[hit]]], comp[b[pick[hit]]])),
                                      shape=(n, n))
                comp = connected_components(graph, directed=False)[1][comp]

    def _points_in(self, cell: int, inside: np.ndarray) -> np.ndarray:
        m = self._members[self._ptr[cell] : self._ptr[cell + 1]]
        return m[inside[m]]

    def _within(self, pa: np.ndarray, pb: np.ndarray) -> bool:
        """Any pair of rows closer than eps, by the exact float64 test (rows of pa x rows of pb)."""
        step = max(1, (1 << 16) // max(pb.shape[0], 1))  # bounded (step x len(pb)) blocks
        for s in range(0, pa.shape[0], step):
            d = pa[s : s + step, None, :] - pb[None, :, :]
            if np.any((d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) + d[..., 2] * d[..., 2] <= self.eps2):
                return True
        return False

    def _cells_touch(self, ia: np.ndarray, ib: np.ndarray) -> bool:
        pa, pb = self.xyz[ia], self.xyz[ib]
        if pa.shape[0] * pb.shape[0] <= 4096:
            return self._within(pa, pb)
        # Nearest neighbours with a slightly larger radius, then the exact test on every row that found
        # one (a pair within eps is always found: the tree's distances are accurate far beyond 1e-9).
        dist, _ = cKDTree(pb).query(pa, k=1, distance_upper_bound=self.eps * (1 + 1e-9))
        near = np.isfinite(dist)
        return bool(near.any()) and self._within(pa[near], pb)


def dbscan_labels(xyz: np.ndarray, eps: float, min_samples: int = 1) -> np.ndarray:
    """sklearn's ``DBSCAN(eps, min_samples).fit(xyz).labels_`` (-1 = noise); exact and memory-bounded
    for ``min_samples == 1``, sklearn itself otherwise."""
    if min_samples == 1:
        return EpsComponents(xyz, eps).labels()
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples).fit(np.asarray(xyz)).labels_.astype(np.int64)


# -- post-processing ------------------------------------------------------------------------------------


@dataclass
class _Parts:
    """K candidate masks at voxel level: part i is query ``query[i]`` restricted to voxel rows
    ``vox[ptr[i]:ptr[i+1]]`` (ascending)."""

    query: np.ndarray
    ptr: np.ndarray
    vox: np.ndarray

    def __len__(self) -> int:
        return int(self.query.size)

    def voxels(self, i: int) -> np.ndarray:
        return self.vox[self.ptr[i] : self.ptr[i + 1]]


def _as_array(x, name: str, dtype, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"Mask3D post-processing: {name} must be {ndim}-D, got shape {x.shape}")
    if np.issubdtype(dtype, np.floating):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"Mask3D post-processing: {name} must be floating point, got {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"Mask3D post-processing: {name} contains NaN or infinite values")
    elif not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"Mask3D post-processing: {name} must be integer, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=dtype)


def _check_inputs(pred_logits, pred_masks, raw_coordinates, inverse_map):
    logits = _as_array(pred_logits, "pred_logits", np.float32, 2)
    masks = _as_array(pred_masks, "pred_masks", np.float32, 2)
    raw = _as_array(raw_coordinates, "raw_coordinates", np.float32, 2)
    inv = _as_array(inverse_map, "inverse_map", np.int64, 1)
    q, v = logits.shape[0], masks.shape[0]
    if logits.shape[1] < 2:
        raise ValueError(f"Mask3D post-processing: pred_logits needs >= 2 columns (classes + no-object), "
                         f"got shape {logits.shape}")
    if masks.shape[1] != q:
        raise ValueError(f"Mask3D post-processing: pred_masks {masks.shape} must be (voxels, {q} queries)")
    if raw.shape != (v, 3):
        raise ValueError(f"Mask3D post-processing: raw_coordinates must be ({v}, 3), got {raw.shape}")
    if inv.size and (inv.min() < 0 or inv.max() >= v):
        raise ValueError(f"Mask3D post-processing: inverse_map values must lie in [0, {v})")
    return logits, masks, raw, inv


def _split_parts(masks: np.ndarray, raw: np.ndarray, cfg: PostprocessConfig) -> _Parts:
    """The candidates of step 2 of the module doc, in the original's order."""
    query, blocks = [], []
    graph = EpsComponents(raw, cfg.dbscan_eps) if cfg.dbscan and cfg.dbscan_min_samples == 1 else None
    positive = np.ascontiguousarray((masks > 0).T)  # (Q, V) bool: one contiguous row per query
    for q in range(masks.shape[1]):
        vox = np.flatnonzero(positive[q])
        if not cfg.dbscan:
            query.append(q)
            blocks.append(vox)
            continue
        if vox.size == 0:
            continue
        if graph is not None:
            lab = graph.labels(vox)
        else:
            lab = dbscan_labels(raw[vox], cfg.dbscan_eps, cfg.dbscan_min_samples)
        order = np.argsort(lab, kind="stable")
        bounds = np.searchsorted(lab[order], np.arange(lab.max() + 2))
        for c in range(int(lab.max()) + 1):  # label -1 (noise, min_samples > 1 only) is dropped
            query.append(q)
            blocks.append(vox[order[bounds[c] : bounds[c + 1]]])
    sizes = np.array([b.size for b in blocks], np.int64)
    return _Parts(np.array(query, np.int64), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                  np.concatenate(blocks).astype(np.int64) if blocks else np.zeros(0, np.int64))


def _mask_scores(masks: np.ndarray, parts: _Parts, columns: np.ndarray) -> torch.Tensor:
    """(k,) float32 ``sum(sigmoid) / (count + 1e-6)`` of parts ``columns`` (repeats allowed).

    When (V, k) fits one block this is the original's computation on ``mask_pred[:, columns]`` with the
    same layout, hence bit-identical; otherwise every distinct part is scored once, in blocks of columns
    (bounded memory; float32 results may then differ from the original's in the last bits)."""
    v = masks.shape[0]
    width = max(1, SCORE_BLOCK_ELEMENTS // max(v, 1))
    if columns.size <= width:
        return _score_block(masks, parts, columns)
    distinct, back = np.unique(columns, return_inverse=True)
    scores = torch.cat([_score_block(masks, parts, distinct[s : s + width]) for s in range(0, distinct.size, width)])
    return scores[torch.from_numpy(back.reshape(-1))]


def _score_block(masks: np.ndarray, parts: _Parts, cols: np.ndarray) -> torch.Tensor:
    """Mask scores of parts ``cols`` from one dense (V, len(cols)) float32 block, as the original."""
    rows = [parts.voxels(int(c)) for c in cols]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.repeat(np.arange(cols.size), [x.size for x in rows])
    # Logits inside the part, 0 elsewhere (the original multiplies by the cluster indicator); entries
    # outside contribute exactly 0 either way.
    block = torch.zeros(masks.shape[0], cols.size, dtype=torch.float32)
    block[torch.from_numpy(r), torch.from_numpy(c)] = torch.from_numpy(masks[r, parts.query[cols[c]]])
    result = (block > 0).float()
    heatmap = block.sigmoid()
    return (heatmap * result).sum(0) / (result.sum(0) + 1e-6)


def _ranked_entries(probs: torch.Tensor, masks: np.ndarray, parts: _Parts, cfg: PostprocessConfig):
    """The original's ranked list: (part, class, score) per entry, sorted by descending score."""
    num_classes = probs.shape[1]
    if cfg.mode == "default":
        best, cls = probs[torch.from_numpy(parts.query)].max(dim=1)
        part = np.arange(len(parts))
        score = best * _mask_scores(masks, parts, part)
        order = torch.sort(score, descending=True, stable=True).indices
        return part[order.numpy()], cls[order].numpy(), score[order].numpy()
    mask_cls = probs[torch.from_numpy(parts.query)]  # (K, C): one probability row per part
    k = len(parts) if cfg.mode == "openmask3d" or cfg.topk == -1 else cfg.topk
    if k > mask_cls.numel():
        log.info("Mask3D post-processing: topk %d > %d candidates (parts x classes); using %d", k,
                 mask_cls.numel(), mask_cls.numel())
        k = mask_cls.numel()
    values, flat = mask_cls.flatten(0, 1).topk(k, sorted=True)
    part, cls = (flat // num_classes).numpy(), (flat % num_classes).numpy()
    score = values * _mask_scores(masks, parts, part)
    order = score.sort(descending=True).indices.numpy()
    return part[order], cls[order], score.numpy()[order]


def _full_resolution(vox: np.ndarray, inverse_map: np.ndarray, num_voxels: int) -> np.ndarray:
    """Ascending uint32 point indices of a voxel set (the original's ``mask[inverse_map]``, kept sparse)."""
    member = np.zeros(num_voxels, bool)
    member[vox] = True
    return np.flatnonzero(member[inverse_map]).astype(np.uint32)


def postprocess(pred_logits, pred_masks, raw_coordinates, inverse_map,
                config: PostprocessConfig | None = None) -> Mask3DMasks:
    """Decoder outputs of one scene -> :class:`Mask3DMasks` (see the module doc).

    Args:
        pred_logits: (Q, C + 1) float class logits, last column no-object (numpy or torch).
        pred_masks: (V, Q) float voxel mask logits.
        raw_coordinates: (V, 3) float32 xyz of each voxel's first point (DBSCAN runs on these).
        inverse_map: (P,) int voxel row of every point.
        config: the mode and its options (default: the project's default mode).
    """
    cfg = config or PostprocessConfig()
    logits, masks, raw, inverse_map = _check_inputs(pred_logits, pred_masks, raw_coordinates, inverse_map)
    num_points, num_voxels = int(inverse_map.size), masks.shape[0]
    probs = torch.softmax(torch.from_numpy(logits)[None], dim=-1)[0, :, :-1]
    parts = _split_parts(masks, raw, cfg)
    if len(parts) == 0:
        log.info("Mask3D post-processing: no query has a voxel with logit > 0: no masks")
        empty = np.zeros(0, np.int64)
        return Mask3DMasks(MaskSet.empty(num_points), empty, empty, empty, np.zeros(0, np.float32), empty)
    part, cls, score = _ranked_entries(probs, masks, parts, cfg)

    ranked_mask, blocks, first = _collapse(parts, part, inverse_map, num_voxels)
    sizes = np.array([b.size for b in blocks], np.int64)
    mask_set = MaskSet(np.concatenate(blocks) if blocks else np.zeros(0, np.uint32),
                       np.concatenate([[0], np.cumsum(sizes)]), score[first], num_points)
    log.debug("Mask3D post-processing (%s): %d parts, %d ranked entries, %d distinct masks", cfg.mode,
              len(parts), part.size, len(mask_set))
    return Mask3DMasks(masks=mask_set, classes=cls[first].astype(np.int64), queries=parts.query[part[first]],
                       ranked_mask=ranked_mask, ranked_scores=score.astype(np.float32),
                       ranked_classes=cls.astype(np.int64))


def _collapse(parts: _Parts, part: np.ndarray, inverse_map: np.ndarray, num_voxels: int):
    """Entries with the same point set share one stored mask, made at its first (best) entry.

    Returns (ranked_mask, blocks, first): each entry's row (-1: empty point set), the uint32 point
    indices of each row, and the entry index that created each row."""
    count = np.bincount(inverse_map, minlength=num_voxels)
    row_of_key: dict[bytes, int] = {}
    row_of_part: dict[int, int] = {}
    ranked_mask = np.empty(part.size, np.int64)
    blocks, first = [], []
    for i, p in enumerate(part.tolist()):
        if p not in row_of_part:
            vox = parts.voxels(p)
            vox = vox[count[vox] > 0]  # voxels without points do not change the point set
            key = vox.tobytes()
            if vox.size and key not in row_of_key:
                row_of_key[key] = len(blocks)
                blocks.append(_full_resolution(vox, inverse_map, num_voxels))
                first.append(i)
            row_of_part[p] = row_of_key[key] if vox.size else -1
        ranked_mask[i] = row_of_part[p]
    return ranked_mask, blocks, np.array(first, np.int64)
