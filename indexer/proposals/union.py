"""The union of several proposers (as Open3DIS combines 3D proposals with 2D-lifted ones).

Every member proposes on the scan; the masks are pooled with

* **comparable scores**: each member's scores become their rank quantile within that member
  (``rank / count``, ties sharing the highest rank of their group, so a member's best mask scores 1 and its
  scores spread over (0, 1] whatever their scale or calibration), times the member's ``weight``. A
  proposer whose scores are all equal (e.g. an imported file) gets 1 for every mask.

  Rank quantiles say how a mask compares with the *same* member's other masks, not how likely it is to be
  an object: with equal weights a weak member's best masks rank level with a strong member's best, and a
  union of the geometric proposer with the weight-free lifted one lost AP on the synthetic rooms (0.58-0.69
  against 1.00 for geometric alone) because Felzenszwalb superpixels give imprecise object masks. So the
  default weight of a member is its **prior reliability**, its ``union_prior`` attribute (1 when it has
  none): the expected precision of that proposer family relative to the others. The geometric proposer,
  Mask3D, imported files and the lifted proposer with SAM or label-map masks declare none (1); the lifted
  proposer with the weight-free Felzenszwalb segmenter declares 0.5, its measured AP50 on the synthetic
  benchmark rooms where the geometric proposer's is 1.0 (0.76 with the lifted defaults of 2026-12-02; the
  union's AP is the same at either value, so the cautious one stays). A member weighted ``w`` ranks its
  best mask level with the other members' ``w``-quantile, so its masks fill in what the stronger member
  missed (they survive duplicate removal where nothing better overlaps them) without displacing its good masks.
  ``weights=`` overrides the priors.
* **duplicate removal**: greedy non-maximum suppression on point-set IoU: masks of the more reliable
  members first (descending weight), within equal weights in descending pooled score (ties: larger first);
  a mask is dropped when its IoU with an already kept mask *of another member* exceeds ``iou_threshold``.
  Visiting by weight first means a less reliable member never displaces a more reliable member's mask,
  even one that member ranked low: on labelfusion-shelf the geometric proposer's colour part of the box
  (IoU 0.84 with the labelled box, ranked below its hierarchy masks) used to lose to a Felzenszwalb-lifted
  box mask (IoU 0.72) whose weighted score was higher. With equal weights this is plain score-greedy NMS.
  A member's own overlapping masks are its choice (a hierarchy proposes an object and its parts; the
  geometric proposer already drops its near-duplicates above IoU 0.9): removing them cost the union 0.045
  AP50 against geometric alone on a table-top scan without frames, where the lifted member adds nothing.
  Overlaps come from one sparse product of the (masks x points) CSR matrix with its transpose, so only
  overlapping pairs are ever materialised.

The result is a :class:`SourcedMaskSet`: a :class:`~scenegrep.indexer.proposals.base.MaskSet` whose
``sources`` names the member that made each mask (saved as an extra ``sources`` array in the ``.npz``;
readers that do not know it ignore it).

A list of proposers is named ``"geometric+lifted"`` (:func:`parse_proposer_list`);
``make_proposer("union", members=["geometric", "lifted"])`` builds the same.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import scipy.sparse as sp

from scenegrep.indexer.proposals.base import MaskSet, Proposer

if TYPE_CHECKING:
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)

#: Members of ``--proposer union`` when none are named.
DEFAULT_MEMBERS: tuple[str, ...] = ("geometric", "lifted")


@dataclass
class SourcedMaskSet(MaskSet):
    """A MaskSet that also says which proposer made each mask.

    Attributes:
        sources: (M,) unicode array: the member proposer's name per mask ("" = unknown, the default).
    """

    sources: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sources is None:  # built through MaskSet's constructors: source unknown
            self.sources = np.full(len(self), "")
        self.sources = np.asarray(self.sources, dtype=np.str_).reshape(-1)
        if self.sources.size != len(self):
            raise ValueError(f"sources must have one entry per mask ({len(self)}), got {self.sources.size}")

    def select(self, keep: np.ndarray | Sequence[int]) -> "SourcedMaskSet":
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)
        plain = MaskSet(self.point_indices, self.offsets, self.scores, self.num_points).select(keep)
        return SourcedMaskSet(plain.point_indices, plain.offsets, plain.scores, plain.num_points,
                              self.sources[keep])

    def save_npz(self, path: Path | str) -> None:
        """The project's mask file plus a ``sources`` array."""
        np.savez_compressed(path, point_indices=self.point_indices, offsets=self.offsets, scores=self.scores,
                            num_points=np.int64(self.num_points), sources=self.sources)


def parse_proposer_list(spec: str) -> list[str]:
    """``"geometric+lifted"`` -> ``["geometric", "lifted"]`` (ValueError for an empty or repeated name)."""
    names = [s.strip() for s in spec.split("+")]
    if any(not n for n in names):
        raise ValueError(f"proposer list {spec!r}: empty name (write names joined by '+', e.g. geometric+lifted)")
    if len(set(names)) != len(names):
        raise ValueError(f"proposer list {spec!r}: a proposer is named twice")
    return names


