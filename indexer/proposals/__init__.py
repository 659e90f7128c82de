"""Class-agnostic mask proposers and their registry.

``make_proposer(name, **options)`` builds a :class:`~scenegrep.indexer.proposals.base.Proposer`:

* ``"geometric"`` (default, no weights): options are :class:`~scenegrep.indexer.proposals.geometric.GeometricConfig`
  fields (or ``config=GeometricConfig(...)``).
* ``"file"``: ``path=`` a mask file (``.npz`` or OpenMask3D ``*_masks.pt``).
* ``"mask3d"``: ``checkpoint=`` a Mask3D checkpoint; other options are
  :class:`~scenegrep.indexer.proposals.mask3d.proposer.Mask3DOptions` fields.

Other proposers plug in with :func:`register_proposer`. Implementations are imported lazily, so importing
this package does not import torch or spconv.
"""

from __future__ import annotations

from typing import Any, Callable

from scenegrep.indexer.proposals.base import MaskFileError, MaskSet, Proposer

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


_REGISTRY: dict[str, Callable[..., Proposer]] = {"geometric": _geometric, "file": _file, "mask3d": _mask3d}


def register_proposer(name: str, factory: Callable[..., Proposer]) -> None:
    """Make ``make_proposer(name, **options)`` call ``factory(**options)``."""
    _REGISTRY[name] = factory


def proposer_names() -> list[str]:
    return sorted(_REGISTRY)


def make_proposer(name: str, **options: Any) -> Proposer:
    """Build the proposer called ``name`` with keyword ``options`` (ValueError for unknown names)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown proposer {name!r}; choose one of {', '.join(proposer_names())}") from None
    return factory(**options)
