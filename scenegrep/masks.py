"""Class-agnostic masks of one scan without a home: :func:`propose` and :func:`evaluate_masks`.

Both take the same proposer settings as indexing (:class:`~scenegrep.indexer.settings.IndexSettings`, or
its keyword options), so ``propose`` shows exactly the masks ``index`` would store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenegrep.errors import SettingsError
from scenegrep.indexer.settings import IndexSettings

if TYPE_CHECKING:
    from scenegrep.indexer.evaluate import MaskAP
    from scenegrep.indexer.proposals.base import MaskSet
    from scenegrep.indexer.scans import Scan

__all__ = ["propose", "evaluate_masks", "MaskEvaluation"]


@dataclass
class MaskEvaluation:
    """A proposer's class-agnostic AP on one annotated scan.

    Attributes:
        scan: the scan's name.
        proposer: the proposer's name.
        masks: number of proposed masks.
        ap, ap50, ap25: ScanNet protocol (AP averaged over IoU 0.5:0.95, at 0.5, at 0.25).
        gt_source: where the ground truth came from (``gt_instances.npy`` or the scan's 2D label maps).
        instances: with ``per_instance``: each ground-truth object's ``{"gt", "points", "best_iou",
            "ignored"}`` (``ignored``: under the protocol's 100-point minimum); else None.
    """

    scan: str
    proposer: str
    masks: int
    ap: float
    ap50: float
    ap25: float
    gt_source: str
    instances: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        if self.instances is None:
            d.pop("instances")
        return d


def _settings(settings: IndexSettings | None, options: dict[str, Any]) -> IndexSettings:
    if settings is not None and options:
        raise SettingsError("pass either settings= or keyword options, not both")
    return settings or IndexSettings.create(**options)


def _read(path: Path | str, settings: IndexSettings) -> "Scan":
    from scenegrep.indexer.scans import read_scan

    return read_scan(path, voxel_size=settings.voxel_size, depth_check=settings.depth_check)


def _propose(scan: "Scan", settings: IndexSettings) -> "MaskSet":
    from scenegrep.indexer.pipeline import IndexOptions, proposer_for

    job = IndexOptions(proposer=settings.proposer, masks=settings.masks,
                       proposer_options=settings.proposer_options(), voxel_size=settings.voxel_size,
                       depth_check=settings.depth_check)
    return proposer_for(scan, job).propose(scan)


def propose(path: Path | str, settings: IndexSettings | None = None, **options: Any) -> "MaskSet":
    """The class-agnostic masks the settings' proposer gives the scan folder ``path``."""
    settings = _settings(settings, options)
    return _propose(_read(path, settings), settings)


def evaluate_masks(path: Path | str, settings: IndexSettings | None = None, *, per_instance: bool = False,
                   **options: Any) -> MaskEvaluation:
    """Class-agnostic AP / AP50 / AP25 of the settings' proposer against the scan's ground truth:
    ``gt_instances.npy`` (one instance id per point, 0 = unannotated), else its 2D label maps
    (``frame-*.label.png``) lifted to the points by projection, depth test and majority vote. With
    ``per_instance`` each ground-truth object's best IoU is reported too."""
    from scenegrep.indexer.evaluate import evaluate_masks as ap_of, load_ground_truth

    settings = _settings(settings, options)
    scan = _read(path, settings)
    gt, source = load_ground_truth(scan)  # a bad ground truth fails before the proposals run
    masks = _propose(scan, settings)
    res: MaskAP = ap_of(masks, gt, per_instance=per_instance)
    return MaskEvaluation(scan=scan.name, proposer=settings.proposer, masks=len(masks), ap=float(res.ap),
                          ap50=float(res.ap50), ap25=float(res.ap25), gt_source=source, instances=res.instances)
