"""Class-agnostic mask proposers and their registry.

``make_proposer(name, **options)`` builds a :class:`~scenegrep.indexer.proposals.base.Proposer`:

* ``"geometric"`` (default, no weights): options are :class:`~scenegrep.indexer.proposals.geometric.GeometricConfig`
  fields (or ``config=GeometricConfig(...)``).
* ``"file"``: ``path=`` a mask file (``.npz`` or OpenMask3D ``*_masks.pt``).
* ``"mask3d"``: ``checkpoint=`` a Mask3D checkpoint; other options are
  :class:`~scenegrep.indexer.proposals.mask3d.proposer.Mask3DOptions` fields.
* ``"lifted"``: 2D masks of the frames lifted to 3D (:mod:`~scenegrep.indexer.proposals.lifted`). The 2D
  segmenter: ``segmenter=`` a :class:`~scenegrep.indexer.proposals.segmenters.Segmenter2D`, or SAM's
  automatic masks from ``sam_checkpoint=`` (+ ``sam_model=``, ``device=``, ``precision=``, ``sam_options=``)
  or from ``sam_refiner=`` (the features stage's loaded SAM, whose model is then shared); with none of
  these, the weight-free Felzenszwalb segmenter (logged). Other options are
  :class:`~scenegrep.indexer.proposals.lifted.LiftedConfig` fields (or ``config=``).
* ``"union"``: ``members=`` a list of proposer names or proposers (default geometric + lifted),
  ``member_options={name: {options}}``, ``weights=``, ``iou_threshold=``
  (:mod:`~scenegrep.indexer.proposals.union`). A name ``"a+b"`` is the union of ``a`` and ``b``.

Other proposers plug in with :func:`register_proposer`. Implementations are imported lazily, so importing
this package does not import torch or spconv.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from scenegrep.indexer.proposals.base import MaskFileError, MaskSet, Proposer

log = logging.getLogger(__name__)

__all__ = ["MaskFileError", "MaskSet", "Proposer", "make_proposer", "register_proposer", "proposer_names"]


def _geometric(**options: Any) -> Proposer:
    from scenegrep.indexer.proposals.geometric import GeometricConfig, GeometricProposer

    config = options.pop("config", None)
    if config is not None and options:
        raise TypeError("pass either config= or GeometricConfig fields, not both")
    return GeometricProposer(config if config is not None else GeometricConfig(**options))


def _file(**options: Any) -> Proposer:
    from scenegrep.indexer.proposals.files import FileProposer

    if "path" not in options:
        raise TypeError("the 'file' proposer needs path=<mask file>")
    return FileProposer(**options)


def _mask3d(**options: Any) -> Proposer:
    from scenegrep.indexer.proposals.mask3d.proposer import Mask3DOptions, Mask3DProposer

    if options.get("checkpoint") is None:
        raise ValueError("the 'mask3d' proposer needs a checkpoint (--checkpoint PATH to a Mask3D .ckpt)")
    return Mask3DProposer(Mask3DOptions(**options))


def _lifted(**options: Any) -> Proposer:
    from scenegrep.indexer.proposals.lifted import LiftedConfig, LiftedProposer
    from scenegrep.indexer.proposals.segmenters import (
        FelzenszwalbSegmenter,
        SamAutomaticSegmenter,
        load_sam_segmenter,
    )

    segmenter = options.pop("segmenter", None)
    checkpoint = options.pop("sam_checkpoint", None)
    model = options.pop("sam_model", None)
    refiner = options.pop("sam_refiner", None)
    sam_options = options.pop("sam_options", None)
    device = options.pop("device", "cpu")
    precision = options.pop("precision", "fp32")
    config = options.pop("config", None)
    if config is not None and options:
        raise TypeError("pass either config= or LiftedConfig fields, not both")
    config = config if config is not None else LiftedConfig(**options)
    if sum(x is not None for x in (segmenter, checkpoint, refiner)) > 1:
        raise TypeError("the 'lifted' proposer takes one of segmenter=, sam_checkpoint= or sam_refiner=")
    if checkpoint is not None:
        if model is None:
            raise ValueError(f"{checkpoint}: a SAM checkpoint needs its model name (vit_b, vit_l or vit_h)")
        segmenter = load_sam_segmenter(model, checkpoint, device=device, precision=precision, options=sam_options)
    elif refiner is not None:
        segmenter = SamAutomaticSegmenter.from_refiner(refiner, options=sam_options)
    elif segmenter is None:
        segmenter = FelzenszwalbSegmenter()
        log.warning("lifted proposer: no SAM checkpoint given, using the weight-free %s segmenter "
                    "(pass a SAM checkpoint for SAM's automatic masks)", segmenter.name)
    return LiftedProposer(segmenter, config)


def _union(**options: Any) -> Proposer:
    from scenegrep.indexer.proposals.union import DEFAULT_MEMBERS, UnionProposer

    members = options.pop("members", None) or list(DEFAULT_MEMBERS)
    member_options = options.pop("member_options", None) or {}
    unknown = set(member_options) - {m for m in members if isinstance(m, str)}
    if unknown:
        raise ValueError(f"member_options for proposers not in the union: {', '.join(sorted(unknown))}")
    built = [m if not isinstance(m, str) else make_proposer(m, **dict(member_options.get(m, {})))
             for m in members]
    return UnionProposer(built, **options)


_REGISTRY: dict[str, Callable[..., Proposer]] = {"geometric": _geometric, "file": _file, "mask3d": _mask3d,
                                                 "lifted": _lifted, "union": _union}


def register_proposer(name: str, factory: Callable[..., Proposer]) -> None:
    """Make ``make_proposer(name, **options)`` call ``factory(**options)``."""
    _REGISTRY[name] = factory


def proposer_names() -> list[str]:
    return sorted(_REGISTRY)


def make_proposer(name: str, **options: Any) -> Proposer:
    """Build the proposer called ``name`` with keyword ``options`` (ValueError for unknown names)."""
    if "+" in name:  # "geometric+lifted": the union of the named proposers
        from scenegrep.indexer.proposals.union import parse_proposer_list

        return _union(members=parse_proposer_list(name), **options)
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown proposer {name!r}; choose one of {', '.join(proposer_names())}") from None
    return factory(**options)
