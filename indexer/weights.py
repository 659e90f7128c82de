"""Reading ``torch.save`` files safely, and the errors for model weight files.

Every loader of a weights file raises a subclass of :class:`WeightsFileError`, whose ``str()`` is one
line naming the file and what is wrong with it, so the CLI can show it as is. :func:`safe_torch_load` is
the one place a ``torch.save`` file (SAM and Mask3D checkpoints, OpenMask3D mask files) is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from scenegrep.errors import InputFileError, one_line


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


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def describe_refusal(message: str, is_zip: bool) -> str:
    """The default one-line problem for a file torch's weights-only unpickler refused."""
    if "Unsupported global" in message:
        return "holds Python objects other than tensors; refused (loaded with weights_only=True)"
    return "not a PyTorch checkpoint (unreadable pickle)"


def describe_damage(exc: BaseException) -> str:
    """The one-line problem for a file ``torch.load`` failed on for any reason but a refusal."""
    first = _first_line(str(exc))
    if "magic number" in first:  # a pickle, but not torch.save's legacy format
        return "is a pickle but not a PyTorch checkpoint (no torch.save magic number)"
    if "PytorchStreamReader" in first:
        first = first.split(".")[0]
    return f"is not a readable PyTorch checkpoint ({type(exc).__name__}: {one_line(first)[:200]}); truncated or corrupt"


def safe_torch_load(
    path: Path | str,
    error: Callable[[Path, str], Exception] = WeightsFileError,
    *,
    safe_globals: Sequence[Any] = (),
    mmap: bool = True,
    refused: Callable[[str, bool], str] = describe_refusal,
    fallback: Callable[[pickle.UnpicklingError, bool], Callable[[], Any] | None] | None = None,
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; every failure is ``error(path, one line)``.

    Args:
        path: the file.
        error: the typed error to raise (``WeightsFileError`` or a subclass, ``MaskFileError``...).
        safe_globals: globals allow-listed for this call only (``torch.serialization.safe_globals``).
        mmap: memory-map a zip-format file's tensors instead of reading them (ignored for legacy files).
        refused: message for a file the weights-only unpickler refused, from the unpickler's message and
            whether the file is a zip archive.
        fallback: given a refusal, may return another, equally safe, way to read the file (called with no
            arguments); its own refusals and failures are mapped the same way.

    The file is first checked with :func:`check_torch_file` (missing, directory, empty, neither zip nor
    pickle). Torch's warnings are silenced: the outcome says what matters.
    """
    import torch

    path = Path(path)
    is_zip = check_torch_file(path, error)
    try:
        try:
            # A legacy (pickle) file is unpickled from memory: reading a damaged length field from a real
            # file would make Python allocate the claimed length (up to 4 GiB) before finding it is not there.
            source = path if is_zip else io.BytesIO(path.read_bytes())
            with torch.serialization.safe_globals(list(safe_globals)), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "pickle protocol 4"
                return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
        except pickle.UnpicklingError as e:
            retry = fallback(e, is_zip) if fallback is not None else None
            if retry is None:
                raise
            return retry()
    except pickle.UnpicklingError as e:
        raise error(path, refused(str(e), is_zip)) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, struct.error, ... for damaged files
        raise error(path, describe_damage(e)) from e
