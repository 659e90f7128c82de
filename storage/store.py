"""``Store``: one home folder, opened as the single writer or as a reader. A facade over the storage modules.

Each job lives in its own module; ``Store`` wires them together and keeps the public surface:

- :mod:`~scenegrep.storage.records`: the records taken and given (``ScanEntry``, ``InstanceInfo``, ...);
- :mod:`~scenegrep.storage.home`: the folder layout, the writer lock, opening the catalog;
  :mod:`~scenegrep.storage.pointfiles`: ``points/<scan id>.npz``; :mod:`~scenegrep.storage.fileio`: atomic writes;
- :mod:`~scenegrep.storage.reads`: catalog lookups; :mod:`~scenegrep.storage.query`: ranked search, with
  :mod:`~scenegrep.storage.filters` (``InstanceFilter``) and :mod:`~scenegrep.storage.indextypes` (which
  FAISS index a segment gets, search settings);
- :mod:`~scenegrep.storage.segfiles`: immutable segment files; :mod:`~scenegrep.storage.checksums`: their
  CRCs; :mod:`~scenegrep.storage.segments`: the live snapshot and the commit point;
- :mod:`~scenegrep.storage.commit`: ``add_scans`` / ``remove_scan`` (DESIGN.md "Storage: one commit point");
  :mod:`~scenegrep.storage.merge`: ``optimize`` and the automatic merge policy;
- :mod:`~scenegrep.storage.recovery`: undoing an interrupted write when a writer opens the home;
  :mod:`~scenegrep.storage.repair`: ``repair``;
- :mod:`~scenegrep.storage.report`: ``stats`` and ``verify``; :mod:`~scenegrep.storage.sampling`: reference
  vectors and recall@10.
- :mod:`~scenegrep.storage.guard`: every public method turns an escaping ``OSError`` into a ``FileAccessError``.
- :mod:`~scenegrep.storage.backends`: where the vectors live (``VectorBackend``): the embedded segments above
  (the default) or Milvus (:mod:`~scenegrep.storage.milvus`, with :mod:`~scenegrep.storage.milvus_filters`),
  chosen when the home is created and recorded in the catalog; :meth:`Store.migrate` moves them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from scenegrep.storage.backends import (
    COLLECTION_KEY,
    EMBEDDED,
    FaissBackend,
    MigrationReport,
    VectorBackend,
    VectorsUriMismatchError,
    new_collection_name,
    parse_vectors_uri,
    record_uri,
    recorded,
    recorded_uri,
)
from scenegrep.storage.catalog import Catalog
from scenegrep.storage.commit import Writer
from scenegrep.storage.errors import StoreError
from scenegrep.storage.guard import raises_store_errors
from scenegrep.storage.filters import InstanceFilter
from scenegrep.storage.home import CATALOG_FILE, LOCK_FILE, HomeLayout, HomeLock, open_home
from scenegrep.storage.merge import MergeReport
from scenegrep.storage.pointfiles import PointFiles
from scenegrep.storage.query import Searcher, SearchSettings
from scenegrep.storage.reads import CatalogReader
from scenegrep.storage.records import EncoderIdentity, InstanceEntry, InstanceInfo, ScanEntry, ScanInfo
from scenegrep.storage.repair import Reread
from scenegrep.storage.segments import Segments, commit_number
from scenegrep.storage import recovery, repair, report, sampling

__all__ = [
    "Store",
    "SearchSettings",
    "MergeReport",
    "MigrationReport",
    "EncoderIdentity",
    "ScanEntry",
    "InstanceEntry",
    "ScanInfo",
    "InstanceInfo",
    "CATALOG_FILE",
    "LOCK_FILE",
]


@raises_store_errors
class Store:
    """A scenegrep home folder. Open with :meth:`open`; use as a context manager or call :meth:`close`.

    A writer (the default) holds ``<home>/.lock`` (with a PostgreSQL catalog, an advisory lock in it) until
    closed, runs recovery on open and may call ``add_scans`` / ``remove_scan`` / ``optimize`` / ``repair``.
    ``read_only=True`` takes no lock, never writes, reads nothing but the catalog's segment list on open
    (segment files are memory-mapped on first use) and follows a writer's newer commits before every search.
    Not safe for concurrent calls from threads (open one Store per thread). Every error a method raises on purpose is a
    :class:`~scenegrep.storage.errors.StoreError`; an operating-system error (permissions, a full disk)
    comes out as :class:`~scenegrep.storage.errors.FileAccessError` naming the file.

    Attributes:
        home: the home folder.
    """

    def __init__(self, layout: HomeLayout, catalog: Catalog, lock: HomeLock | None):
        self.home = layout.root
        self._layout = layout
        self._catalog = catalog
        self._lock = lock
        self._points = PointFiles(layout.points)
        self._segments = Segments(layout.vectors, catalog)
        self._reader = CatalogReader(catalog, self._points)
        self._searcher = Searcher(catalog, self._segments)
        self._vectors: VectorBackend = FaissBackend(catalog, self._segments, self._searcher)
        self._writer = (
            Writer(catalog, self._points, self._segments, self._reader, self._vectors) if lock is not None else None
        )
        self._reference: tuple[int, int, int, np.ndarray] | None = None  # (commit, n, seed, vectors)

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        home: Path | str,
        *,
        read_only: bool = False,
        settings: SearchSettings | None = None,
        vectors_uri: str | None = None,
        catalog_url: str | None = None,
    ) -> Store:
        """Open ``home``, creating it (writer only) with ``catalog.sqlite``, ``vectors/`` and ``points/``.

        ``settings``: default approximate-search settings of this store (``nprobe``, ``ef_search``).
        ``vectors_uri``: where the vectors live (``embedded``, ``milvus-lite:PATH.db``, ``http://host:19530``;
        storage/backends.py). Recorded when a writer creates the home (an empty one); for an existing home
        it must name the recorded one. None: whatever the home records (embedded for a new home).
        ``catalog_url``: the catalog database of a home this call creates, e.g.
        ``postgresql+psycopg://user@host/dbname`` (recorded in ``<home>/home.json``, see
        storage/homeconfig.py); later opens read it from there. None: the SQLite file in the home.

        Raises:
            StoreLockedError: another writer holds the home.
            CatalogVersionError: the catalog is newer than this code.
            CatalogError: ``catalog.sqlite`` is damaged or not a catalog; the catalog database cannot be
                reached.
            CatalogUrlMismatchError: ``catalog_url`` is not the catalog the home already uses.
            StoreError: ``read_only`` and there is no catalog.
            VectorsUriError: ``vectors_uri`` names no vector store.
            VectorsUriMismatchError: ``vectors_uri`` differs from what the home records.
            MilvusError: the home's Milvus cannot be opened.
        """
        store = cls(*open_home(home, read_only=read_only, catalog_url=catalog_url))
        if settings is not None:
            store.search_settings = settings
        try:
            store._choose_backend(vectors_uri)
            if read_only:
                store._segments.refresh()  # the segment rows and cheap file checks; no vectors are read
            else:
                recovery.recover(store._catalog, store._segments, store._points, store._vectors, store._lite_file())
        except BaseException:
            store.close()
            raise
        return store

    def _choose_backend(self, vectors_uri: str | None) -> None:
        """Record ``vectors_uri`` on a new home, check it against an existing one, open the backend."""
        changed = False
        with self._catalog.transaction() as s:
            current = recorded_uri(s)
            collection = recorded(s, COLLECTION_KEY)
            empty = commit_number(s) == 0  # nothing committed yet: the choice may still change
            if vectors_uri is not None:
                wanted = parse_vectors_uri(vectors_uri, self.home)
                if wanted.text != current:
                    if self.read_only or not empty:
                        raise VectorsUriMismatchError(
                            f"{self.home} keeps its vectors in {current}, not {wanted.text}; "
                            "the vectors URI is chosen when a home is created (move them with `scenegrep migrate`)"
                        )
                    current = wanted.text
                    collection = new_collection_name() if wanted.is_milvus else None
                    changed = True
        self._use_backend(current, collection)  # first: a URI that cannot be opened is not recorded
        if changed:
            with self._catalog.transaction() as s:
                record_uri(s, current, collection)

    def _use_backend(self, uri: str, collection: str | None) -> None:
        parsed = parse_vectors_uri(uri, self.home)
        if not parsed.is_milvus:
            backend: VectorBackend = FaissBackend(self._catalog, self._segments, self._searcher)
        else:
            from scenegrep.storage.milvus import MilvusBackend  # pymilvus only for Milvus homes

            if not collection:
                raise StoreError(f"{self.home}: the catalog records {uri} but no Milvus collection")
            backend = MilvusBackend(self._catalog, self._segments, parsed, collection)
        old, self._vectors = self._vectors, backend
        if old is not backend and old.uri != EMBEDDED:
            old.close()
        if self._writer is not None:
            self._writer._vectors = backend

    def _lite_file(self) -> Path | None:
        parsed = parse_vectors_uri(self._vectors.uri, self.home)
        return parsed.path if parsed.kind == "milvus-lite" else None

    @property
    def vectors_uri(self) -> str:
        """Where this home's vectors live (``embedded``, ``milvus-lite:PATH`` or ``http(s)://host:port``)."""
        return self._vectors.uri

    def close(self) -> None:
        """Release the catalog, the vector store and the writer lock (idempotent)."""
        self._catalog.close()
        if self._lock is not None:
            self._lock.release()
        self._vectors.close()
        self._segments.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def read_only(self) -> bool:
        return self._lock is None or not self._lock.held

    def _require_writer(self) -> Writer:
        if self._writer is None or self.read_only:  # never opened for writing, or closed
            raise StoreError(f"{self.home} was opened read-only")
        return self._writer

    # -- encoder ---------------------------------------------------------------------------------

    def encoder(self) -> EncoderIdentity | None:
        """The encoder recorded by the first committed index, or None for an empty home."""
        return self._reader.encoder()

    def check_encoder(self, encoder: EncoderIdentity) -> None:
        """Raise EncoderMismatchError unless the catalog has no encoder or the same one."""
        self._reader.check_encoder(encoder)

    # -- scans -----------------------------------------------------------------------------------

    def find_scan(self, name: str) -> ScanInfo | None:
        """The indexed scan called ``name``, or None."""
        return self._reader.find_scan(name)

    def scans(self) -> list[ScanInfo]:
        """All indexed scans, by name."""
        return self._reader.scans()

    def is_unchanged(self, name: str, content_hash: str) -> bool:
        """True when ``name`` is indexed with this ``content_hash`` (re-indexing it would be a no-op)."""
        return self._reader.is_unchanged(name, content_hash)

    def scan_points(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) float32 xyz and (N, 3) uint8 rgb of an indexed scan; NotFoundError if unknown."""
        return self._reader.scan_points(name)

    # -- instances -------------------------------------------------------------------------------

    def instances_by_ids(self, ids: Iterable[int]) -> dict[int, InstanceInfo]:
        """Metadata of these instances of indexed scans, keyed by id (unknown ids are left out)."""
        return self._reader.instances_by_ids(ids)

    def instance(self, id: int) -> InstanceInfo:
        """Metadata of one instance; NotFoundError if unknown."""
        return self._reader.instance(id)

    def instances(self, scan_name: str) -> list[InstanceInfo]:
        """All instances of an indexed scan, by mask_index; NotFoundError if the scan is unknown."""
        return self._reader.instances(scan_name)

    def instance_points(self, id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) uint32 point indices exactly as stored, their (n, 3) float32 xyz and (n, 3) uint8 rgb."""
        return self._reader.instance_points(id)

    def instance_vector(self, id: int) -> np.ndarray | None:
        """(D,) float32 (from the stored float16 copy), or None for an unsearchable instance."""
        return self._reader.instance_vector(id)

    def thumbnail(self, id: int) -> bytes | None:
        """The instance's JPEG thumbnail, or None."""
        return self._reader.thumbnail(id)

    # -- search ----------------------------------------------------------------------------------

    @property
    def search_settings(self) -> SearchSettings:
        """Default ``nprobe`` / ``ef_search`` of this store's searches (storage/indextypes.py)."""
        return self._searcher.settings

    @search_settings.setter
    def search_settings(self, value: SearchSettings) -> None:
        if not isinstance(value, SearchSettings):
            raise TypeError(f"expected SearchSettings, got {type(value).__name__}")
        self._searcher.settings = value

    def search(
        self,
        queries: np.ndarray,
        k: int,
        scans: Iterable[str] | None = None,
        filter: InstanceFilter | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` instances per query by cosine similarity, best first.

        Args:
            queries: (q, D) or (D,) float32; each row is L2-normalised here (a zero row is a ValueError).
            k: results per query (>= 1); fewer come back only when fewer instances pass the filter. Clamped
                to the number of eligible vectors, so any k costs memory in proportion to the collection.
            scans: restrict to these indexed scans (NotFoundError names any unknown one); the same as
                ``filter.scans`` (both given: their intersection).
            filter: further conditions (:class:`InstanceFilter`), applied inside FAISS.
            nprobe, ef_search: override :attr:`search_settings` for this call.

        Returns:
            One list per query of ``(instance_id, score)``; only live instances of indexed scans as of one
            commit, never -1 ids. Scores are exact cosines (approximate segments are re-ranked).

        Raises:
            DamagedSegmentError (a StoreError): a segment the search needs fails its checksum; the message
                names the file (``scenegrep verify --repair`` rebuilds it).
        """
        filt = (filter or InstanceFilter()).with_scans(scans)
        settings = self._searcher.settings
        if nprobe is not None or ef_search is not None:
            settings = SearchSettings(
                nprobe if nprobe is not None else settings.nprobe,
                ef_search if ef_search is not None else settings.ef_search,
            )
        return self._vectors.search(queries, k, filt, settings)

    def refresh(self) -> bool:
        """Follow a writer's newer commit, if any; True when this store's view changed."""
        return self._vectors.refresh()

    def vector_count(self) -> int:
        """Live searchable vectors (as of the latest commit)."""
        return self._vectors.count()

    def instance_indices(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """``{id: sorted (n,) uint32 point indices}`` of each existing instance, decoded in bulk."""
        return self._reader.instance_indices(ids)

    def instance_vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """``{id: (D,) float32}`` stored vectors (float16 copies) of these instances, in bulk; unknown and
        unsearchable ids are left out."""
        return self._reader.instance_vectors(ids)

    def reference_vectors(self, n: int = 1024, seed: int = 0) -> np.ndarray:
        """(m, D) float32: a deterministic sample of up to ``n`` live stored vectors (m = min(n, live)),
        the same for the same commit, ``n`` and ``seed``; cached until the next commit."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        with self._catalog.transaction() as s:
            self._segments.sync(s)
            snap = self._segments.snapshot
            assert snap is not None
            cached = self._reference
            if cached is not None and cached[:3] == (snap.commit, int(n), int(seed)):
                return cached[3]
            dim = snap.dim or 0
            _, vectors = sampling.sample_vectors(s, int(n), int(seed), dim)
        vectors.setflags(write=False)
        self._reference = (snap.commit, int(n), int(seed), vectors)
        return vectors

    def recall_at_10(self, sample: int = 200, nprobe: int | None = None) -> float:
        """Recall@10 of :meth:`search` against exact search over every live vector, with ``sample`` stored
        vectors as queries (1.0 for an exact or empty home). Scans the whole catalog once."""
        with self._catalog.transaction() as s:
            self._segments.sync(s)
            dim = self._segments.snapshot.dim if self._segments.snapshot else None
            if dim is None:
                return 1.0
            return sampling.recall_at_k(s, lambda q, k: self.search(q, k, nprobe=nprobe), sample, 10, dim)

    # -- writes ----------------------------------------------------------------------------------

    def add_scans(
        self,
        batch: list[tuple[ScanEntry, list[InstanceEntry]]],
        encoder: EncoderIdentity,
        replace: bool = False,
    ) -> list[int]:
        """Store scans with their instances in one commit: one new segment (see :mod:`scenegrep.storage.commit`).

        Args:
            batch: (scan, instances) pairs; instance i of a scan gets mask_index i.
            encoder: the model of the vectors; recorded on the first write, checked on later ones.
            replace: replace indexed scans of the same names instead of raising ScanExistsError.

        Returns:
            The new scan ids, in batch order.

        Raises:
            StoreError (opened read-only), EncoderMismatchError, ScanExistsError, ValueError (bad batch:
            duplicate names, a vector of the wrong dimension, a point index out of range). Any error before
            the commit point leaves the previous state unchanged.
        """
        return self._require_writer().add_scans(batch, encoder, replace)

    def remove_scan(self, name: str) -> int:
        """Remove an indexed scan (its rows, its point file; its vectors become tombstones); returns how many
        instances it had."""
        return self._require_writer().remove_scan(name)

    def optimize(self) -> MergeReport:
        """Merge every segment into one without tombstones, of the index type its size calls for (IVF
        trained on the collection's vectors above 20,000), in one crash-safe commit. Writers also merge
        small segments automatically after each commit (storage/merge.py). A Milvus home: applies pending
        deletes and asks Milvus to compact the collection (``factory`` "milvus")."""
        self._require_writer()
        return self._vectors.optimize()

    def repair(self, reread: Reread | None = None) -> tuple[list[str], list[str]]:
        """Rebuild damaged or missing segments from the catalog's float16 vectors and point files by
        re-reading their scans (``reread(source_path) -> (points, colors)``, e.g. the indexer's reader).

        A Milvus home: writes every live vector from the catalog to its collection again (upserts).

        Returns:
            ``(done, not_done)``: one line per thing rebuilt, one per thing that could not be.
        """
        self._require_writer()
        enc = self.encoder()
        if self._vectors.uri != EMBEDDED:
            from scenegrep.storage.milvus import copy_live_vectors

            copied = copy_live_vectors(self._catalog, self._vectors, enc.dim if enc else 0)  # type: ignore[arg-type]
            return [f"wrote {copied} live vectors to {self._vectors.uri} again"], []
        return repair.repair(self._catalog, self._segments, self._points, enc.dim if enc else None, reread)

    # -- reporting -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: home, scans, instances, searchable, vectors, dim, encoder, generation (the
        commit number), segments, tombstones, index_types, bytes_*."""
        return report.stats(self._layout, self._catalog, self._segments, self.encoder(), self._vectors)

    def verify(self, full: bool = True) -> list[str]:
        """Check every invariant the store relies on; returns one line per problem (empty = healthy).
        ``full``: every byte of every file and every segment's ids (else sizes, edge checksums, counts)."""
        return report.verify(
            self._catalog, self._segments, self._points, self.encoder(), full=full, vectors=self._vectors,
            keep=self._lite_file(),
        )

    # -- moving the vectors ----------------------------------------------------------------------

    def migrate(self, to: str, *, batch: int = 20_000, max_batches: int | None = None) -> MigrationReport:
        """Move this home's vectors to ``to`` (``milvus-lite:PATH.db``, ``http://host:19530`` or
        ``embedded``), resumably (storage/milvus.py "Migration"); the home records the new backend in one
        commit at the end.

        Args:
            batch: vectors copied per step (each step records its progress in the catalog).
            max_batches: stop after this many steps (``done`` is then False; calling again continues).

        Raises:
            StoreError (opened read-only), VectorsUriError, MilvusError.
        """
        self._require_writer()
        from scenegrep.storage.milvus import migrate

        result = migrate(self._catalog, self._segments, self._vectors, self.home, to, batch, max_batches)
        if result.done:
            with self._catalog.transaction() as s:
                uri, collection = recorded_uri(s), recorded(s, COLLECTION_KEY)
            if uri != self._vectors.uri:
                self._use_backend(uri, collection)
        return result
