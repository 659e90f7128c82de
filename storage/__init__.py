"""Storage layer: catalog (SQLite), FAISS vector generations, mask codec, and the Store tying them together.

Imports neither torch nor anything from ``indexer`` / ``search``.
"""

from storage.errors import (
    CatalogVersionError,
    EncoderMismatchError,
    NotFoundError,
    ScanExistsError,
    StoreError,
    StoreLockedError,
    VectorIndexError,
)
from storage.maskcodec import decode_indices, encode_indices
from storage.store import EncoderIdentity, InstanceEntry, InstanceInfo, ScanEntry, ScanInfo, Store
from storage.vectors import VectorIndex

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
