"""Where a home's vectors live: the :class:`VectorBackend` interface, its URIs, and the embedded FAISS backend.

A home's vectors are kept by one backend, chosen when the home is created and recorded in the catalog
(``vector_store`` table, catalog migration 4; no row: the default):

- ``embedded``: immutable FAISS segment files under ``<home>/vectors`` (storage/segments.py), the default;
  :class:`FaissBackend` wraps the existing segment code unchanged.
- ``milvus-lite:PATH`` (an embedded milvus-lite file; a relative PATH is relative to the home) or
  ``http(s)://host:port`` (a Milvus server or cluster): :class:`~scenegrep.storage.milvus.MilvusBackend`,
  imported (with pymilvus) only when such a home is opened.

Whatever the backend, the catalog is the source of truth for what is committed: a backend *stages* the
vectors of a write before the catalog commit, the commit runs through :meth:`VectorBackend.commit`
(one catalog transaction that also bumps the commit counter readers poll), and removals are recorded
inside that transaction by :meth:`VectorBackend.record_deletes`.

Imports no pymilvus; FAISS only through the segment modules.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import Catalog, StateRow, VectorStoreRow
from scenegrep.storage.errors import StoreError
from scenegrep.storage.fileio import unlink_quietly
from scenegrep.storage.filters import InstanceFilter
from scenegrep.storage.merge import Merger, MergeReport
from scenegrep.storage.query import Searcher, SearchSettings
from scenegrep.storage.segfiles import SegmentMeta
from scenegrep.storage.segments import Segments

__all__ = [
    "EMBEDDED",
    "COLLECTION_KEY",
    "MigrationReport",
    "new_collection_name",
    "recorded",
    "VectorsUri",
    "VectorsUriError",
    "VectorsUriMismatchError",
    "VectorBatch",
    "VectorBackend",
    "FaissBackend",
    "parse_vectors_uri",
    "recorded_uri",
    "record_uri",
    "state_int",
    "set_state_int",
    "scan_fields",
]

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
URI_KEY = "uri"  # vector_store key: the backend's URI (absent: embedded)
COLLECTION_KEY = "collection"  # vector_store key: the Milvus collection of this home

Hits = list[list[tuple[int, float]]]


class VectorsUriError(StoreError, ValueError):
    """A vectors URI that names no backend (not ``embedded``, ``milvus-lite:PATH`` or ``http(s)://host:port``)."""


class VectorsUriMismatchError(StoreError):
    """A vectors URI given for a home that already records another one (use ``scenegrep migrate``)."""


_SERVER = re.compile(r"^(https?)://([^/:\s]+)(?::(\d{1,5}))?/?$")


@dataclass(frozen=True)
class VectorsUri:
    """A parsed vectors URI.

    Attributes:
        text: the URI as recorded (``embedded``, ``milvus-lite:PATH`` with PATH as given, or ``http(s)://host:port``).
        kind: ``embedded``, ``milvus-lite`` or ``milvus-server``.
        path: the milvus-lite file (relative paths resolved against the home), else None.
    """

    text: str
    kind: str
    path: Path | None = None

    @property
    def is_milvus(self) -> bool:
        return self.kind != EMBEDDED


def parse_vectors_uri(uri: str, home: Path) -> VectorsUri:
    """Parse ``uri`` for the home ``home``; VectorsUriError (one line, naming it) when it names no backend.

    ``milvus://host:port`` is accepted as a synonym of ``http://host:port``.
    """
    text = str(uri).strip()
    if text == EMBEDDED:
        return VectorsUri(EMBEDDED, EMBEDDED)
    if text.startswith("milvus-lite:"):
        raw = text[len("milvus-lite:") :]
        if not raw.endswith(".db") or raw.endswith("/.db") or raw == ".db":
            raise VectorsUriError(f"vectors URI {uri!r}: milvus-lite needs a file path ending in .db (milvus-lite:PATH.db)")
        path = Path(raw).expanduser()
        return VectorsUri(text, "milvus-lite", path if path.is_absolute() else home / path)
    if text.startswith("milvus://"):
        text = "http://" + text[len("milvus://") :]
    match = _SERVER.match(text)
    if match is None:
        raise VectorsUriError(
            f"vectors URI {uri!r} names no vector store: use 'embedded', 'milvus-lite:PATH' or 'http://host:19530'"
        )
    port = int(match.group(3) or 19530)
    if not 0 < port < 65536:
        raise VectorsUriError(f"vectors URI {uri!r}: port {port} is out of range")
    return VectorsUri(f"{match.group(1)}://{match.group(2)}:{port}", "milvus-server")


def new_collection_name() -> str:
    """A fresh Milvus collection name for one home (letters, digits and underscores, as Milvus requires)."""
    return f"scenegrep_{uuid.uuid4().hex}"


@dataclass
class MigrationReport:
    """What :meth:`~scenegrep.storage.Store.migrate` did.

    Attributes:
        to: the target URI. done: True once the home records the target (False: stopped early; run again).
        copied: vectors copied by this call. total: live vectors to copy in all.
    """

    to: str
    done: bool
    copied: int
    total: int


# -- the catalog's record ------------------------------------------------------------------------------


def _get(s: Session, table: type[VectorStoreRow] | type[StateRow], key: str) -> Any:
    """The value of ``key`` in a key-value table of the catalog, or None."""
    return s.scalar(select(table.value).where(table.key == key))


def _set(s: Session, table: type[VectorStoreRow] | type[StateRow], key: str, value: Any) -> None:
    """Set (None: delete) ``key`` in a key-value table of the catalog."""
    s.execute(delete(table).where(table.key == key))
    if value is not None:
        s.execute(insert(table).values(key=key, value=value))


def recorded(s: Session, key: str) -> str | None:
    """A ``vector_store`` value, or None."""
    return _get(s, VectorStoreRow, key)


def set_recorded(s: Session, key: str, value: str | None) -> None:
    """Set (None: delete) a ``vector_store`` value."""
    _set(s, VectorStoreRow, key, value)


def recorded_uri(s: Session) -> str:
    """The home's vectors URI as recorded (``embedded`` when none is)."""
    return recorded(s, URI_KEY) or EMBEDDED


def record_uri(s: Session, uri: str, collection: str | None) -> None:
    """Record the home's backend (inside the caller's transaction: the switch is one commit)."""
    set_recorded(s, URI_KEY, None if uri == EMBEDDED else uri)
    set_recorded(s, COLLECTION_KEY, collection)


def state_int(s: Session, key: str) -> int | None:
    """An integer ``store_state`` value, or None."""
    value = _get(s, StateRow, key)
    return None if value is None else int(value)


def set_state_int(s: Session, key: str, value: int | None) -> None:
    """Set (None: delete) an integer ``store_state`` value."""
    _set(s, StateRow, key, None if value is None else int(value))


def scan_fields(tags: Any, info: Any) -> tuple[list[str], str]:
    """A scan's filterable fields as a backend stores them beside each vector: its tags (as text, each
    once, in order) and the proposer its ``info`` names ("" when none is named)."""
    proposer = info.get("proposer") if isinstance(info, dict) else None
    return list(dict.fromkeys(map(str, tags))), proposer if isinstance(proposer, str) else ""


# -- the interface -------------------------------------------------------------------------------------


@dataclass
class VectorBatch:
    """The vectors of one write, with the filterable fields a backend may store beside them.

    Attributes:
        ids: (n,) int64 instance ids (allocated by the catalog), ascending within each scan.
        vectors: (n, D) float32, the float16-rounded vectors the catalog stores.
        scans: per vector, its scan's name. tags: per vector, its scan's tags.
        points: (n,) int64 point counts. extents: (n,) float64 bounding-box largest sides (metres).
        proposers: per vector, its scan's ``info["proposer"]`` when that is a string, else "".
    """

    ids: np.ndarray
    vectors: np.ndarray
    scans: list[str] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    extents: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    proposers: list[str] = field(default_factory=list)


Apply = Callable[[Session, list[int]], None]


class VectorBackend(Protocol):
    """What :class:`~scenegrep.storage.Store` needs of a vector store (see the module docstring)."""

    uri: str

    def stage(self, batch: VectorBatch) -> Any:
        """Make the batch's vectors ready before the catalog commit; they must not be searchable until it.
        Returns a token for :meth:`commit` / :meth:`abort`."""

    def commit(self, apply: Apply, staged: Any) -> None:
        """The commit point: one catalog transaction running ``apply(session, new_segment_ids)``."""

    def abort(self, staged: Any) -> None:
        """Undo a stage whose commit failed (best effort; reconcile finishes it after a crash)."""

    def record_deletes(self, s: Session, scan_ids: list[int]) -> None:
        """Inside the commit transaction: the vectors of these scans' instances stop being live."""

    def after_commit(self) -> None:
        """Work after a commit: apply committed deletes, merge segments."""

    def search(self, queries: np.ndarray, k: int, filt: InstanceFilter | None, settings: SearchSettings) -> Hits:
        """Top-``k`` (id, score) per query of live instances, best first."""

    def refresh(self) -> bool:
        """Follow a newer commit; True when the view changed."""

    def count(self) -> int:
        """Live searchable vectors as of the latest commit."""

    def reconcile(self) -> None:
        """On writer open: make the store agree with the catalog after a crash (storage/recovery.py)."""

    def optimize(self) -> MergeReport:
        """Compact the store."""

    def verify(self, full: bool) -> list[str]:
        """One line per disagreement with the catalog."""

    def stats(self) -> dict[str, Any]:
        """Backend-specific counts for ``Store.stats``."""

    def close(self) -> None:
        """Release connections and mapped files."""


class FaissBackend:
    """The embedded segment store: a thin wrapper over Segments, Searcher and Merger (behaviour unchanged).

    Attributes:
        uri: ``embedded``. segments, searcher, merger: the wrapped objects.
    """

    uri = EMBEDDED

    def __init__(self, catalog: Catalog, segments: Segments, searcher: Searcher):
        self._catalog = catalog
        self.segments = segments
        self.searcher = searcher
        self.merger = Merger(catalog, segments)

    def stage(self, batch: VectorBatch) -> list[SegmentMeta]:
        if not batch.ids.size:
            return []
        from scenegrep.storage.commit import write_batch_segment  # commit imports this module

        return [write_batch_segment(self.segments.folder, batch.ids, batch.vectors)]

    def commit(self, apply: Apply, staged: list[SegmentMeta] | None) -> None:
        self.segments.commit(apply, add=staged or [])

    def abort(self, staged: list[SegmentMeta] | None) -> None:
        for meta in staged or []:
            if not self._committed(meta.filename):
                unlink_quietly(self.segments.folder / meta.filename)

    def _committed(self, filename: str) -> bool:
        """Whether a segment row names ``filename`` (False when that cannot be read: recovery decides)."""
        try:
            with self._catalog.transaction() as s:
                self.segments.sync(s)
            snap = self.segments.snapshot
            return snap is not None and any(m.filename == filename for m in snap.segments.values())
        except Exception as exc:
            log.warning("cannot read the segments: %s", exc)
            return False

    def record_deletes(self, s: Session, scan_ids: list[int]) -> None:
        from scenegrep.storage.commit import tombstone

        tombstone(s, scan_ids)

    def after_commit(self) -> None:
        self.merger.auto()

    def search(self, queries: np.ndarray, k: int, filt: InstanceFilter | None, settings: SearchSettings) -> Hits:
        return self.searcher.search(queries, k, filt, settings)

    def refresh(self) -> bool:
        return self.segments.refresh()

    def count(self) -> int:
        self.segments.refresh()
        assert self.segments.snapshot is not None
        return self.segments.snapshot.live

    def reconcile(self) -> None:
        """Nothing beyond recovery's segment checks (storage/recovery.py runs them for this backend)."""

    def optimize(self) -> MergeReport:
        return self.merger.optimize()

    def verify(self, full: bool) -> list[str]:
        return []  # storage/report.py checks the segments itself

    def stats(self) -> dict[str, Any]:
        return {"vectors_uri": EMBEDDED}

    def close(self) -> None:
        self.segments.clear()
