"""Segment files: ``<home>/vectors/seg-<token>.faiss``, one immutable FAISS index each.

A segment holds the vectors of one commit (or of one merge) under their instance ids. It is written once
(temp file, fsync, rename, fsync of the folder: :func:`scenegrep.storage.fileio.atomic_write`) and never
changed; the catalog's ``segments`` row that makes it live records its factory string, count, id range,
size and checksums (storage/checksums.py). Opening maps it into memory (``IO_FLAG_MMAP`` for inverted
lists, ``IO_FLAG_MMAP_IFC`` for flat codes), so a reader's open costs almost nothing and only the pages
a search touches become resident.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from scenegrep.storage.checksums import CrcWriter, cheap_problem, edge_crc32, full_problem
from scenegrep.storage.errors import VectorIndexError
from scenegrep.storage.fileio import atomic_write
from scenegrep.storage.indextypes import build_index

__all__ = ["SegmentMeta", "write_segment", "open_segment", "segment_problem", "SEGMENT_GLOB"]

log = logging.getLogger(__name__)

SEGMENT_GLOB = "seg-*.faiss"
# inverted lists map with IO_FLAG_MMAP, flat codes with IO_FLAG_MMAP_IFC (FAISS refuses both at once)
_MMAP_IVF = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
_MMAP_FLAT = faiss.IO_FLAG_MMAP_IFC


@dataclass(frozen=True)
class SegmentMeta:
    """A segment as the catalog records it.

    Attributes:
        id: catalog id (0 until the commit inserts the row).
        filename: name in ``<home>/vectors``. factory: FAISS factory string.
        ntotal: vectors in the file (tombstoned ones included). min_id, max_id: instance id range.
        size_bytes, crc32, edge_crc32: the file's checksums (see storage/checksums.py).
    """

    id: int
    filename: str
    factory: str
    ntotal: int
    min_id: int
    max_id: int
    size_bytes: int
    crc32: int
    edge_crc32: int

    @classmethod
    def from_row(cls, row: object) -> SegmentMeta:
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})

    def row_values(self) -> dict[str, object]:
        """The ``segments`` columns (all but id and created_at)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "id"}


def write_segment(folder: Path, ids: np.ndarray, vectors: np.ndarray, factory: str) -> SegmentMeta:
    """Build a ``factory`` index of ``vectors`` (n, D) under ``ids`` (n,) and write it as a new segment file.

    Returns its meta with id 0 (the commit gives the id). The file is complete and synced on return.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    index = build_index(factory, ids, np.ascontiguousarray(vectors, dtype=np.float32))
    filename = f"seg-{secrets.token_hex(8)}.faiss"
    path = folder / filename
    crc: list[CrcWriter] = []

    def write(f: BinaryIO) -> None:
        out = CrcWriter(f.write)
        faiss.write_index(index, faiss.PyCallbackIOWriter(out))
        crc.append(out)

    atomic_write(path, write)
    with open(path, "rb") as f:
        edge = edge_crc32(f, crc[0].size)
    log.debug("wrote segment %s: %d vectors, %s, %d bytes", filename, len(ids), factory, crc[0].size)
    return SegmentMeta(
        id=0,
        filename=filename,
        factory=factory,
        ntotal=int(len(ids)),
        min_id=int(ids.min()) if len(ids) else 0,
        max_id=int(ids.max()) if len(ids) else 0,
        size_bytes=crc[0].size,
        crc32=crc[0].crc32,
        edge_crc32=edge,
    )


def segment_problem(folder: Path, meta: SegmentMeta, *, full: bool) -> str | None:
    """None if the segment file matches its catalog row (cheap: size + edges; full: every byte)."""
    path = folder / meta.filename
    if full:
        return full_problem(path, meta.size_bytes, meta.crc32)
    return cheap_problem(path, meta.size_bytes, meta.edge_crc32)


def open_segment(folder: Path, meta: SegmentMeta, dim: int) -> faiss.Index:
    """Memory-map a segment file and check it against its row (count, dimension).

    Raises:
        FileNotFoundError: the file is gone (a merge retired it after the caller's snapshot).
        VectorIndexError: FAISS cannot read it, or it holds another count or dimension. Names the file.
    """
    path = folder / meta.filename
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        index = faiss.read_index(str(path), _MMAP_IVF if meta.factory.startswith("IVF") else _MMAP_FLAT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VectorIndexError(f"cannot read segment {path}: {first}") from exc
    if int(index.ntotal) != meta.ntotal or int(index.d) != dim:
        raise VectorIndexError(
            f"{path}: holds {index.ntotal} vectors of dimension {index.d}, "
            f"the catalog records {meta.ntotal} of dimension {dim}"
        )
    return index
