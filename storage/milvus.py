"""Vectors in Milvus: :class:`MilvusBackend`, a :class:`~scenegrep.storage.backends.VectorBackend` over
``pymilvus.MilvusClient`` (a Milvus server or cluster at ``http(s)://host:port``, or an embedded milvus-lite
file at ``milvus-lite:PATH.db``). Imported only when a Milvus home is opened; pymilvus is imported here.

One collection per home (its name is recorded in the catalog): ``id`` INT64 primary key (the catalog's
instance id), ``vector`` FLOAT_VECTOR(dim) searched by inner product (the stored vectors are the catalog's
float16-rounded unit vectors, so the score is their cosine, as FAISS gives), and the filterable fields
``scan`` (VARCHAR name), ``tags`` (ARRAY of VARCHAR), ``points`` (INT64), ``extent`` (DOUBLE, so bounds
compare exactly as the catalog's do) and ``proposer`` (VARCHAR). Filters become Milvus expressions
(storage/milvus_filters.py). milvus-lite gets an exact FLAT index; a server gets HNSW (``ef`` from the
search settings' ``ef_search``).

Commit protocol (the catalog stays the source of truth for what is committed):

1. add: the catalog allocates the instance ids (pending rows); the writer records the batch's id range
   ``[lo, hi]`` in ``store_state`` (``milvus_staged_lo`` / ``milvus_staged_hi``), inserts the vectors into
   Milvus, then commits the catalog transaction that makes the scans indexed *and* clears the range: that
   transaction is the commit point. Ids are never reused (AUTOINCREMENT), so the range holds nothing else.
2. remove / replace: the commit transaction deletes the catalog rows and records the removed ids in
   ``vector_deletes``; after it, the ids are deleted from Milvus and their rows dropped.
3. search: Milvus answers with its top hits, which are intersected with the catalog's live ids (an
   instance of an indexed scan, searchable); when that leaves fewer than ``k``, Milvus is asked again for
   more. So a vector inserted but not committed, or removed but not yet deleted, is never visible.
4. reconcile (every writer open, storage/recovery.py): a recorded staged range means a write died between
   the insert and the commit: its range is deleted from Milvus (one delete by expression, whatever the
   collection's size) and the record cleared; ids left in ``vector_deletes`` are deleted. Neither reads
   every id. A failed add in a live process does the same at once (:meth:`MilvusBackend.abort`).

Migration (:func:`migrate`, ``scenegrep migrate --to URI``): the catalog holds every live vector (float16),
so a copy to Milvus reads it in id order, ``batch`` vectors per step, upserts them into a new collection
and records after each step the last id copied (``store_state`` ``migrate_next``, with the target in
``vector_store`` ``migrate_to`` / ``migrate_collection`` and the commit number it started at). Running it
again continues after that id; if the home was written in between (another commit number), it starts
over in a fresh collection. The last step is one catalog commit that records the new URI and collection,
and for a home leaving FAISS drops its segment rows (the files are deleted after). Back to ``embedded``,
the live vectors are written as one segment streamed from the catalog (storage/recovery.py ``rebuild``),
committed together with the switch; an interrupted run leaves a stray file the next writer deletes, and
runs again from the start. The old collection is dropped after the switch.

Test-only fault injection: ``SCENEGREP_FAULT=after-vector-insert`` makes the writer process exit at once
(``os._exit(75)``) right after the Milvus insert, before the catalog commit (tests/test_milvus.py).

milvus-lite allows one process at a time on a file (it holds a lock on it): a reader process cannot
search while another process writes the home. Use a Milvus server for concurrent readers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from scenegrep.storage.backends import (
    COLLECTION_KEY,
    EMBEDDED,
    Apply,
    Hits,
    MigrationReport,
    VectorBackend,
    VectorBatch,
    VectorsUri,
    new_collection_name,
    parse_vectors_uri,
    record_uri,
    recorded,
    recorded_uri,
    scan_fields,
    set_recorded,
    set_state_int,
    state_int,
)
from scenegrep.storage.catalog import (
    STATUS_INDEXED,
    Catalog,
    EncoderRow,
    InstanceRow,
    ScanRow,
    SegmentRow,
    VectorDeleteRow,
)
from scenegrep.storage.errors import StoreError
from scenegrep.storage.filters import InstanceFilter
from scenegrep.storage.merge import MergeReport
from scenegrep.storage.milvus_filters import NOTHING, milvus_expression
from scenegrep.storage.query import SearchSettings, normalized_queries
from scenegrep.storage.reads import chunks, indexed_scan_ids
from scenegrep.storage.records import VECTOR_DTYPE
from scenegrep.storage.segments import Segments, commit_number

__all__ = ["MilvusBackend", "MilvusError", "FAULT_ENV", "migrate", "copy_live_vectors", "live_count"]

log = logging.getLogger(__name__)

FAULT_ENV = "SCENEGREP_FAULT"
STAGED_LO = "milvus_staged_lo"
STAGED_HI = "milvus_staged_hi"
MAX_LIMIT = 16384  # Milvus's largest topk
INSERT_ROWS = 5000  # rows per insert call
DELETE_IDS = 10_000  # ids per delete call
TEXT_MAX = 4096  # VARCHAR max_length of scan names, tags and proposers
TAGS_MAX = 256  # tags per scan the ARRAY field holds

_I = InstanceRow.__table__
_S = ScanRow.__table__


class MilvusError(StoreError):
    """Milvus (or milvus-lite) failed or cannot be reached; the message names the URI."""


def fault(point: str) -> None:
    """Test-only: exit the process at ``point`` when ``SCENEGREP_FAULT`` names it (a crash, no cleanup)."""
    if os.environ.get(FAULT_ENV) == point:
        log.warning("fault injection: exiting at %s", point)
        os._exit(75)


# milvus-lite runs its server inside this process, one per file: count the stores using each so closing
# one store does not stop the server another still uses (and the last close releases the file's lock)
_LITE_USERS: dict[str, int] = {}
_LITE_GUARD = threading.Lock()


class MilvusBackend:
    """A home's vectors in one Milvus collection (see the module docstring).

    Attributes:
        uri: the recorded URI. collection: the collection's name.
    """

    def __init__(self, catalog: Catalog, segments: Segments, uri: VectorsUri, collection: str):
        self.uri = uri.text
        self.collection = collection
        self._parsed = uri
        self._catalog = catalog
        self._segments = segments  # the commit counter (no segment rows in a Milvus home)
        self._client: Any = None
        self._lite_key: str | None = None
        self._has_collection: bool | None = None
        self._connect()

    # -- connection ------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.uri} (collection {self.collection})"

    def _connect(self) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise MilvusError(
                f"{self.uri}: this home keeps its vectors in Milvus; install scenegrep[milvus] ({exc})"
            ) from exc
        target = self.uri
        if self._parsed.kind == "milvus-lite":
            assert self._parsed.path is not None
            path = self._parsed.path  # ends in .db (parse_vectors_uri): pymilvus opens such a URI with milvus-lite
            path.parent.mkdir(parents=True, exist_ok=True)
            target = str(path)
            self._lite_key = os.path.abspath(target)
        try:
            self._client = MilvusClient(uri=target, timeout=10)
        except Exception as exc:  # pymilvus raises MilvusException, gRPC errors and OSErrors alike
            raise MilvusError(f"cannot open {self.uri}: {_one_line(exc)}") from exc
        if self._lite_key is not None:
            with _LITE_GUARD:
                _LITE_USERS[self._lite_key] = _LITE_USERS.get(self._lite_key, 0) + 1

    def close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            client.close()
        except Exception as exc:
            log.warning("closing %s: %s", self.uri, _one_line(exc))
        if self._lite_key is not None:
            with _LITE_GUARD:
                left = _LITE_USERS.get(self._lite_key, 1) - 1
                _LITE_USERS[self._lite_key] = left
            if left <= 0:
                _LITE_USERS.pop(self._lite_key, None)
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._lite_key)
        self._segments.clear()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with any client failure as one MilvusError naming the URI."""
        if self._client is None:
            raise MilvusError(f"{self._where()}: closed")
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise MilvusError(f"{self._where()}: {what} failed: {_one_line(exc)}") from exc

    def exists(self) -> bool:
        """Whether the collection exists (cached once true)."""
        if not self._has_collection:
            self._has_collection = bool(self._call("has_collection", self._client.has_collection, self.collection))
            if self._has_collection:  # a reopened collection is released until loaded (server and lite alike)
                self._call("load_collection", self._client.load_collection, self.collection)
        return self._has_collection

    def ensure_collection(self, dim: int) -> None:
        """Create the collection and its index for ``dim``-dimensional vectors unless it exists."""
        if self.exists():
            return
        from pymilvus import DataType

        client = self._client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_field("scan", DataType.VARCHAR, max_length=TEXT_MAX)
        schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=TAGS_MAX, max_length=TEXT_MAX)
        schema.add_field("points", DataType.INT64)
        schema.add_field("extent", DataType.DOUBLE)
        schema.add_field("proposer", DataType.VARCHAR, max_length=TEXT_MAX)
        params = client.prepare_index_params()
        if self._parsed.kind == "milvus-lite":
            params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        else:
            params.add_index(field_name="vector", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 200})
        self._call(
            "create_collection",
            client.create_collection,
            self.collection,
            schema=schema,
            index_params=params,
            consistency_level="Strong",
        )
        self._has_collection = True
        log.info("created Milvus collection %s (dim %d)", self._where(), dim)

    def drop(self) -> None:
        """Drop the collection (after a migration away from Milvus)."""
        if self.exists():
            self._call("drop_collection", self._client.drop_collection, self.collection)
        self._has_collection = False

    def entity_count(self) -> int:
        """Entities in the collection, committed or not (0 when it does not exist)."""
        if not self.exists():
            return 0
        res = self._call("count", self._client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    # -- writes ----------------------------------------------------------------------------------

    def insert(self, batch: VectorBatch, *, upsert: bool = False) -> None:
        """Write the batch's entities (``upsert``: replacing any of the same ids, for resumable copies)."""
        if not batch.ids.size:
            return
        self.ensure_collection(batch.vectors.shape[1])
        op = self._client.upsert if upsert else self._client.insert
        for start in range(0, batch.ids.size, INSERT_ROWS):
            stop = min(start + INSERT_ROWS, batch.ids.size)
            rows = [
                {
                    "id": int(batch.ids[j]),
                    "vector": batch.vectors[j].tolist(),
                    "scan": batch.scans[j],
                    "tags": batch.tags[j][:TAGS_MAX],
                    "points": int(batch.points[j]),
                    "extent": float(batch.extents[j]),
                    "proposer": batch.proposers[j],
                }
                for j in range(start, stop)
            ]
            self._call("upsert" if upsert else "insert", op, self.collection, rows)

    def delete_ids(self, ids: list[int]) -> None:
        if ids and self.exists():
            for chunk in chunks(ids, DELETE_IDS):
                self._call("delete", self._client.delete, self.collection, ids=chunk)

    def _delete_range(self, lo: int, hi: int) -> None:
        if self.exists():
            self._call("delete", self._client.delete, self.collection, filter=f"id >= {int(lo)} and id <= {int(hi)}")

    def stage(self, batch: VectorBatch) -> tuple[int, int] | None:
        """Record the batch's id range in the catalog, then insert it (not visible: not committed)."""
        if not batch.ids.size:
            return None
        self._finish_staged()  # a range an earlier failed abort left behind
        lo, hi = int(batch.ids.min()), int(batch.ids.max())
        with self._catalog.transaction() as s:
            set_state_int(s, STAGED_LO, lo)
            set_state_int(s, STAGED_HI, hi)
        self.insert(batch)
        fault("after-vector-insert")
        return lo, hi

    def commit(self, apply: Apply, staged: tuple[int, int] | None) -> None:
        def apply_and_clear(s: Session, new: list[int]) -> None:
            apply(s, new)
            _clear_staged(s)  # the commit point: these ids are now committed

        self._segments.commit(apply_and_clear)

    def abort(self, staged: tuple[int, int] | None) -> None:
        try:
            self._finish_staged()
        except StoreError as exc:  # the next writer's reconcile deletes the range
            log.warning("could not delete the uncommitted vectors: %s", exc)

    def _finish_staged(self) -> None:
        """Delete a recorded staged range from Milvus and clear the record (its commit never happened:
        a committed write clears the record in its commit transaction)."""
        with self._catalog.transaction() as s:
            lo, hi = state_int(s, STAGED_LO), state_int(s, STAGED_HI)
        if lo is None or hi is None:
            return
        log.warning("deleting uncommitted vectors %d..%d from %s", lo, hi, self._where())
        self._delete_range(lo, hi)
        with self._catalog.transaction() as s:
            _clear_staged(s)

    def record_deletes(self, s: Session, scan_ids: list[int]) -> None:
        s.execute(
            insert(VectorDeleteRow.__table__).from_select(
                ["id"], select(_I.c.id).where(_I.c.scan_id.in_(scan_ids), _I.c.searchable.is_(True))
            )
        )

    def after_commit(self) -> None:
        self.apply_deletes()

    def apply_deletes(self) -> int:
        """Delete the ids committed as removed from Milvus, then forget them; returns how many."""
        done = 0
        while True:
            with self._catalog.transaction() as s:
                ids = list(s.scalars(select(VectorDeleteRow.id).order_by(VectorDeleteRow.id).limit(DELETE_IDS)))
            if not ids:
                return done
            self.delete_ids(ids)
            with self._catalog.transaction() as s:
                s.execute(delete(VectorDeleteRow).where(VectorDeleteRow.id.in_(ids)))
            done += len(ids)

    def reconcile(self) -> None:
        """Finish what a crashed writer left (see the module docstring)."""
        self._finish_staged()
        n = self.apply_deletes()
        if n:
            log.warning("applied %d committed deletes to %s", n, self._where())

    # -- reads -----------------------------------------------------------------------------------

    def refresh(self) -> bool:
        return self._segments.refresh()

    def count(self) -> int:
        with self._catalog.transaction() as s:
            return live_count(s)

    def search(self, queries: np.ndarray, k: int, filt: InstanceFilter | None, settings: SearchSettings) -> Hits:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = normalized_queries(queries)
        empty: Hits = [[] for _ in range(q.shape[0])]
        with self._catalog.transaction() as s:
            self._segments.sync(s)
            assert self._segments.snapshot is not None
            dim = self._segments.snapshot.dim  # read by the sync, in this transaction
            if dim is None:
                return empty
            if dim != q.shape[1]:
                raise ValueError(f"queries must have dimension {dim}, got {q.shape[1]}")
            if filt is not None and filt.scans:
                indexed_scan_ids(s, filt.scans)  # NotFoundError names an unknown scan
            live = live_count(s)
        expr = milvus_expression(filt)
        if expr == NOTHING or not live or not self.exists():
            return empty
        k = min(int(k), live, MAX_LIMIT)
        params: dict[str, Any] = {"metric_type": "IP"}
        if self._parsed.kind != "milvus-lite":
            params["params"] = {"ef": max(int(settings.ef_search), k)}
        limit = k
        while True:
            raw = self._call(
                "search",
                self._client.search,
                self.collection,
                data=q.tolist(),
                limit=limit,
                filter=expr,
                output_fields=["id"],
                search_params=params,
                anns_field="vector",
            )
            found = [
                (np.array([h["id"] for h in row], np.int64), np.array([h["distance"] for h in row], np.float32))
                for row in raw
            ]
            with self._catalog.transaction() as s:
                alive = live_subset(s, np.concatenate([ids for ids, _ in found]) if found else np.zeros(0, np.int64))
            out: Hits = []
            short = False
            for ids, scores in found:
                keep = np.isin(ids, alive)
                ids, scores = ids[keep], scores[keep]
                _, first = np.unique(ids, return_index=True)  # an id upserted twice comes back once
                ids, scores = ids[first], scores[first]
                order = np.lexsort((ids, -scores))[:k]  # best first; ties by id, as FAISS results are
                out.append([(int(ids[j]), float(scores[j])) for j in order])
                short = short or (len(order) < k and int(keep.size) == limit)
            if not short or limit >= MAX_LIMIT:
                return out
            limit = min(limit * 4, MAX_LIMIT)  # not-yet-deleted or uncommitted entities took places: ask for more

    # -- maintenance -----------------------------------------------------------------------------

    def optimize(self) -> MergeReport:
        """Apply pending deletes and ask Milvus to compact the collection."""
        self.apply_deletes()
        if self.exists():
            self._call("compact", self._client.compact, self.collection)
        return MergeReport(0, 0, self.count(), "milvus")

    def verify(self, full: bool) -> list[str]:
        """The collection exists when vectors are live, and holds exactly the live ids (plus committed deletes
        not applied yet and an uncommitted staged range, which a writer's open finishes). ``full`` also
        compares every id, both ways: live ids missing from Milvus, and ids Milvus holds that are neither
        live, nor waiting to be deleted, nor in the staged range (they would never be searched, as hits are
        intersected with the live ids, but they take space and mean something wrote there)."""
        with self._catalog.transaction() as s:
            live = live_count(s)
            waiting = int(s.scalar(select(func.count()).select_from(VectorDeleteRow)) or 0)
            staged = state_int(s, STAGED_LO) is not None
        if not self.exists():
            return [f"{self._where()}: the collection is missing but {live} vectors are live"] if live else []
        have = self.entity_count()
        problems: list[str] = []
        if not staged and not live <= have <= live + waiting:
            problems.append(f"{self._where()}: holds {have} vectors, the catalog {live} live (+{waiting} to delete)")
        if full:
            stored = np.sort(np.fromiter(self._all_ids(), np.int64))
            with self._catalog.transaction() as s:
                want = live_ids(s)
                expected = np.union1d(want, np.fromiter(s.scalars(select(VectorDeleteRow.id)), np.int64))
                lo, hi = state_int(s, STAGED_LO), state_int(s, STAGED_HI)
            missing = np.setdiff1d(want, stored)
            if missing.size:
                problems.append(f"{self._where()}: {missing.size} live vectors are missing (e.g. id {int(missing[0])})")
            extra = np.setdiff1d(stored, expected)
            if lo is not None and hi is not None:
                extra = extra[(extra < lo) | (extra > hi)]
            if extra.size:
                problems.append(f"{self._where()}: holds {extra.size} vectors the catalog does not know "
                                f"(e.g. id {int(extra[0])})")
        return problems

    def _all_ids(self) -> Iterator[int]:
        """Every id in the collection, by id windows (a query's limit is bounded)."""
        last = -1
        while True:
            rows = self._call(
                "query",
                self._client.query,
                self.collection,
                filter=f"id > {last}",
                output_fields=["id"],
                limit=MAX_LIMIT,
            )
            ids = sorted(int(r["id"]) for r in rows)
            yield from ids
            if len(ids) < MAX_LIMIT:
                return
            last = ids[-1]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vectors_uri": self.uri, "milvus_collection": self.collection, "milvus_entities": self.entity_count()
        }
        if self._parsed.path is not None:  # milvus-lite: its folder's bytes (a server's are its own business)
            files = [f for f in self._parsed.path.rglob("*") if f.is_file()] if self._parsed.path.exists() else []
            out["bytes_milvus_lite"] = sum(f.stat().st_size for f in files)
        return out


