"""One error root at the storage layer's boundary: :func:`raises_store_errors` turns an ``OSError`` escaping
a public method into a one-line :class:`~scenegrep.storage.errors.FileAccessError`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from scenegrep.storage.errors import FileAccessError

__all__ = ["raises_store_errors"]

_C = TypeVar("_C", bound=type)


def raises_store_errors(cls: _C) -> _C:
    """Class decorator: every public method of ``cls`` turns an ``OSError`` escaping it into a one-line
    :class:`FileAccessError` (``self.home`` names the home when the OS names no file), so callers of the
    storage layer catch one error root."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except OSError as exc:
                home = getattr(args[0], "home", None) if args and not isinstance(args[0], type) else None
                raise FileAccessError(exc, home) from exc

        return guarded

    for name, attr in list(vars(cls).items()):
        if name.startswith("_") and name not in ("__enter__", "__exit__"):
            continue
        if isinstance(attr, classmethod):
            setattr(cls, name, classmethod(wrap(attr.__func__)))
        elif isinstance(attr, staticmethod):
            setattr(cls, name, staticmethod(wrap(attr.__func__)))
        elif callable(attr) and not isinstance(attr, type):
            setattr(cls, name, wrap(attr))
    return cls
