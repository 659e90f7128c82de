"""Per-scan point files: ``<home>/points/<scan_id>.npz`` holding ``xyz`` (N, 3) float32 and ``rgb`` (N, 3) uint8.

Written atomically (:func:`scenegrep.storage.fileio.atomic_write`); the writer records each file's size and
CRC-32 in its scan row (storage/checksums.py) and every read checks them, so a truncated, damaged or
missing file is a one-line StoreError naming it, whatever numpy or zipfile would have raised.
"""

from __future__ import annotations

import zipfile
from collections.abc import Container, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from scenegrep.storage.checksums import FileFacts, file_facts, full_problem
from scenegrep.storage.errors import StoreError
from scenegrep.storage.fileio import atomic_write, unlink_quietly

__all__ = ["PointFiles"]

# what np.load raises for a missing, truncated or foreign file (BadZipFile is none of the others)
_READ_ERRORS = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile)


class PointFiles:
    """The point files of one home.

    Attributes:
        folder: ``<home>/points``.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, scan_id: int) -> Path:
        return self.folder / f"{int(scan_id)}.npz"

    def write(self, scan_id: int, xyz: np.ndarray, rgb: np.ndarray) -> FileFacts:
        """Write (or replace) the point file of ``scan_id`` all-or-nothing; returns its size and CRC-32."""

        def write(f: BinaryIO) -> None:
            np.savez(f, xyz=xyz, rgb=rgb)

        atomic_write(self.path(scan_id), write)
        return file_facts(self.path(scan_id))  # a few MB, just written: read back from the page cache

    def problem(self, scan_id: int, size: int | None, crc32: int | None) -> str | None:
        """None if the file matches the recorded facts (a missing record: only that it exists), else one line."""
        path = self.path(scan_id)
        if size is None or crc32 is None:
            return None if path.is_file() else f"point file {path}: missing"
        found = full_problem(path, size, crc32)
        return None if found is None else f"point file {found}"

    def read(self, scan_id: int, size: int | None = None, crc32: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) float32 xyz and (N, 3) uint8 rgb; StoreError naming the file if it cannot be read or does
        not match the recorded ``size`` / ``crc32`` (when given)."""
        path = self.path(scan_id)
        if size is not None and crc32 is not None:
            found = self.problem(scan_id, size, crc32)
            if found is not None:
                raise StoreError(f"cannot read {found}; run `scenegrep verify --repair`")
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["xyz"], data["rgb"]
        except _READ_ERRORS as exc:
            raise StoreError(f"cannot read point file {path}: {exc}") from exc

    def delete(self, scan_id: int) -> None:
        """Delete the file of ``scan_id`` if present (a failure is logged; recovery retries)."""
        unlink_quietly(self.path(scan_id))

    def strays(self, live_scan_ids: Container[int]) -> Iterator[Path]:
        """Files in the folder that are not the point file of one of ``live_scan_ids``."""
        for f in self.folder.iterdir():
            if not (f.suffix == ".npz" and f.stem.isdigit() and int(f.stem) in live_scan_ids):
                yield f

