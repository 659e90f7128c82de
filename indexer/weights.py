"""Errors for model weight files (Mask3D checkpoints, SAM checkpoints).

Every loader of a weights file raises a subclass of :class:`WeightsFileError`, whose ``str()`` is one
line naming the file and what is wrong with it, so the CLI can show it as is.
"""

from __future__ import annotations

from pathlib import Path


class WeightsFileError(Exception):
    """A weights file that cannot be used: missing, not a checkpoint, or not the expected model.

    Attributes:
        path: the file.
        problem: what is wrong, one line.
    """

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")
