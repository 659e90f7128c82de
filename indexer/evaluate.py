"""Class-agnostic instance-mask AP, computed exactly as ScanNet's ``evaluate_semantic_instance.py``.

The official evaluator (ScanNet ``BenchmarkScripts/3d_evaluation``; the same code ships with Mask3D and
OpenMask3D) is replicated with all ground-truth instances treated as one class:

* IoU thresholds ``np.arange(0.5, 0.95, 0.05)`` (0.50 ... 0.90) for AP, plus 0.5 (AP50) and 0.25 (AP25);
  an overlap counts when ``IoU > threshold`` (strictly).
* ``min_region_size = 100``: predicted masks with fewer points are discarded before anything else;
  ground-truth instances with fewer points are not evaluated (never false negatives) but are *ignored*.
* Points whose ground-truth id is 0 are void (unannotated).
* Matching, per ground-truth instance in ascending id order, over the predictions that intersect it in
  prediction order: the first unvisited prediction with ``IoU > th`` becomes the match (and is marked
  visited); every further one is a false positive carrying the lower of the two confidences, the gt keeping
  the higher. Unmatched gt instances are "hard" false negatives.
* A prediction that overlaps no gt instance (of any size) with ``IoU > th`` is a false positive unless most
  of it is ignored: ``(|pred & void| + |pred & small gt|) / |pred| > th`` exempts it.
* The precision/recall curve: scores sorted ascending, one point per unique score (precision and recall of
  keeping every example with that score or higher), then the artificial point (recall 0, precision 1); the
  area is ``precision . np.convolve(recall_padded, [-0.5, 0, 0.5], 'valid')``.
* No valid gt instance -> AP is NaN; gt but no predictions -> 0.

With ``per_instance=True`` the result also lists, for every ground-truth instance (small ones too, marked
``ignored``), its best IoU with any evaluated prediction, so a failure can be looked at
(``instances: [{"gt", "points", "best_iou", "ignored"}]``).

Ground truth comes from ``gt_instances.npy`` (one id per point, :func:`load_gt`) or, when a scan has none,
from its 2D label maps (``frame-*.label.png`` in the 7-Scenes layout, ``instance-filt/<id>.png`` in the
ScanNet layout): each label lifted to the points by projection, depth test and a majority vote over the
frames (:func:`scenegrep.indexer.labelmaps.lift_label_maps`; :func:`load_ground_truth` picks the source).

Overlaps are computed with one sparse product of the (masks x points) CSR matrix and a (points x gt) one-hot
matrix, so nothing dense over points x masks is ever built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import scipy.sparse as sp

from scenegrep.errors import InputFileError
from scenegrep.indexer.proposals.base import MaskSet, Proposer

if TYPE_CHECKING:
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)

#: IoU thresholds averaged into AP (0.50, 0.55, ..., 0.90), exactly the official ``np.arange``.
AP_THRESHOLDS: np.ndarray = np.arange(0.5, 0.95, 0.05)
#: The official list evaluated: the AP thresholds plus 0.25.
ALL_THRESHOLDS: np.ndarray = np.append(AP_THRESHOLDS, 0.25)
#: Smallest mask (predicted or ground truth) that is evaluated, in points.
MIN_REGION_SIZE = 100


@dataclass
class MaskAP:
    """Class-agnostic average precision of instance masks.

    Attributes:
        ap: mean AP over IoU thresholds 0.50:0.05:0.90 (NaN when there is no valid gt instance).
        ap50: AP at IoU > 0.5.
        ap25: AP at IoU > 0.25.
        per_threshold: {threshold rounded to 2 decimals: AP} for all 10 thresholds.
        num_gt: gt instances evaluated (>= 100 points).
        num_gt_ignored: gt instances under 100 points (ignored).
        num_pred: predicted masks evaluated (>= 100 points).
        num_pred_ignored: predicted masks under 100 points (discarded).
        num_scans: scans pooled into these numbers.
        instances: with ``per_instance``: per gt instance ``{"gt": id, "points": n, "best_iou": IoU,
            "ignored": under min_region_size}`` in ascending id order; None otherwise.
        gt_source: where the ground truth came from (``"gt_instances.npy"`` or ``"label maps (K frames)"``),
            when known.
    """

    ap: float
    ap50: float
    ap25: float
    per_threshold: dict[float, float] = field(default_factory=dict)
    num_gt: int = 0
    num_gt_ignored: int = 0
    num_pred: int = 0
    num_pred_ignored: int = 0
    num_scans: int = 1
    instances: list[dict] | None = None
    gt_source: str | None = None

    def as_dict(self) -> dict:
        out = {"ap": self.ap, "ap50": self.ap50, "ap25": self.ap25,
               "per_threshold": {f"{k:.2f}": v for k, v in self.per_threshold.items()},
               "num_gt": self.num_gt, "num_gt_ignored": self.num_gt_ignored, "num_pred": self.num_pred,
               "num_pred_ignored": self.num_pred_ignored, "num_scans": self.num_scans}
        if self.gt_source is not None:
            out["gt_source"] = self.gt_source
        if self.instances is not None:
            out["instances"] = self.instances
        return out


@dataclass
class _ScanMatches:
    """Everything the official matching needs about one scan (all small: preds x gt).

    Attributes:
        inter: (P, G) int64 intersection counts, P predictions (>= min size, input order), G gt ids.
        pred_size: (P,) points per prediction.
        gt_size: (G,) points per gt instance (ascending gt id order).
        void_inter: (P,) points of each prediction on void (gt id 0).
        conf: (P,) float64 confidences.
        gt_valid: (G,) gt instances that are evaluated (>= min size).
    """

    inter: np.ndarray
    pred_size: np.ndarray
    gt_size: np.ndarray
    void_inter: np.ndarray
    conf: np.ndarray
    gt_valid: np.ndarray


def _assign(pred: MaskSet, gt_instances: np.ndarray, min_region_size: int) -> tuple[_ScanMatches, int]:
    m, n_small, _ = _assign_ids(pred, gt_instances, min_region_size)
    return m, n_small


def _assign_ids(pred: MaskSet, gt_instances: np.ndarray,
                min_region_size: int) -> tuple[_ScanMatches, int, np.ndarray]:
    gt = np.asarray(gt_instances).reshape(-1)
    if gt.size != pred.num_points:
        raise ValueError(f"ground truth has {gt.size} points, masks refer to {pred.num_points}")
    keep = pred.sizes >= min_region_size
    n_small_pred = int((~keep).sum())
    pred = pred.select(keep)
    annotated = np.flatnonzero(gt != 0)
    gt_ids, col = np.unique(gt[annotated], return_inverse=True)
    n_gt = gt_ids.size
    # (points x (gt + void)) one-hot, void as the last column; one sparse product gives every overlap
    rows = np.concatenate([annotated, np.flatnonzero(gt == 0)])
    cols = np.concatenate([col.reshape(-1), np.full(gt.size - annotated.size, n_gt)])
    onehot = sp.csc_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(gt.size, n_gt + 1))
    prod = np.asarray((pred.to_csr() @ onehot).toarray(), dtype=np.int64)  # (P, G + 1)
    gt_size = np.bincount(col.reshape(-1), minlength=n_gt).astype(np.int64)
    return _ScanMatches(prod[:, :n_gt], pred.sizes.astype(np.int64), gt_size, prod[:, n_gt],
                        pred.scores.astype(np.float64), gt_size >= min_region_size), n_small_pred, gt_ids


def _collect(m: _ScanMatches, th: float, y_true: list, y_score: list) -> int:
    """The official per-scan loop for one threshold; appends to ``y_true``/``y_score``, returns hard FNs."""
    p_count = m.pred_size.size
    visited = np.zeros(p_count, dtype=bool)
    union = m.pred_size[:, None] + m.gt_size[None, :] - m.inter
    iou = np.where(m.inter > 0, m.inter / np.maximum(union, 1), 0.0)
    hard_fn = 0
    for g in np.flatnonzero(m.gt_valid):
        matched = False
        score = -np.inf
        for p in np.flatnonzero(m.inter[:, g] > 0):  # prediction order, as gt['matched_pred']
            if visited[p] or not iou[p, g] > th:
                continue
            if matched:
                # a second prediction on a matched gt: the lower confidence becomes a false positive
                y_true.append(0.0)
                y_score.append(min(score, m.conf[p]))
                score = max(score, m.conf[p])
            else:
                matched = True
                score = m.conf[p]
                visited[p] = True
        if matched:
            y_true.append(1.0)
            y_score.append(score)
        else:
            hard_fn += 1
    # Unmatched predictions: IoU > th with any gt instance (small ones too) means "not a false positive";
    # otherwise it is one unless the ignored part (void + small gt) exceeds th.
    found = (iou > th).any(axis=1)
    ignored = m.void_inter + (m.inter * ~m.gt_valid[None, :]).sum(axis=1)
    fp = ~found & (ignored / m.pred_size <= th)
    y_true.extend([0.0] * int(fp.sum()))
    y_score.extend(m.conf[fp].tolist())
    return hard_fn


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    """The official precision/recall construction and step integration."""
    order = np.argsort(y_score)
    y_score_sorted = y_score[order]
    cumsum = np.cumsum(y_true[order])
    _, unique_indices = np.unique(y_score_sorted, return_index=True)
    num_examples = y_score_sorted.size
    num_true = cumsum[-1] if cumsum.size else 0.0
    precision = np.zeros(unique_indices.size + 1)
    recall = np.zeros(unique_indices.size + 1)
    cumsum = np.append(cumsum, 0.0)  # so that index -1 (the first unique score) reads 0
    c = cumsum[unique_indices - 1]
    tp = num_true - c
    fp = num_examples - unique_indices - tp
    fn = c + hard_fn
    precision[:-1] = tp / (tp + fp)
    recall[:-1] = tp / (tp + fn)
    precision[-1], recall[-1] = 1.0, 0.0  # the artificial first point of the curve
    recall_for_conv = np.append(np.append(recall[0], recall), 0.0)
    step_widths = np.convolve(recall_for_conv, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, step_widths))


def evaluate_many(pairs: Iterable[tuple[MaskSet, np.ndarray]],
                  min_region_size: int = MIN_REGION_SIZE) -> MaskAP:
    """AP over several scans pooled, as the official script does for a whole benchmark split."""
    scans: list[_ScanMatches] = []
    n_small_pred = 0
    for pred, gt in pairs:
        m, small = _assign(pred, gt, min_region_size)
        scans.append(m)
        n_small_pred += small
    has_gt = any(m.gt_valid.any() for m in scans)
    has_pred = any(m.pred_size.size for m in scans)
    per: dict[float, float] = {}
    for th in ALL_THRESHOLDS:
        if not has_gt:
            ap = float("nan")
        elif not has_pred:
            ap = 0.0
        else:
            y_true: list[float] = []
            y_score: list[float] = []
            hard_fn = sum(_collect(m, float(th), y_true, y_score) for m in scans)
            ap = _average_precision(np.asarray(y_true), np.asarray(y_score), hard_fn)
        per[round(float(th), 2)] = ap
    ap_vals = np.array([per[round(float(t), 2)] for t in AP_THRESHOLDS])
    return MaskAP(
        ap=float(np.mean(ap_vals)) if has_gt else float("nan"),
        ap50=per[0.5],
        ap25=per[0.25],
        per_threshold=per,
        num_gt=int(sum(m.gt_valid.sum() for m in scans)),
        num_gt_ignored=int(sum((~m.gt_valid).sum() for m in scans)),
        num_pred=int(sum(m.pred_size.size for m in scans)),
        num_pred_ignored=n_small_pred,
        num_scans=len(scans),
    )


def instance_ious(pred: MaskSet, gt_instances: np.ndarray, min_region_size: int = MIN_REGION_SIZE) -> list[dict]:
    """Per gt instance (ascending id): ``{"gt", "points", "best_iou", "ignored"}``, the best IoU over the
    predictions the evaluation keeps (>= ``min_region_size`` points); ``ignored`` marks gt instances under
    ``min_region_size`` (not evaluated by AP)."""
    m, _, gt_ids = _assign_ids(pred, gt_instances, min_region_size)
    union = m.pred_size[:, None] + m.gt_size[None, :] - m.inter
    iou = np.where(m.inter > 0, m.inter / np.maximum(union, 1), 0.0)
    best = iou.max(axis=0) if iou.shape[0] else np.zeros(gt_ids.size)
    return [{"gt": int(g), "points": int(n), "best_iou": float(b), "ignored": bool(not v)}
            for g, n, b, v in zip(gt_ids.tolist(), m.gt_size.tolist(), best.tolist(), m.gt_valid.tolist())]


def evaluate_masks(pred: MaskSet, gt_instances: np.ndarray, min_region_size: int = MIN_REGION_SIZE, *,
                   per_instance: bool = False) -> MaskAP:
    """Class-agnostic AP of ``pred`` against per-point gt instance ids (int, 0 = unannotated); with
    ``per_instance`` also each gt instance's best IoU (:func:`instance_ious`)."""
    res = evaluate_many([(pred, gt_instances)], min_region_size)
    if per_instance:
        res.instances = instance_ious(pred, gt_instances, min_region_size)
    return res


