"""The library's front door: :func:`open` a home and get a :class:`Collection`.

A collection is one home folder (catalog, vectors, point files) seen through the operations users need:
index scan folders, search by text or vector, look at an instance and its exact points, export them, list
and remove scans, statistics and verification. The CLI and the HTTP server are thin faces over this class;
everything they do goes through it, so a Python user can do the same.

The text encoder is the catalog's own, loaded once per collection on the first query (or reused from the
last ``index`` call), so a long-lived collection (the server) answers queries without reloading the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from scenegrep.errors import SettingsError
from scenegrep.indexer.settings import IndexSettings

if TYPE_CHECKING:
    import numpy as np

    from scenegrep.indexer.features.encoders import ClipEncoder
    from scenegrep.indexer.pipeline import ProgressFn, ScanOutcome
    from scenegrep.search.engine import SearchEngine
    from scenegrep.search.hits import Hit, HitPoints, InstanceDetails
    from scenegrep.storage import ScanInfo, Store

__all__ = ["Collection", "open_collection"]

log = logging.getLogger(__name__)

#: Instance ids are SQLite integer keys: anything outside this range cannot name an instance.
_MAX_ID = 2**63 - 1


def _check_id(instance_id: int) -> int:
    from scenegrep.storage.errors import NotFoundError

    try:
        iid = int(instance_id)
    except (TypeError, ValueError):
        raise NotFoundError(f"no instance {instance_id!r}: ids are integers") from None
    if not 0 <= iid <= _MAX_ID:
        raise NotFoundError(f"no instance {iid}")
    return iid


class Collection:
    """An open home. Use :func:`scenegrep.open` to get one, as a context manager.

    Args:
        home: the home folder.
        write: writable (holds the home's lock once the home exists).
        device: device for the models this collection loads ("cpu" or "cuda").
        store: the already open store of the home; None = open it on first use (a new home is created
            only by its first write, so a job rejected before that leaves no trace).
        catalog_url: the catalog database of a home this collection creates (see :func:`scenegrep.open`).
    """

    def __init__(self, home: Path | str, *, write: bool = False, device: str = "cpu",
                 store: "Store | None" = None, vectors_uri: str | None = None,
                 catalog_url: str | None = None):
        self._home = Path(home)
        self._write = write
        if vectors_uri is not None:  # a malformed URI fails now, before any model or file is touched
            from scenegrep.storage.backends import parse_vectors_uri

            parse_vectors_uri(vectors_uri, self._home)
        self._vectors_uri = vectors_uri
        self._catalog_url = catalog_url
        self._device = device
        self._opened = store
        self._encoder: ClipEncoder | None = None
        self._engine: SearchEngine | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def _store(self) -> "Store":
        if self._opened is None:
            from scenegrep.storage import Store

            self._opened = Store.open(self._home, read_only=not self._write, vectors_uri=self._vectors_uri,
                                      catalog_url=self._catalog_url)
        return self._opened

    @property
    def home(self) -> Path:
        """The home folder."""
        return self._home

    @property
    def read_only(self) -> bool:
        """True when opened for reading (no lock taken; ``index``/``remove`` refuse)."""
        return not self._write

    def close(self) -> None:
        """Release the home (and the writer lock, if held)."""
        if self._opened is not None:
            self._opened.close()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_writer(self, what: str) -> None:
        if self.read_only:
            raise SettingsError(f"{what} needs a writable collection: scenegrep.open(home, write=True)",
                                self.home)

    @property
    def engine(self) -> "SearchEngine":
        from scenegrep.search.engine import SearchEngine

        if self._engine is None:
            self._engine = SearchEngine(self._store, encoder=self._encoder, device=self._device)
        return self._engine

    # -- writing ---------------------------------------------------------------------------------------

    def index(self, paths: Sequence[Path | str], settings: IndexSettings | None = None, *,
              progress: "ProgressFn | None" = None, **options: Any) -> list["ScanOutcome"]:
        """Index scan folders (a folder of scan folders stands for all of them).

        Args:
            paths: scan folders (ScanNet or 7-Scenes layout) or folders holding scan folders.
            settings: the job's settings; or give ``options`` (``preset=..., frame_step=..., proposer=...``,
                see :meth:`IndexSettings.create`) instead. ``ray_address`` (``"local"``, ``"auto"``,
                ``"ray://HOST:PORT"``) runs the job on Ray workers (``workers``, ``gpus_per_worker``); this
                process stays the one writer.
            progress: called as ``progress(scan, stage, done, total)``, and as
                ``progress("", "scans", done, total)`` each time a scan is finished.

        Returns one :class:`~scenegrep.indexer.pipeline.ScanOutcome` per scan: a bad scan fails alone
        (``status="failed"``, ``error`` names the file); unchanged scans are skipped by content hash.

        Raises:
            SettingsError: contradictory options; EncoderMismatchError: the home holds another encoder's
            vectors; WeightsFileError / EncoderWeightsError: a checkpoint or CLIP's weights are unusable.
        """
        from scenegrep.indexer.pipeline import index_paths, load_job, nothing_to_index

        self._require_writer("index")
        if settings is not None and options:
            raise SettingsError("pass either settings= or keyword options to index(), not both")
        settings = settings or IndexSettings.create(**options)
        failed = nothing_to_index(paths)
        if failed is not None:
            return failed  # say what is wrong with the paths before loading any model
        home_encoder = self._opened.encoder() if self._opened is not None else None
        choice = settings.encoder_choice(home_encoder)
        if choice.from_home:
            log.info("reusing this home's encoder %s", home_encoder.describe())
        if settings.ray_address is not None:
            # the models load in the Ray workers, not here
            from scenegrep.indexer.distributed import index_paths_ray

            outcomes = index_paths_ray(paths, self._store, settings, choice, progress=progress)
        else:
            encoder, job = load_job(settings, choice, self._encoder)
            if encoder.spec.random_weights:
                log.warning("CLIP %s is running with RANDOM weights: vectors and scores are meaningless",
                            choice.model)
            outcomes = index_paths(paths, self._store, encoder, job, progress=progress)
            self._encoder = encoder
        self._engine = None
        return outcomes

    def remove(self, scan: str) -> int:
        """Delete a scan everywhere (catalog rows, vectors, point file); returns its instance count."""
        self._require_writer("remove")
        return self._store.remove_scan(scan)

    # -- searching -------------------------------------------------------------------------------------

    def search(self, query: "str | np.ndarray", k: int = 10, *, templates: bool = False, all: bool = False,
               min_score: float | None = None, **filters: Any) -> list["Hit"]:
        """The ``k`` instances most similar to ``query`` (a text, or a (D,) vector), best first.

        Args:
            k: hits wanted (at most 10,000; fewer when fewer match).
            templates: average a text query over a prompt-template ensemble.
            all: report near-duplicates (nested proposals of one object) as hits of their own instead of
                folding them into the better hit (``Hit.folded``).
            min_score: drop hits whose calibrated ``relevance`` is below this (in [0, 1]).
            filters: ``scans``, ``tags`` (a hit's scan carries all of them), ``min_points``, ``max_points``,
                ``min_extent``, ``max_extent`` (largest side of the box, metres), ``proposer``; applied
                inside the vector search, so k hits come back whenever k match. ``nprobe``: IVF lists
                visited in compressed segments (default: the store's, nlist / 32, at least 32).
        """
        options = self._search_options(all, min_score, filters)
        if isinstance(query, str):
            return self.engine.search(query, k=k, templates=templates, **options)
        return self.engine.search_vector(query, k=k, **options)

    def like(self, instance_id: int, k: int = 10, *, all: bool = False, min_score: float | None = None,
             **filters: Any) -> list["Hit"]:
        """The ``k`` instances most similar to a stored one (query by example; itself excluded)."""
        return self.engine.like(_check_id(instance_id), k=k, **self._search_options(all, min_score, filters))

    def search_image(self, image: Any, k: int = 10, *, all: bool = False, min_score: float | None = None,
                     **filters: Any) -> list["Hit"]:
        """The ``k`` instances most similar to a photo (path, bytes, PIL image or (H, W, 3) uint8 array),
        embedded by the catalog encoder's image tower."""
        vector = self.engine.embed_image(image)
        return self.engine.search_vector(vector, k=k, **self._search_options(all, min_score, filters))

    def search_many(self, texts: Sequence[str], k: int = 10, *, all: bool = False,
                    min_score: float | None = None, **filters: Any) -> list[list["Hit"]]:
        """One ranked list per text query (the texts are embedded in one batch)."""
        return self.engine.search_many(list(texts), k=k, **self._search_options(all, min_score, filters))

    @staticmethod
    def _search_options(all: bool, min_score: float | None, filters: dict[str, Any]) -> dict[str, Any]:
        from scenegrep.storage.filters import InstanceFilter

        nprobe = filters.pop("nprobe", None)
        if nprobe is not None and not 1 <= int(nprobe) <= 65536:
            raise SettingsError(f"{nprobe} is outside 1..65536", "--nprobe")
        if min_score is not None and not 0.0 <= float(min_score) <= 1.0:
            raise SettingsError(f"{min_score} is outside [0, 1]", "--min-score")
        given = {k: v for k, v in filters.items() if v is not None and v != () and v != []}
        try:
            flt = InstanceFilter(**given) if given else None
        except (TypeError, ValueError) as e:
            raise SettingsError(f"bad search filter: {e}") from None
        return {"filter": flt, "fold": not all, "min_relevance": min_score, "nprobe": nprobe}

    def embed_text(self, text: str, templates: bool = False) -> "np.ndarray":
        """The (D,) unit vector the catalog's encoder gives ``text``."""
        return self.engine.embed_text(text, templates)

    # -- looking at results ------------------------------------------------------------------------------

    def instance(self, instance_id: int, *, vector: bool = False) -> "InstanceDetails":
        """Everything the catalog knows about one instance (``vector=True`` adds its stored vector)."""
        info = self._store.instance(_check_id(instance_id))
        return self.engine.details(info, with_vector=vector)

    def instances(self, scan: str) -> list["InstanceDetails"]:
        """Every instance of one scan, in the order its masks were proposed."""
        rows = self._store.instances(scan)
        found = self._store.find_scan(scan) if rows else None  # read once for all its instances
        return [self.engine.details(info, scan=found) for info in rows]

    def points(self, instance_id: int) -> "HitPoints":
        """The exact point subset of an instance: indices into its scan, xyz and rgb."""
        return self.engine.points(_check_id(instance_id))

    def export(self, instance_id: int, path: Path | str) -> Path:
        """Write an instance's points to ``path`` (``.ply`` or ``.npz``; the folder must exist)."""
        return self.points(instance_id).save(path)

    def thumbnail(self, instance_id: int) -> Path | None:
        """Absolute path of the instance's JPEG thumbnail, or None when it has none."""
        path = self.engine.thumbnail_path(_check_id(instance_id))
        return Path(path) if path else None

    def scans(self) -> list["ScanInfo"]:
        """The indexed scans."""
        return self._store.scans()

    def scan_points(self, scan: str) -> tuple["np.ndarray", "np.ndarray"]:
        """(xyz (N,3) float32, rgb (N,3) uint8) of a whole indexed scan."""
        return self._store.scan_points(scan)

    def stats(self) -> dict[str, Any]:
        """Counts (scans, instances, searchable, vectors), the encoder, segments, bytes on disk."""
        return self._store.stats()

    def recall(self, sample: int = 200) -> float:
        """recall@10 of the vector search against exact search, on ``sample`` stored vectors as queries."""
        return float(self._store.recall_at_10(sample=sample))

    def verify(self) -> list[str]:
        """Check every byte and every invariant of the home; one line per problem (empty: healthy)."""
        return self._store.verify(full=True)

    def repair(self) -> list[str]:
        """Rebuild what can be rebuilt (vectors from the catalog's float16 copies, point files by re-reading
        the scan from its source folder); one line per action or per thing that could not be rebuilt."""
        from scenegrep.indexer.scans import read_scan

        self._require_writer("repair")

        def reread(source_path: str) -> tuple["np.ndarray", "np.ndarray"]:
            scan = read_scan(source_path)
            return scan.points, scan.colors

        return self._store.repair(reread=reread)

    def optimize(self) -> dict[str, Any]:
        """Merge small segments and drop deleted vectors now (writers also do it by policy)."""
        from dataclasses import asdict

        self._require_writer("optimize")
        return asdict(self._store.optimize())

    def migrate(self, to: str, *, batch: int = 20_000) -> dict[str, Any]:
        """Move this home's vectors to ``to``: ``milvus-lite:PATH.db`` (relative to the home),
        ``http://host:19530`` (a Milvus server), or ``embedded`` (back to FAISS segments). Resumable: an
        interrupted run continues where it stopped when run again; the home switches in one commit at the
        end. Returns ``{"to", "done", "copied", "total"}``.

        Raises:
            VectorsUriError: ``to`` names no vector store; MilvusError: Milvus cannot be reached.
        """
        from dataclasses import asdict

        self._require_writer("migrate")
        return asdict(self._store.migrate(to, batch=batch))

    @property
    def vectors_uri(self) -> str:
        """Where this home's vectors live: ``embedded``, ``milvus-lite:PATH`` or ``http(s)://host:port``."""
        return self._store.vectors_uri

    def refresh(self) -> bool:
        """Pick up what a concurrent writer committed since this collection was opened (True if anything)."""
        return bool(self._store.refresh())


def open_collection(home: Path | str, *, write: bool = False, device: str = "cpu",
                    vectors_uri: str | None = None, catalog_url: str | None = None) -> Collection:
    """Open the home folder ``home`` (created on the first write).

    Args:
        home: the folder holding the catalog (or ``home.json`` naming it), vectors and point files.
        write: take the home's writer lock (needed for ``index`` and ``remove``); readers never wait.
        device: device for the models the collection loads ("cpu" or "cuda").
        vectors_uri: where a new home keeps its vectors (``embedded``, ``milvus-lite:PATH.db``,
            ``http://host:19530``); recorded when the home is created, and for an existing home it must
            name the recorded one (VectorsUriMismatchError otherwise).
        catalog_url: the catalog database of a home this creates (see :func:`scenegrep.open`).
    """
    from scenegrep.storage import Store
    from scenegrep.storage.home import CATALOG_FILE
    from scenegrep.storage.homeconfig import HOME_CONFIG_FILE, parse_catalog_url

    home = Path(home).expanduser()
    if catalog_url is not None:
        parse_catalog_url(catalog_url)  # a malformed URL fails now, not at the first write
    if write and not (home / CATALOG_FILE).exists() and not (home / HOME_CONFIG_FILE).exists():
        # created by its first write
        return Collection(home, write=True, device=device, vectors_uri=vectors_uri, catalog_url=catalog_url)
    store = Store.open(home, read_only=not write, vectors_uri=vectors_uri, catalog_url=catalog_url)
    return Collection(home, write=write, device=device, store=store, vectors_uri=vectors_uri,
                      catalog_url=catalog_url)
