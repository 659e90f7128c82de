"""Storage layer: catalog (SQLite), FAISS vector generations, mask codec, and the Store tying them together.

Imports neither torch nor anything from ``indexer`` / ``search``.
"""

if __name__ != "scenegrep.storage":  # one module, one name: never import this folder as a top-level package
    raise ImportError(f"import scenegrep.storage, not {__name__} (the folder is installed under the scenegrep package)")

from scenegrep.storage.errors import (
    CatalogVersionError,
    EncoderMismatchError,
    NotFoundError,
    ScanExistsError,
    StoreError,
    StoreLockedError,
    VectorIndexError,
)
from scenegrep.storage.maskcodec import decode_indices, encode_indices
from scenegrep.storage.store import EncoderIdentity, InstanceEntry, InstanceInfo, ScanEntry, ScanInfo, Store
from scenegrep.storage.vectors import VectorIndex

__all__ = [
    "Store",
    "EncoderIdentity",
    "ScanEntry",
    "InstanceEntry",
    "ScanInfo",
    "InstanceInfo",
    "VectorIndex",
    "encode_indices",
    "decode_indices",
    "StoreError",
    "EncoderMismatchError",
    "NotFoundError",
    "ScanExistsError",
    "CatalogVersionError",
    "VectorIndexError",
    "StoreLockedError",
]
