"""The 2D-lifted proposer: 2D masks of every used frame, lifted to the points they cover and merged across
views into 3D instances by view consensus (MaskClustering, Yan et al. CVPR 2024; OVIR-3D and SAM3D lift
the same way).

1. **Frames.** Every ``frame_step``-th frame, or automatically the smallest step that uses at most
   ``max_frames`` (:func:`scenegrep.indexer.features.visibility.frame_positions`, the features stage's rule).
2. **2D masks.** A :class:`~scenegrep.indexer.proposals.segmenters.Segmenter2D` segments the frame's colour
   image; overlapping masks are flattened to a partition, the smaller mask winning a pixel
   (:meth:`~scenegrep.indexer.proposals.segmenters.Masks2D.label_image`).
3. **Lifting.** The points visible in the frame (the features stage's projection and depth test,
   :func:`~scenegrep.indexer.features.visibility.frame_visible_pixels`, with a tighter threshold) take the
   mask under their colour pixel. A 2D mask becomes the set of points it covers; masks covering fewer than
   ``min_mask_points`` points are dropped. Only two sparse matrices are kept: masks x points (L) and
   frames x points (visibility V), both O(visible points), never views x masks x pixels.
4. **Consensus.** Mask m is *seen* by frame f when at least ``visible_ratio`` of its points are visible and
   inside some mask of f (points f leaves unsegmented, e.g. at mask borders, give no opinion), and
   *contained* there by f's mask holding at least ``contained_ratio`` of those points. For
   two masks, the *observers* are the frames that see both and the *supporters* the frames where one mask
   contains both. They belong together when supporters >= ``consensus`` x observers. All of this comes from
   the sparse product L L^T (intersections: a frame's masks partition the points it segmented, so their
   overlaps with m add up to m's segmented points there); only pairs with a supporter are ever looked at.
5. **Iterative clustering.** As MaskClustering: nodes start as the 2D masks; in each round, pairs with at
   least the round's number of observers and enough consensus are joined (connected components); a
   merged node sees the union of its members' frames and is contained by the union of their containers.
   The observer thresholds run from the 95th percentile of the candidate pairs' observer counts down to
   0 in steps of 5 (stopping at 1 below the median), so well-observed pairs merge first and a weakly
   observed pair cannot chain two confident clusters. (MaskClustering takes percentiles over all pairs
   that share an observer; over candidate pairs they are computed without the dense masks x masks matrix.)
6. **Points and scores.** A node's points are its members' points, each kept when it was inside a member
   mask in at least ``point_ratio`` of the node's frames that see it (drops points a 2D mask caught at a
   depth edge once). Score = (frames holding a member mask) / (frames seeing the node + 1) x the members'
   mean 2D score: how consistently the instance was segmented where it was visible, with a penalty for
   instances seen rarely. Nodes segmented in fewer than ``min_detections`` frames, or keeping fewer than
   ``min_points`` points, are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from scenegrep.indexer.proposals.base import MaskSet

if TYPE_CHECKING:
    from scenegrep.indexer.proposals.segmenters import Segmenter2D
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)


@dataclass
class LiftedConfig:
    """Settings of the lifted proposer. MaskClustering's visible ratio; its contained ratio of 0.8 lowered
    to 0.6 and its consensus of 0.9 to 0.7, the point ratio set to 0.15, all on the oracle degradation curve
    of BENCHMARKS.md and the weight-free segmenter's AP on synthetic rooms (never on a real scan): 2D
    segmenters over-split (superpixels; SAM's parts), and a part covers less of the object's visible
    points than 0.8 in many of the frames that see both. Against 0.8 / 0.8: oracle masks with erosion 2 px
    plus 20 % splits and 20 % merges AP50 0.41 -> 0.66; 40 % splits 0.46 -> 0.86; Felzenszwalb masks on
    two sets of five rooms 0.50 -> 0.76 and 0.69 -> 0.88; the price is 40 % merged masks, 0.94 -> 0.68
    (20 % merged: 1.00 either way).

    Attributes:
        frame_step: use every ``frame_step``-th frame; None = the smallest step using at most ``max_frames``.
        max_frames: frame budget of the automatic step (each used frame is segmented once).
        depth_threshold: metres; a point is visible when ``|sensor depth - z| <= depth_threshold``.
        require_positive_depth: also require z > 0 and a sensor reading.
        min_mask_points: 2D masks covering fewer points are dropped.
        visible_ratio: a frame sees a mask when this fraction of its points is visible there.
        contained_ratio: a frame's mask contains another mask when it holds this fraction of the other's
            visible points.
        consensus: supporters / observers needed to join two nodes.
        point_ratio: a node keeps a point inside a member mask in at least this fraction of the node's
            frames that see the point.
        min_detections: nodes segmented in fewer frames are dropped (1 when fewer frames are used).
        min_points: nodes keeping fewer points are dropped.
    """

    frame_step: int | None = None
    max_frames: int = 100
    depth_threshold: float = 0.05
    require_positive_depth: bool = True
    min_mask_points: int = 20
    visible_ratio: float = 0.3
    contained_ratio: float = 0.6
    consensus: float = 0.7
    point_ratio: float = 0.15
    min_detections: int = 2
    min_points: int = 20

    def __post_init__(self) -> None:
        if self.frame_step is not None and self.frame_step < 1:
            raise ValueError(f"frame_step must be >= 1 or None, got {self.frame_step}")
        if self.max_frames < 1 or self.min_detections < 1:
            raise ValueError("max_frames and min_detections must be >= 1")
        for k in ("visible_ratio", "contained_ratio", "consensus", "point_ratio"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"{k} must be in [0, 1], got {getattr(self, k)}")
        if self.depth_threshold < 0:
            raise ValueError("depth_threshold must be >= 0")


@dataclass
class LiftedMasks:
    """The lifted 2D masks of one scan, before merging (all sparse).

    Attributes:
        masks: (M, N) CSR 0/1 float32: the points each 2D mask covers.
        mask_frame: (M,) int64 view (position in ``frame_positions``) each mask comes from.
        mask_score: (M,) float32 the segmenter's score of each mask.
        visibility: (F, N) CSR 0/1 float32: the points visible in each used view.
        frame_positions: (F,) int64 positions in ``scan.frames`` of the used views.
        stats: frames, masks_2d (before the size filter), segment_s, lift_s.
    """

    masks: sp.csr_matrix
    mask_frame: np.ndarray
    mask_score: np.ndarray
    visibility: sp.csr_matrix
    frame_positions: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def lift_masks(scan: "Scan", segmenter: "Segmenter2D", config: LiftedConfig) -> LiftedMasks:
    """Steps 1-3 of the module doc: segment every used frame and lift its masks to the points."""
    from scenegrep.indexer.features.visibility import (
        exact_depth,
        frame_positions,
        frame_visible_pixels,
        homogeneous_points,
    )

    n = scan.num_points
    positions = frame_positions(len(scan.frames), config.frame_step, config.max_frames)
    xh = homogeneous_points(scan.points)
    vis_ptr, vis_idx = [0], []
    m_ptr, m_idx, m_frame, m_score = [0], [], [], []
    n_2d = 0
    seg_s = lift_s = 0.0
    for f, pos in enumerate(positions.tolist()):
        frame = scan.frames[pos]
        t0 = time.perf_counter()
        try:
            idx, pix = frame_visible_pixels(xh, frame, exact_depth(frame), config.depth_threshold,
                                            config.require_positive_depth)
        except np.linalg.LinAlgError as e:
            log.warning("%s: frame %d skipped by the lifted proposer (%s)", scan.name, frame.frame_id, e)
            idx, pix = np.zeros(0, np.int64), np.zeros(0, np.int64)
        lift_s += time.perf_counter() - t0
        vis_idx.append(idx)
        vis_ptr.append(vis_ptr[-1] + idx.size)
        if idx.size == 0:
            continue
        image = frame.load_color()
        t0 = time.perf_counter()
        masks2d = segmenter.segment(frame, image)
        seg_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        if masks2d.size != (w, h):
            raise ValueError(f"{segmenter.name}: masks of size {masks2d.size} for a {w}x{h} image")
        n_2d += len(masks2d)
        lab = masks2d.label_image().reshape(-1)[pix]
        keep = lab >= 0
        pts, lab = idx[keep], lab[keep]
        order = np.argsort(lab, kind="stable")  # points stay ascending within a mask
        pts, lab = pts[order], lab[order]
        ids, starts, counts = np.unique(lab, return_index=True, return_counts=True)
        for i, s, c in zip(ids.tolist(), starts.tolist(), counts.tolist()):
            if c < config.min_mask_points:
                continue
            m_idx.append(pts[s : s + c])
            m_ptr.append(m_ptr[-1] + c)
            m_frame.append(f)
            m_score.append(float(masks2d.scores[i]))
        lift_s += time.perf_counter() - t0
    num_m, num_f = len(m_frame), positions.size

    def csr(ptr: list[int], idx: list[np.ndarray], rows: int) -> sp.csr_matrix:
        ind = np.concatenate(idx).astype(np.int32) if idx else np.zeros(0, np.int32)
        return sp.csr_matrix((np.ones(ind.size, np.float32), ind, np.asarray(ptr, np.int64)), shape=(rows, n))

    return LiftedMasks(csr(m_ptr, m_idx, num_m), np.asarray(m_frame, np.int64), np.asarray(m_score, np.float32),
                       csr(vis_ptr, vis_idx, num_f), positions,
                       {"frames": int(num_f), "masks_2d": int(n_2d), "masks_lifted": int(num_m),
                        "segment_s": seg_s, "lift_s": lift_s})


def _binary(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m)
    m.data = np.ones_like(m.data, dtype=np.float32)
    return m


def _popcount_and(packed: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """|row a & row b| of bit-packed boolean rows, for the pairs (rows[k], cols[k])."""
    out = np.empty(rows.size, np.int64)
    for s in range(0, rows.size, chunk):
        a, b = rows[s : s + chunk], cols[s : s + chunk]
        out[s : s + chunk] = np.bitwise_count(packed[a] & packed[b]).sum(axis=1, dtype=np.int64)
    return out


@dataclass
class ConsensusGraph:
    """Per 2D mask, the frames that see it and the masks that contain it (step 4 of the module doc).

    Attributes:
        visible: (M, F) CSR 0/1: frame f sees mask m.
        contained: (M, M) CSR 0/1: mask j (of frame mask_frame[j]) contains mask m.
    """

    visible: sp.csr_matrix
    contained: sp.csr_matrix


def consensus_graph(lifted: LiftedMasks, config: LiftedConfig) -> ConsensusGraph:
    """Which frames see each mask, and which mask contains it in each of them (module doc, step 4)."""
    L = lifted.masks
    num_m, num_f = L.shape[0], lifted.visibility.shape[0]
    size = np.diff(L.indptr).astype(np.float64)
    inter = (L @ L.T).tocoo()  # (M, M) shared points
    key = inter.row.astype(np.int64) * num_f + lifted.mask_frame[inter.col]
    order = np.lexsort((-inter.data, key))  # per (mask, frame): the largest overlap first
    key_s = key[order]
    first = np.concatenate([[True], key_s[1:] != key_s[:-1]]) if key_s.size else np.zeros(0, bool)
    best = order[first]
    # A frame's masks partition the points it segmented, so the overlaps of mask m with one frame's
    # masks add up to the points of m that frame segmented.
    segmented = np.add.reduceat(inter.data[order], np.flatnonzero(first)) if key_s.size else np.zeros(0)
    rows = inter.row[best].astype(np.int64)
    seen = segmented >= config.visible_ratio * size[rows]
    visible = sp.csr_matrix((np.ones(int(seen.sum()), np.float32), (rows[seen], key_s[first][seen] % num_f)),
                            shape=(num_m, num_f))
    ok = seen & (inter.data[best] >= config.contained_ratio * segmented)
    contained = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], inter.col[best][ok])),
                              shape=(num_m, num_m))
    return ConsensusGraph(visible, contained)


def observer_thresholds(observers: np.ndarray) -> list[float]:
    """MaskClustering's schedule: percentiles 95, 90, ..., 0 of the observer counts; a value <= 1 becomes 1
    at or above the median and ends the schedule below it."""
    if observers.size == 0:
        return []
    out: list[float] = []
    for pct in range(95, -5, -5):
        t = float(np.percentile(observers, pct))
        if t <= 1:
            if pct < 50:
                break
            t = 1.0
        out.append(t)
    return out


def _candidate_pairs(node_vis: sp.csr_matrix, node_cont: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, supporters, observers) of node pairs a < b sharing at least one container."""
    sup = sp.triu(node_cont @ node_cont.T, k=1).tocoo()
    packed = np.packbits(node_vis.toarray().astype(bool), axis=1)
    obs = _popcount_and(packed, sup.row.astype(np.int64), sup.col.astype(np.int64))
    return sup.row.astype(np.int64), sup.col.astype(np.int64), sup.data.astype(np.float64), obs


def cluster_masks(graph: ConsensusGraph, config: LiftedConfig) -> tuple[sp.csr_matrix, list[dict[str, Any]]]:
    """Step 5 of the module doc. Returns the (nodes x masks) 0/1 membership and one record per round."""
    num_m = graph.visible.shape[0]
    members = sp.identity(num_m, dtype=np.float32, format="csr")
    if num_m == 0:
        return members, []
    _, _, _, obs0 = _candidate_pairs(graph.visible, graph.contained)
    rounds = []
    for t in observer_thresholds(obs0):
        node_vis = _binary(members @ graph.visible)
        node_cont = _binary(members @ graph.contained)
        a, b, sup, obs = _candidate_pairs(node_vis, node_cont)
        edge = (obs >= t) & (sup >= config.consensus * obs)
        c = members.shape[0]
        adj = sp.csr_matrix((np.ones(int(edge.sum()), np.float32), (a[edge], b[edge])), shape=(c, c))
        ncomp, comp = connected_components(adj, directed=False)
        members = _binary(sp.csr_matrix((np.ones(c, np.float32), (comp, np.arange(c))), shape=(ncomp, c)) @ members)
        rounds.append({"observers": t, "pairs": int(a.size), "edges": int(edge.sum()), "nodes": int(ncomp)})
    return members, rounds


def node_masks(lifted: LiftedMasks, graph: ConsensusGraph, members: sp.csr_matrix, config: LiftedConfig,
               num_points: int) -> MaskSet:
    """Step 6 of the module doc: each node's kept points and score."""
    num_f = lifted.visibility.shape[0]
    num_m = lifted.masks.shape[0]
    frame_of = sp.csr_matrix((np.ones(num_m, np.float32), (np.arange(num_m), lifted.mask_frame)), shape=(num_m, num_f))
    det = _binary(members @ frame_of)  # (C, F) frames holding a member mask
    seen = _binary(members @ graph.visible)  # (C, F) frames seeing the node
    inside = sp.csr_matrix(members @ lifted.masks)  # (C, N) member masks holding each point
    vis_csc = lifted.visibility.tocsc()
    n_members = np.diff(members.indptr)
    mean_score = np.asarray(members @ lifted.mask_score.astype(np.float64)).reshape(-1) / np.maximum(n_members, 1)
    detections = np.diff(det.indptr)
    seen_count = np.diff(seen.indptr)
    min_det = min(config.min_detections, num_f) if num_f else 1
    blocks: list[np.ndarray] = []
    scores: list[float] = []
    for c in np.flatnonzero(detections >= min_det).tolist():
        pts = inside.indices[inside.indptr[c] : inside.indptr[c + 1]]
        n_in = inside.data[inside.indptr[c] : inside.indptr[c + 1]]
        frames = det.indices[det.indptr[c] : det.indptr[c + 1]]
        sel = np.zeros(num_f, np.float32)
        sel[frames] = 1.0
        n_vis = sel @ vis_csc[:, pts]  # frames of the node that see each point
        keep = pts[n_in >= config.point_ratio * np.maximum(n_vis, 1.0)]
        if keep.size < config.min_points:
            continue
        blocks.append(keep)
        scores.append(float(detections[c]) / float(seen_count[c] + 1) * float(mean_score[c]))
    return MaskSet.from_lists(blocks, np.clip(scores, 0.0, 1.0) if scores else [], num_points).sorted_by_score()


class LiftedProposer:
    """:class:`~scenegrep.indexer.proposals.base.Proposer` lifting a segmenter's 2D masks (module doc).

    Attributes:
        name: ``"lifted"``.
        segmenter: the :class:`~scenegrep.indexer.proposals.segmenters.Segmenter2D` used on every frame.
        config: :class:`LiftedConfig`.
        last_stats: timings and counts of the last :meth:`propose` (frames, masks_2d, masks_lifted, rounds,
            instances, segment_s, lift_s, merge_s, total_s).
    """

    name = "lifted"

    def __init__(self, segmenter: "Segmenter2D", config: LiftedConfig | None = None):
        self.segmenter = segmenter
        self.config = config or LiftedConfig()
        self.last_stats: dict[str, Any] = {}

    @property
    def union_prior(self) -> float:
        """Prior reliability of these masks in a union (:mod:`~scenegrep.indexer.proposals.union`): the
        segmenter's ``union_prior`` (0.5 for the weight-free Felzenszwalb segmenter), 1 when it has none
        (SAM, label maps)."""
        return float(getattr(self.segmenter, "union_prior", 1.0))

    def identity(self) -> dict[str, Any]:
        """What makes two lifted proposers give the same masks (recorded in the catalog)."""
        return {"segmenter": self.segmenter.identity(), "config": asdict(self.config)}

    def propose(self, scan: "Scan") -> MaskSet:
        t0 = time.perf_counter()
        if not scan.frames:
            log.warning("%s: no RGB-D frames: the lifted proposer has nothing to lift", scan.name)
            self.last_stats = {"frames": 0, "instances": 0, "total_s": 0.0}
            return MaskSet.empty(scan.num_points)
        lifted = lift_masks(scan, self.segmenter, self.config)
        t1 = time.perf_counter()
        graph = consensus_graph(lifted, self.config)
        members, rounds = cluster_masks(graph, self.config)
        masks = node_masks(lifted, graph, members, self.config, scan.num_points)
        t2 = time.perf_counter()
        self.last_stats = {**lifted.stats, "rounds": rounds, "nodes": int(members.shape[0]),
                           "instances": len(masks), "merge_s": t2 - t1, "total_s": t2 - t0}
        log.info("%s: lifted %d 2D masks (%d kept) from %d frames with %s into %d instances "
                 "(segment %.1fs, lift %.1fs, merge %.1fs)", scan.name, lifted.stats["masks_2d"],
                 lifted.stats["masks_lifted"], lifted.stats["frames"], self.segmenter.name, len(masks),
                 lifted.stats["segment_s"], lifted.stats["lift_s"], t2 - t1)
        return masks
