"""Near-duplicate hits folded into the better one.

Proposers give nested masks of one object (a table, the table with a chair pushed under it, one of its
legs); each gets a vector and they come back as separate hits. A hit whose points overlap a better hit of
the same scan by IoU >= :data:`FOLD_IOU` or containment >= :data:`FOLD_CONTAINMENT` (the share of the
smaller mask inside the larger) is folded into it: reported under it (``Hit.folded``), not as a hit of its
own. Overlaps are computed exactly from the stored point sets (sorted index arrays), only between hits of
the same scan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FOLD_IOU", "FOLD_CONTAINMENT", "Group", "overlap", "fold"]

#: Point-set IoU at or above which a worse hit is folded into a better one of the same scan.
FOLD_IOU = 0.5
#: Share of the smaller mask inside the larger at or above which it is folded (a leg inside its table).
FOLD_CONTAINMENT = 0.8


@dataclass
class Group:
    """One reported hit and the worse near-duplicates folded into it.

    Attributes:
        id: the reported instance; score: its score.
        folded: ids of the instances folded into it, best first.
    """

    id: int
    score: float
    folded: list[int] = field(default_factory=list)


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(IoU, containment) of two sorted, duplicate-free point index arrays; containment is the share of the
    smaller set that lies in the other."""
    if a.size == 0 or b.size == 0:
        return 0.0, 0.0
    inter = int(np.intersect1d(a, b, assume_unique=True).size)
    return inter / (a.size + b.size - inter), inter / min(a.size, b.size)


def fold(ranked: Iterable[tuple[int, float]], scan_of: Mapping[int, str],
         points_of: Callable[[list[int]], Mapping[int, np.ndarray]], k: int,
         iou: float = FOLD_IOU, containment: float = FOLD_CONTAINMENT) -> list[Group]:
    """Walk ``ranked`` (id, score), best first, and keep up to ``k`` groups: a candidate that overlaps a kept
    group's hit of the same scan (IoU >= ``iou`` or containment >= ``containment``) joins that group.

    ``points_of(ids)`` returns the sorted point indices of instances (fetched in bulk, once per candidate).
    """
    ranked = list(ranked)
    pts = points_of([i for i, _ in ranked])
    groups: list[Group] = []
    kept_by_scan: dict[str, list[Group]] = {}
    for iid, score in ranked:
        scan = scan_of.get(iid)
        mine = pts.get(iid)
        if scan is None or mine is None:
            continue
        home = next((g for g in kept_by_scan.get(scan, ())
                     if any(x >= t for x, t in zip(overlap(pts[g.id], mine), (iou, containment)))), None)
        if home is not None:
            home.folded.append(iid)
        elif len(groups) < k:
            g = Group(iid, score)
            groups.append(g)
            kept_by_scan.setdefault(scan, []).append(g)
    return groups
