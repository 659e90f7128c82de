"""Durable, all-or-nothing file writes for a home folder.

:func:`atomic_write` fills a temp file beside the target (so ``os.replace`` is atomic), flushes and fsyncs
it, renames it over the target and then fsyncs the folder so the rename itself survives a power loss.
The temp file is created with mode ``0o666`` filtered by the process umask, like any file ``open()``
creates: a home folder shared with other users stays readable by them (``tempfile.mkstemp`` would make
every file ``0o600``).

Imports only the standard library.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir", "unlink_quietly"]

log = logging.getLogger(__name__)

_NEW_FILE_MODE = 0o666  # the umask takes away what the user does not want shared
_TEMP_ATTEMPTS = 100


def fsync_dir(folder: Path | str) -> None:
    """fsync a directory so that renames / unlinks inside it are durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusively created ``.<name>.<random>.tmp`` beside ``path``: (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temp file name for {path.name} after {_TEMP_ATTEMPTS} tries")


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` all-or-nothing: ``write(f)`` fills a temp file beside it, which then replaces it.

    The temp file is named ``.<name>.<random>.tmp`` in the same folder and is removed if ``write`` or the
    sync fails. The new file's mode is ``0o666`` minus the umask.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # also on KeyboardInterrupt: never leave a half-written temp file behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def unlink_quietly(path: Path) -> None:
    """Delete ``path`` if it exists; a failure is logged, not raised (the next writer's recovery retries)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not delete %s: %s", path, exc)