def _live_stmt():  # noqa: ANN202 (a Select)
    return (
        select(_I.c.id)
        .join(_S, _S.c.id == _I.c.scan_id)
        .where(_S.c.status == STATUS_INDEXED, _I.c.searchable.is_(True))
    )


def live_count(s: Session) -> int:
    """Searchable instances of indexed scans: what a Milvus home's search may return."""
    return int(s.scalar(select(func.count()).select_from(_live_stmt().subquery())) or 0)


def live_ids(s: Session) -> np.ndarray:
    """(n,) int64 live ids, ascending."""
    return np.array(s.connection().execute(_live_stmt().order_by(_I.c.id)).scalars().all(), np.int64)


def live_subset(s: Session, ids: np.ndarray) -> np.ndarray:
    """The ids among ``ids`` that are live as of this transaction."""
    out: list[int] = []
    for chunk in chunks(np.unique(ids).tolist()):
        out += s.connection().execute(_live_stmt().where(_I.c.id.in_(chunk))).scalars().all()
    return np.array(out, np.int64)


def _clear_staged(s: Session) -> None:
    """Forget the recorded staged id range (its vectors are committed, or were deleted)."""
    set_state_int(s, STAGED_LO, None)
    set_state_int(s, STAGED_HI, None)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


# -- copying from the catalog ------------------------------------------------------------------------

