"""scenegrep: semantic search across many 3D scans.

The public API::

    import scenegrep

    with scenegrep.open("my-home", write=True) as col:
        col.index(["scans/"], preset="default", clip_model="local-dir:/models/clip")
    with scenegrep.open("my-home") as col:
        for hit in col.search("a red office chair", k=5):
            print(hit.scan, hit.score, hit.n_points)
        col.export(hit.id, "chair.ply")

* :func:`open` -> :class:`Collection` (index, search, instance, instances, points, export, thumbnail,
  scans, scan_points, remove, stats, verify);
* :class:`IndexSettings` (a feature preset plus overrides, the proposer, SAM, the encoder);
* :func:`propose` / :func:`evaluate_masks` (class-agnostic masks of one scan, and their AP);
* :func:`generate_scans` (seeded synthetic rooms with ground truth);
* errors: every error the library raises on purpose is a :class:`ScenegrepError`.

Names are imported on first use, so ``import scenegrep`` (and ``scenegrep --help``) stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenegrep.errors import InputFileError, ScenegrepError, SettingsError

if TYPE_CHECKING:
    from scenegrep.collection import Collection

__all__ = [
    "open", "Collection", "IndexSettings", "propose", "evaluate_masks", "generate_scans",
    "Hit", "HitPoints", "InstanceDetails", "ScanOutcome", "ScanInfo", "MaskSet", "MaskEvaluation",
    "ScenegrepError", "InputFileError", "SettingsError", "ScanError", "MaskFileError", "WeightsFileError",
    "EncoderWeightsError", "StoreError", "NotFoundError", "StoreLockedError", "EncoderMismatchError",
    "FileAccessError", "__version__",
]

#: public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "Collection": "scenegrep.collection",
    "IndexSettings": "scenegrep.indexer.settings",
    "propose": "scenegrep.masks",
    "evaluate_masks": "scenegrep.masks",
    "generate_scans": "scenegrep.indexer.synthetic",
    "Hit": "scenegrep.search.hits",
    "HitPoints": "scenegrep.search.hits",
    "InstanceDetails": "scenegrep.search.hits",
    "ScanOutcome": "scenegrep.indexer.pipeline",
    "ScanInfo": "scenegrep.storage",
    "MaskSet": "scenegrep.indexer.proposals.base",
    "MaskEvaluation": "scenegrep.masks",
    "ScanError": "scenegrep.indexer.scans",
    "MaskFileError": "scenegrep.indexer.proposals.base",
    "WeightsFileError": "scenegrep.indexer.weights",
    "EncoderWeightsError": "scenegrep.indexer.features.encoders",
    "StoreError": "scenegrep.storage.errors",
    "NotFoundError": "scenegrep.storage.errors",
    "StoreLockedError": "scenegrep.storage.errors",
    "EncoderMismatchError": "scenegrep.storage.errors",
    "FileAccessError": "scenegrep.storage.errors",
}


def open(home: Path | str, *, write: bool = False, device: str = "cpu",  # noqa: A001
         catalog_url: str | None = None, vectors_uri: str | None = None) -> "Collection":
    """Open the home folder ``home`` as a :class:`Collection` (a context manager).

    Read-only unless ``write=True``: readers never wait for a running writer and never change anything;
    a writer holds the home's lock (a second writer gets :class:`StoreLockedError`).

    ``catalog_url``: where a new home keeps its catalog, as an SQLAlchemy URL; None is the SQLite file
    ``<home>/catalog.sqlite``, ``postgresql+psycopg://user@host/dbname`` a PostgreSQL database that many
    indexers and servers share (``pip install 'scenegrep[postgres]'``). It is recorded in
    ``<home>/home.json`` when the home is created and read from there by every later open; naming another
    catalog for an existing home raises ``CatalogUrlMismatchError`` (a :class:`StoreError`).

    ``vectors_uri``: where a new home keeps its vectors: ``embedded`` (FAISS segment files in the home, the
    default), ``milvus-lite:PATH.db`` or ``http://host:19530`` (Milvus, ``pip install 'scenegrep[milvus]'``).
    The home records it; naming another one for an existing home raises ``VectorsUriMismatchError``.
    """
    from scenegrep.collection import open_collection

    return open_collection(home, write=write, device=device, catalog_url=catalog_url, vectors_uri=vectors_uri)


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("scenegrep")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scenegrep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