def rank_scores(scores: np.ndarray) -> np.ndarray:
    """(M,) float32 rank quantiles in (0, 1]: ``rank / M`` with 1-based ascending ranks, ties taking the
    highest rank of their group (all-equal scores -> all 1)."""
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return np.zeros(0, np.float32)
    # searchsorted 'right' on the sorted scores = number of scores <= each one = the tie group's top rank
    return (np.searchsorted(np.sort(s), s, side="right") / s.size).astype(np.float32)


def nms_keep(masks: MaskSet, iou_threshold: float, groups: np.ndarray | None = None,
             priority: np.ndarray | None = None) -> np.ndarray:
    """Indices kept by greedy point-set NMS (module doc), in keeping order; sparse overlaps only.

    With ``groups`` (M,) only masks of different groups suppress each other. With ``priority`` (M,) masks
    are visited in descending priority first and by score within equal priorities, so a mask is never
    suppressed by one of lower priority."""
    m = len(masks)
    if m == 0:
        return np.zeros(0, np.int64)
    csr = masks.to_csr()
    inter = sp.triu(csr @ csr.T, k=1).tocoo()
    sizes = masks.sizes.astype(np.float64)
    iou = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    hit = iou > iou_threshold
    if groups is not None:
        groups = np.asarray(groups)
        hit &= groups[inter.row] != groups[inter.col]
    a, b = inter.row[hit], inter.col[hit]
    conflicts = sp.csr_matrix((np.ones(2 * a.size, np.int8), (np.r_[a, b], np.r_[b, a])), shape=(m, m))
    keys = (-masks.sizes, -masks.scores) if priority is None else (
        -masks.sizes, -masks.scores, -np.asarray(priority, np.float64))
    order = np.lexsort(keys)
    suppressed = np.zeros(m, bool)
    kept: list[int] = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed[conflicts.indices[conflicts.indptr[i] : conflicts.indptr[i + 1]]] = True
    return np.asarray(kept, np.int64)


class UnionProposer:
    """:class:`~scenegrep.indexer.proposals.base.Proposer` pooling several proposers (module doc).

    Attributes:
        name: ``"union"``.
        members: the member proposers, each with its own ``name``.
        weights: per member, the factor on its rank-quantile scores (default: each member's ``union_prior``,
            1 when it has none; see the module doc).
        iou_threshold: masks overlapping an earlier-visited mask of another member (module doc) above this IoU
            are dropped.
        last_stats: per member ``{name: {"masks": n, "kept": k, "seconds": s}}`` of the last :meth:`propose`.
    """

    name = "union"

    def __init__(self, members: Sequence[Proposer], *, weights: Sequence[float] | None = None,
                 iou_threshold: float = 0.5):
        if not members:
            raise ValueError("a union needs at least one member proposer")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"union members must have distinct names, got {names}")
        self.members = list(members)
        if weights is None:
            weights = [float(getattr(m, "union_prior", 1.0)) for m in members]
        self.weights = [float(w) for w in weights]
        if len(self.weights) != len(self.members) or any(not w > 0 for w in self.weights):
            raise ValueError("weights: one positive number per member")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.last_stats: dict[str, Any] = {}

    def identity(self) -> dict[str, Any]:
        """Members' identities (their ``identity()`` when they have one), weights and the NMS threshold."""
        def ident(p: Proposer) -> dict[str, Any]:
            extra = p.identity() if callable(getattr(p, "identity", None)) else {}  # type: ignore[attr-defined]
            return {"name": p.name, **extra}

        return {"members": [ident(p) for p in self.members], "weights": self.weights,
                "iou_threshold": self.iou_threshold, "scores": "rank quantile per member x weight"}

    def propose(self, scan: "Scan") -> SourcedMaskSet:
        blocks: list[np.ndarray] = []
        offsets = [np.zeros(1, np.int64)]
        scores: list[np.ndarray] = []
        sources: list[np.ndarray] = []
        stats: dict[str, Any] = {}
        total = 0
        for member, weight in zip(self.members, self.weights):
            t0 = time.perf_counter()
            ms = member.propose(scan)
            if ms.num_points != scan.num_points:
                raise ValueError(f"proposer {member.name!r} returned masks over {ms.num_points} points, "
                                 f"the scan has {scan.num_points}")
            stats[member.name] = {"masks": len(ms), "seconds": time.perf_counter() - t0}
            blocks.append(ms.point_indices)
            offsets.append(ms.offsets[1:] + total)
            total += ms.point_indices.size
            scores.append(rank_scores(ms.scores) * np.float32(weight))
            sources.append(np.full(len(ms), member.name))
        pooled = SourcedMaskSet(np.concatenate(blocks), np.concatenate(offsets), np.concatenate(scores),
                                scan.num_points, np.concatenate(sources))
        # each mask's member weight: more reliable members' masks are visited first (module doc)
        priority = np.repeat(self.weights, [stats[m.name]["masks"] for m in self.members])
        keep = nms_keep(pooled, self.iou_threshold, pooled.sources, priority)
        # best pooled score first, whatever order the NMS visited them in
        out = pooled.select(keep[np.lexsort((-pooled.sizes[keep], -pooled.scores[keep]))])
        for name in stats:
            stats[name]["kept"] = int(np.count_nonzero(out.sources == name))
        self.last_stats = stats
        log.info("%s: union of %s: %d masks, %d kept after NMS at IoU %.2f", scan.name,
                 "+".join(p.name for p in self.members), len(pooled), len(out), self.iou_threshold)
        return out
