"""Import precomputed instance masks from files.

Supported formats (chosen by suffix):

* ``.npz``: the project's own sparse format (:meth:`MaskSet.save_npz` / :meth:`MaskSet.load_npz`).
* ``.pt`` / ``.pth``: a ``torch.save`` of a dense ``(num_points, num_masks)`` 0/1 matrix, either a numpy
  array (what OpenMask3D's mask module writes as ``<scene>_masks.pt``, float16 or float32) or a torch
  tensor. It is read with ``torch.load(weights_only=True)``; numpy arrays need a handful of numpy globals,
  which are allow-listed for that one call (:data:`NUMPY_SAFE_GLOBALS`) - nothing is ever unpickled freely.

Dense matrices are turned into sparse masks one column at a time, so no second dense copy (not even a
boolean one) of the whole matrix is made.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scenegrep.errors import one_line
from scenegrep.indexer.proposals.base import MaskFileError, MaskSet
from scenegrep.indexer.weights import safe_torch_load

if TYPE_CHECKING:
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)

NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pt", ".pth")


def _numpy_safe_globals() -> list:
    """The globals a pickled numpy array needs, and nothing else.

    A pickled ndarray is ``_reconstruct(ndarray, (0,), b'b')`` followed by ``ndarray.__setstate__`` with a
    ``dtype`` (itself ``dtype('f2', False, True)`` plus ``__setstate__``). torch's weights-only unpickler
    calls ``__setstate__`` only on allow-listed types, hence the concrete dtype classes (numpy >= 1.25
    makes ``type(np.dtype('f2'))`` a ``numpy.dtypes.Float16DType``). ``_codecs.encode`` (for the byte
    payload) is already allowed by torch. Files written under numpy 1.x name ``numpy.core.multiarray``;
    under numpy 2 that path is an alias, allow-listed by name with torch's ``(obj, "module.name")`` form.
    """
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    dtype_classes = {type(np.dtype(t)) for t in
                     ("f2", "f4", "f8", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "?")}
    names = ["numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"]
    return [np.ndarray, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__),
            *[(_reconstruct, name) for name in names]]


def _refused(message: str, is_zip: bool) -> str:
    lines = message.strip().splitlines()
    detail = next((ln.strip() for ln in lines if "Unsupported global" in ln), lines[0].strip() if lines else "")
    return f"not a mask matrix (refused to unpickle: {one_line(detail)[:200]})"


def _torch_load(path: Path) -> Any:
    return safe_torch_load(path, MaskFileError, safe_globals=_numpy_safe_globals(), mmap=False, refused=_refused)


def dense_to_maskset(dense: Any, path: Path | str) -> MaskSet:
    """A dense (num_points, num_masks) 0/1 numpy array or torch tensor -> :class:`MaskSet`, column-wise.

    Each column is scanned on its own (``np.flatnonzero`` of a strided view), so the peak extra memory is
    one column, never a copy of the matrix. Values other than 0 and 1 (including NaN) raise
    :class:`MaskFileError`.
    """
    path = Path(path)
    if not isinstance(dense, np.ndarray):
        import torch

        if not isinstance(dense, torch.Tensor):
            raise MaskFileError(path, "expected a (num_points, num_masks) array or tensor, "
                                      f"got {type(dense).__name__}")
        if dense.layout != torch.strided:
            raise MaskFileError(path, f"expected a dense tensor, got layout {dense.layout}")
        if dense.ndim != 2:
            raise MaskFileError(path, f"expected a (num_points, num_masks) matrix, got shape {tuple(dense.shape)}")
        # A tensor's strides may repeat one stored value over any shape (stride 0): the matrix must be
        # backed by as many bytes as it has values, or scanning it would take time the file does not justify.
        if dense.numel() * dense.element_size() > dense.untyped_storage().nbytes():
            raise MaskFileError(path, f"tensor of shape {tuple(dense.shape)} is not backed by its own data "
                                      "(overlapping strides)")
        dense = dense.detach().cpu()
        if dense.dtype == torch.bfloat16:  # numpy has no bfloat16; 0 and 1 are exact in float32
            dense = dense.float()
        try:
            dense = dense.numpy()  # shares memory with the tensor
        except (TypeError, RuntimeError) as e:  # dtypes numpy lacks (float8, complex32, ...)
            raise MaskFileError(path, f"expected a numeric 0/1 matrix, got dtype {dense.dtype}") from e
    if dense.ndim != 2:
        raise MaskFileError(path, f"expected a (num_points, num_masks) matrix, got shape {tuple(dense.shape)}")
    if not (np.issubdtype(dense.dtype, np.number) or dense.dtype == np.bool_):
        raise MaskFileError(path, f"expected a numeric 0/1 matrix, got dtype {dense.dtype}")
    n, m = dense.shape
    if n == 0 and m:
        raise MaskFileError(path, f"mask matrix of shape {(n, m)} covers no points")
    blocks: list[np.ndarray] = []
    sizes = np.zeros(m, dtype=np.int64)
    for j in range(m):
        col = dense[:, j]
        idx = np.flatnonzero(col)  # ascending, unique: exactly a MaskSet block
        if idx.size and not np.all(col[idx] == 1):
            bad = col[idx][col[idx] != 1][0]
            raise MaskFileError(path, f"mask {j} holds {bad!r}; masks must be 0/1")
        blocks.append(idx.astype(np.uint32))
        sizes[j] = idx.size
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    idx_all = np.concatenate(blocks) if blocks else np.zeros(0, np.uint32)
    return MaskSet(idx_all, offsets, np.ones(m, np.float32), n)


def load_mask_file(path: Path | str, num_points: int | None = None) -> MaskSet:
    """Read a mask file (``.npz``, ``.pt``/``.pth``) and, when given, check it covers ``num_points`` points."""
    path = Path(path)
    if not path.is_file():
        raise MaskFileError(path, "no such mask file")
    suffix = path.suffix.lower()
    if suffix in NPZ_SUFFIXES:
        masks = MaskSet.load_npz(path)
    elif suffix in TORCH_SUFFIXES:
        masks = dense_to_maskset(_torch_load(path), path)
    else:
        raise MaskFileError(path, f"unknown mask file type {path.suffix!r} (expected .npz, .pt or .pth)")
    if num_points is not None and masks.num_points != num_points:
        raise MaskFileError(path, f"masks cover {masks.num_points} points but the scan has {num_points}")
    log.debug("%s: %d masks over %d points", path, len(masks), masks.num_points)
    return masks


class FileProposer:
    """Proposes the masks stored in a file (see the module docstring for formats).

    Attributes:
        path: the mask file; ``{name}`` in it is replaced by the scan's name, so one proposer can serve
            many scans (``masks/{name}_masks.pt``).
    """

    name = "file"

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def path_for(self, scan: "Scan") -> Path:
        return Path(str(self.path).replace("{name}", scan.name))

    def propose(self, scan: "Scan") -> MaskSet:
        masks = load_mask_file(self.path_for(scan), scan.num_points)
        bad = (masks.scores < 0) | (masks.scores > 1) | ~np.isfinite(masks.scores)
        if bad.any():
            # the Proposer contract is scores in [0, 1]; clip rather than reject a usable file
            log.warning("%s: %d mask scores outside [0, 1] clipped", self.path_for(scan), int(bad.sum()))
            masks.scores = np.clip(np.nan_to_num(masks.scores, nan=0.0), 0.0, 1.0).astype(np.float32)
        return masks