MIGRATE_TO = "migrate_to"
MIGRATE_COLLECTION = "migrate_collection"
MIGRATE_NEXT = "migrate_next"
MIGRATE_COMMIT = "migrate_commit"


def live_batch(s: Session, after: int, n: int, dim: int) -> VectorBatch:
    """Up to ``n`` live vectors with ids above ``after``, in id order, with their filterable fields."""
    import json

    rows = s.connection().execute(
        select(_I.c.id, _I.c.vector, _I.c.point_count, _I.c.extent, _S.c.name, _S.c.tags_json, _S.c.info_json)
        .join(_S, _S.c.id == _I.c.scan_id)
        .where(_S.c.status == STATUS_INDEXED, _I.c.searchable.is_(True), _I.c.id > after)
        .order_by(_I.c.id)
        .limit(n)
    ).all()
    fields: dict[str, tuple[list[str], str]] = {}
    scans: list[str] = []
    tags: list[list[str]] = []
    proposers: list[str] = []
    for r in rows:
        if r.name not in fields:
            fields[r.name] = scan_fields(json.loads(r.tags_json), json.loads(r.info_json))
        scans.append(r.name)
        tags.append(fields[r.name][0])
        proposers.append(fields[r.name][1])
    vectors = (
        np.frombuffer(b"".join(r.vector for r in rows), VECTOR_DTYPE).reshape(len(rows), dim).astype(np.float32)
        if rows
        else np.zeros((0, dim), np.float32)
    )
    return VectorBatch(
        np.array([r.id for r in rows], np.int64),
        vectors,
        scans,
        tags,
        np.array([r.point_count for r in rows], np.int64),
        np.array([r.extent for r in rows], np.float64),
        proposers,
    )


