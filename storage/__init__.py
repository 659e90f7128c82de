"""Storage layer: catalog (SQLite), immutable FAISS segments, mask codec, and the Store tying them together.

Imports neither torch nor anything from ``indexer`` / ``search``. Importing this package is cheap: the
names below are loaded on first use (PEP 562 ``__getattr__``), so ``import scenegrep.storage.errors`` (the
CLI's error handling) or ``scenegrep.storage.records`` never pulls in SQLAlchemy, FAISS or SciPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if __name__ != "scenegrep.storage":  # one module, one name: never import this folder as a top-level package
    raise ImportError(f"import scenegrep.storage, not {__name__} (the folder is installed under the scenegrep package)")

# public name -> module that defines it
_EXPORTS = {
    "Store": "store",
    "EncoderIdentity": "records",
    "ScanEntry": "records",
    "InstanceEntry": "records",
    "ScanInfo": "records",
    "InstanceInfo": "records",
    "VectorIndex": "vectors",
    "InstanceFilter": "filters",
    "SearchSettings": "query",
    "MergeReport": "merge",
    "DamagedSegmentError": "segments",
    "encode_indices": "maskcodec",
    "decode_indices": "maskcodec",
    "StoreError": "errors",
    "EncoderMismatchError": "errors",
    "NotFoundError": "errors",
    "ScanExistsError": "errors",
    "CatalogVersionError": "errors",
    "CatalogError": "errors",
    "VectorIndexError": "errors",
    "StoreLockedError": "errors",
    "FileAccessError": "errors",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads these on demand
    from scenegrep.storage.errors import (
        CatalogError,
        CatalogVersionError,
        EncoderMismatchError,
        FileAccessError,
        NotFoundError,
        ScanExistsError,
        StoreError,
        StoreLockedError,
        VectorIndexError,
    )
    from scenegrep.storage.filters import InstanceFilter
    from scenegrep.storage.maskcodec import decode_indices, encode_indices
    from scenegrep.storage.merge import MergeReport
    from scenegrep.storage.query import SearchSettings
    from scenegrep.storage.segments import DamagedSegmentError
    from scenegrep.storage.records import EncoderIdentity, InstanceEntry, InstanceInfo, ScanEntry, ScanInfo
    from scenegrep.storage.store import Store
    from scenegrep.storage.vectors import VectorIndex


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
