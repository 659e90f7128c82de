"""Checksums of the files a home holds (segments, point files), and the cheap and full checks on them.

Two facts are recorded per file in the catalog:

- ``crc32``: zlib's CRC-32 of every byte (about 4 GB/s here, so hashing a 1M-vector SQ8 segment takes
  about 0.2 s); :func:`full_problem` re-reads the whole file.
- ``edge_crc32``: CRC-32 of the first and last :data:`EDGE` bytes (the FAISS header, the inverted-list
  directory and the id map's tail); :func:`cheap_problem` checks it together with the file size, at the
  cost of two 64 KiB reads whatever the file's size. Opening a home runs only the cheap check.

CRC-32 is not a cryptographic hash: it guards against damage (disk errors, truncation, stray writes),
not against someone forging a file, which nothing in a home folder is meant to stop.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["FileFacts", "EDGE", "file_facts", "edge_crc32", "cheap_problem", "full_problem", "CrcWriter"]

EDGE = 64 * 1024  # bytes read from each end by the cheap check
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileFacts:
    """What the catalog records about one file.

    Attributes:
        size: bytes. crc32: CRC-32 of every byte. edge_crc32: CRC-32 of the first and last EDGE bytes.
    """

    size: int
    crc32: int
    edge_crc32: int


def edge_crc32(f: BinaryIO, size: int) -> int:
    """CRC-32 of the first :data:`EDGE` bytes followed by the last :data:`EDGE` bytes of an open file."""
    f.seek(0)
    crc = zlib.crc32(f.read(min(EDGE, size)))
    if size > EDGE:
        f.seek(max(EDGE, size - EDGE))
        crc = zlib.crc32(f.read(), crc)
    return crc


def file_facts(path: Path | str) -> FileFacts:
    """Size, full CRC-32 and edge CRC-32 of ``path`` (reads every byte once)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
        size = f.tell()
        edge = edge_crc32(f, size)
    return FileFacts(size, crc, edge)


def cheap_problem(path: Path, size: int, edge: int, *, read_from: Path | str | None = None) -> str | None:
    """None if ``path`` has the recorded size and edge CRC, else a one-line problem naming it.

    ``read_from``: read another name of the same file instead (e.g. ``/proc/self/fd/N`` of a descriptor
    that keeps a deleted file alive); messages still name ``path``.
    """
    source = path if read_from is None else read_from
    try:
        actual = os.stat(source).st_size
        if actual != size:
            return f"{path}: {actual} bytes, the catalog records {size} (truncated or overwritten)"
        with open(source, "rb") as f:
            if edge_crc32(f, size) != edge:
                return f"{path}: checksum of its first/last {EDGE // 1024} KiB does not match the catalog (damaged)"
    except FileNotFoundError:
        return f"{path}: missing"
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    return None


def full_problem(path: Path, size: int, crc: int, *, read_from: Path | str | None = None) -> str | None:
    """None if every byte of ``path`` matches the recorded size and CRC-32, else a one-line problem
    (``read_from``: as for :func:`cheap_problem`)."""
    try:
        facts = file_facts(path if read_from is None else read_from)
    except FileNotFoundError:
        return f"{path}: missing"
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if facts.size != size:
        return f"{path}: {facts.size} bytes, the catalog records {size} (truncated or overwritten)"
    if facts.crc32 != crc:
        return f"{path}: checksum does not match the catalog (damaged bytes)"
    return None


class CrcWriter:
    """A ``write(bytes)`` callable that forwards to ``write`` and keeps the CRC-32 and size of all it saw."""

    def __init__(self, write: Callable[[bytes], object]):
        self._write = write
        self.crc32 = 0
        self.size = 0

    def __call__(self, data: bytes) -> int:
        self._write(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        self.size += len(data)
        return len(data)