def copy_live_vectors(catalog: Catalog, target: MilvusBackend, dim: int, batch: int = 20_000) -> int:
    """Upsert every live vector of the catalog into ``target`` (repair); returns how many."""
    after, copied = 0, 0
    while True:
        with catalog.transaction() as s:
            part = live_batch(s, after, batch, dim)
        if not part.ids.size:
            return copied
        target.insert(part, upsert=True)
        copied += int(part.ids.size)
        after = int(part.ids[-1])


def migrate(
    catalog: Catalog,
    segments: Segments,
    current: VectorBackend,
    home: Path,
    to: str,
    batch: int = 20_000,
    max_batches: int | None = None,
) -> MigrationReport:
    """Move a home's vectors to ``to`` (see "Migration" in the module docstring). The caller holds the
    writer lock and switches its backend object when the report says ``done``."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    target = parse_vectors_uri(to, home)
    with catalog.transaction() as s:
        total = live_count(s)
        dim = s.scalar(select(EncoderRow.dim).order_by(EncoderRow.id).limit(1))
        if target.text == recorded_uri(s):
            return MigrationReport(target.text, True, 0, total)
        commit = commit_number(s)
        fresh = recorded(s, MIGRATE_TO) != target.text or state_int(s, MIGRATE_COMMIT) != commit
        abandoned = (recorded(s, MIGRATE_TO), recorded(s, MIGRATE_COLLECTION)) if fresh else (None, None)
        if fresh:
            set_recorded(s, MIGRATE_TO, target.text)
            set_recorded(s, MIGRATE_COLLECTION, new_collection_name() if target.is_milvus else None)
            set_state_int(s, MIGRATE_NEXT, 0)
            set_state_int(s, MIGRATE_COMMIT, commit)
        collection = recorded(s, MIGRATE_COLLECTION)
        after = state_int(s, MIGRATE_NEXT) or 0
    if abandoned[0] and abandoned[1]:  # the partial copy of an earlier run that will not be resumed
        _drop_abandoned(catalog, segments, home, abandoned[0], abandoned[1])
    if not target.is_milvus:
        return _migrate_to_embedded(catalog, segments, current, total, dim)
    assert collection is not None
    dest = MilvusBackend(catalog, segments, target, collection)
    copied, steps = 0, 0
    try:
        if fresh:
            dest.drop()  # a leftover of an abandoned run under this name (never expected: names are fresh)
        if dim is not None:
            dest.ensure_collection(dim)
        while dim is not None:
            if max_batches is not None and steps >= max_batches:
                return MigrationReport(target.text, False, copied, total)
            with catalog.transaction() as s:
                part = live_batch(s, after, batch, dim)
            if not part.ids.size:
                break
            dest.insert(part, upsert=True)  # upsert: a step re-run after a crash writes no duplicates
            after = int(part.ids[-1])
            with catalog.transaction() as s:
                set_state_int(s, MIGRATE_NEXT, after)
            copied += int(part.ids.size)
            steps += 1
            log.info("migrate: copied %d vectors to %s (up to id %d)", copied, target.text, after)
        retired = _switch(catalog, segments, target.text, collection)
    finally:
        dest.close()
    segments.delete_files(retired)
    if current.uri != EMBEDDED:
        _drop_quietly(current)
    return MigrationReport(target.text, True, copied, total)


def _switch(catalog: Catalog, segments: Segments, uri: str, collection: str | None) -> list[str]:
    """The migration's commit point: record the new backend, forget the migration, drop every segment row
    (a Milvus home has none) and Milvus deletes of the old collection. Returns the retired files."""
    with catalog.transaction() as s:
        rows = {r.id: r.filename for r in s.scalars(select(SegmentRow))}

    def apply(s: Session, _new: list[int]) -> None:
        s.execute(InstanceRow.__table__.update().where(_I.c.segment_id.is_not(None)).values(segment_id=None))
        _record_switch(s, uri, collection)

    segments.commit(apply, retire=list(rows))
    return list(rows.values())


def _record_switch(s: Session, uri: str, collection: str | None) -> None:
    record_uri(s, uri, collection)
    for key in (MIGRATE_TO, MIGRATE_COLLECTION):
        set_recorded(s, key, None)
    for key in (MIGRATE_NEXT, MIGRATE_COMMIT):
        set_state_int(s, key, None)
    _clear_staged(s)
    s.execute(delete(VectorDeleteRow))


def _migrate_to_embedded(
    catalog: Catalog, segments: Segments, current: VectorBackend, total: int, dim: int | None
) -> MigrationReport:
    from scenegrep.storage.recovery import rebuild

    if dim is None:
        with catalog.transaction() as s:
            _record_switch(s, EMBEDDED, None)
    else:
        rebuild(catalog, segments, [], dim, also=lambda s: _record_switch(s, EMBEDDED, None))
    _drop_quietly(current)
    return MigrationReport(EMBEDDED, True, total, total)


def _drop_abandoned(catalog: Catalog, segments: Segments, home: Path, uri: str, collection: str) -> None:
    try:
        parsed = parse_vectors_uri(uri, home)
        if parsed.is_milvus:
            old = MilvusBackend(catalog, segments, parsed, collection)
            try:
                old.drop()
            finally:
                old.close()
    except StoreError as exc:
        log.warning("the partial copy of an abandoned migration (%s, %s) was not dropped: %s", uri, collection, exc)


def _drop_quietly(backend: VectorBackend) -> None:
    """Drop the collection a migration left behind (a failure only costs space: say so)."""
    if isinstance(backend, MilvusBackend):
        try:
            backend.drop()
        except StoreError as exc:
            log.warning("the old collection was not dropped: %s", exc)
