"""Errors for model weight files (Mask3D checkpoints, SAM checkpoints).

Every loader of a weights file raises a subclass of :class:`WeightsFileError`, whose ``str()`` is one
line naming the file and what is wrong with it, so the CLI can show it as is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable
from scenegrep.errors import InputFileError


class WeightsFileError(InputFileError):
    """A weights file that cannot be used: missing, not a checkpoint, or not the expected model
    (``path``: the file; ``problem``: what is wrong, one line)."""


#: First bytes of a zip archive (``torch.save``'s format since torch 1.6).
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    """sha256 hex of a file, read in 4 MiB chunks (weights files are up to a few GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_torch_file(path: Path, error: Callable[[Path, str], Exception] = WeightsFileError) -> bool:
    """Fail with ``error(path, problem)`` unless ``path`` is a non-empty zip or pickle file (the two
    ``torch.save`` formats); returns True for a zip archive. Checked before unpickling so a text file, a
    PLY or a directory gets a plain one-line answer instead of a pickle error."""
    if not path.exists():
        raise error(path, "no such file")
    if path.is_dir():
        raise error(path, "is a directory, not a checkpoint file")
    if not path.is_file():
        raise error(path, "is not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as e:
        raise error(path, f"cannot be read: {e.strerror or e}") from e
    if not head:
        raise error(path, "is empty (0 bytes), not a checkpoint")
    if head.startswith(ZIP_MAGIC):
        return True
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle PROTO: torch's legacy format
        return False
    raise error(path, f"is not a PyTorch checkpoint (neither a zip archive nor a pickle; it starts with {head!r})")