class GroundTruthError(InputFileError):
    """Ground truth that cannot be used (missing, unreadable, or not one id per point)."""


def load_gt(scan_dir: Path | str, num_points: int | None = None) -> np.ndarray:
    """``<scan_dir>/gt_instances.npy`` (int per point, 0 = none), checked against ``num_points`` if given."""
    path = Path(scan_dir) / "gt_instances.npy"
    if not path.is_file():
        raise GroundTruthError(path, "no ground truth (gt_instances.npy) in this scan folder")
    try:
        gt = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise GroundTruthError(path, f"not a readable .npy array ({e})") from None
    if gt.dtype.kind not in "iu" or gt.ndim != 1:
        raise GroundTruthError(path, f"expected one integer instance id per point, got {gt.dtype} {gt.shape}")
    if num_points is not None and gt.shape != (num_points,):
        raise GroundTruthError(path, f"{gt.size} labels for {num_points} points")
    return gt


def load_ground_truth(scan: "Scan", *, depth_threshold: float = 0.05) -> tuple[np.ndarray, str]:
    """(per-point gt ids, where they came from) for a scan read from ``scan.root``: its
    ``gt_instances.npy`` when present (:func:`load_gt`, checked against the point count), else its label
    maps lifted to the points (:func:`scenegrep.indexer.labelmaps.lift_label_maps`, ``depth_threshold`` in
    metres).

    Raises:
        GroundTruthError: ``gt_instances.npy`` is unreadable or has the wrong number of labels.
        scenegrep.indexer.labelmaps.LabelMapError: neither file kind is there, or a label map is unreadable.
    """
    from scenegrep.indexer.labelmaps import frames_with_label_maps, lift_label_maps

    if (Path(scan.root) / "gt_instances.npy").is_file():
        return load_gt(scan.root, scan.num_points), "gt_instances.npy"
    positions = frames_with_label_maps(scan)
    gt = lift_label_maps(scan, depth_threshold=depth_threshold, frame_positions=positions or None)
    return gt, f"label maps ({len(positions)} frames)"


def evaluate_scan_dir(scan_dir: Path | str, proposer: Proposer, *, per_instance: bool = False) -> MaskAP:
    """Read the scan, run ``proposer`` on it and evaluate against its ground truth
    (:func:`load_ground_truth`: ``gt_instances.npy``, else its label maps)."""
    from scenegrep.indexer.scans import read_scan

    scan = read_scan(Path(scan_dir))
    gt, source = load_ground_truth(scan)
    res = evaluate_masks(proposer.propose(scan), gt, per_instance=per_instance)
    res.gt_source = source
    return res
