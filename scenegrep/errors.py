"""The root of every error the library raises on purpose.

Each layer defines the typed errors it needs as subclasses of :class:`ScenegrepError` (``ScanError`` in
``scenegrep.indexer.scans``, ``MaskFileError`` in ``scenegrep.indexer.proposals``, ``WeightsFileError`` in
``scenegrep.indexer.weights``, ``StoreError`` in ``scenegrep.storage.errors``, ...). ``str(err)`` is always
one line, ``"<subject>: <problem>"`` where the subject (a file, a scan, an instance id, an option) is known,
so the faces (CLI, server) show it as it is. Any other exception escaping the library is a bug.

This module imports nothing, so every layer (``storage`` included) can build on it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ScenegrepError", "InputFileError", "SettingsError", "one_line"]


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


class ScenegrepError(Exception):
    """Base class of every error the library raises on purpose.

    Attributes:
        subject: what the problem is about (a file path, a scan name, an instance id, an option), or None.
        problem: what is wrong, one line.
    """

    def __init__(self, problem: object, subject: object = None):
        self.subject = subject
        self.problem = one_line(problem) or type(self).__name__
        super().__init__(self.problem if subject is None else f"{subject}: {self.problem}")


class InputFileError(ScenegrepError):
    """A file or folder given by the user that cannot be used. ``path`` names it."""

    def __init__(self, path: Path | str, problem: object):
        self.path = Path(path)
        super().__init__(problem, self.path)


class SettingsError(ScenegrepError, ValueError):
    """Options that contradict each other or name something unknown (subject: the option)."""
