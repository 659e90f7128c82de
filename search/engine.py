"""SearchEngine: text or vector -> ranked hits across every indexed scan.

The text encoder is always the one the catalog was built with (read from the catalog, loaded lazily,
and checked against the stored checkpoint hash), so a query can never be embedded in another space
than the instance vectors.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scenegrep.indexer.features.encoders import ClipEncoder, load_encoder
from scenegrep.indexer.pipeline import encoder_identity
from scenegrep.search.folding import Group, fold as fold_hits
from scenegrep.search.hits import Hit, HitPoints, InstanceDetails
from scenegrep.search.relevance import REFERENCE_SIZE, Calibration
from scenegrep.storage import InstanceInfo, ScanInfo, Store
from scenegrep.storage.filters import InstanceFilter
from scenegrep.errors import SettingsError
from scenegrep.storage.errors import StoreError

log = logging.getLogger(__name__)

#: Prompt templates for ``templates=True`` (a small subset of CLIP's ImageNet ensemble that suits
#: indoor object crops). Each query is embedded once per template; the unit vectors are averaged.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a {} in a room.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
)


#: Longest text query accepted (CLIP reads 77 tokens; a longer text is a mistake or an attack).
MAX_QUERY_CHARS = 1000
#: Most hits one query may ask for; ``k`` is also clamped to the number of stored vectors.
MAX_K = 10_000
#: Most candidates one query looks at to fill k hits after folding and relevance cuts.
MAX_CANDIDATES = 20_000
#: Most queries in one batch.
MAX_BATCH = 10_000
#: Largest photo accepted for image search (bytes) and its largest side (pixels) once decoded.
MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_SIDE = 8192


def check_text(text: str) -> None:
    """QueryError unless ``text`` is a usable text query."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("empty query")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(text)} characters long; at most {MAX_QUERY_CHARS} are accepted")


def _rgb_image(image: Any) -> Any:
    """A PIL RGB image from a PIL image, an (H, W, 3) uint8 array, a file path or encoded bytes."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise QueryError(f"an image array must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
        return Image.fromarray(image)
    source = image
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise QueryError("no such image file", path)
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise QueryError(f"larger than {MAX_IMAGE_BYTES // 2**20} MiB", path)
        source = path.read_bytes()
    if not isinstance(source, (bytes, bytearray)):
        raise QueryError(f"cannot read an image from {type(image).__name__}")
    if len(source) > MAX_IMAGE_BYTES:
        raise QueryError(f"the image is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with Image.open(io.BytesIO(source)) as im:
            if max(im.size) > MAX_IMAGE_SIDE:
                raise QueryError(f"the image is {im.size[0]} x {im.size[1]} pixels; at most {MAX_IMAGE_SIDE} a side")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise QueryError(f"not a readable image ({type(e).__name__}: {e})", image if isinstance(image, (str, Path)) else None) from None


class QueryError(SettingsError):
    """A query the engine will not run: empty, too long, a bad vector, an absurd k."""


class EmptyCatalogError(StoreError):
    """Search on a home that has never indexed anything."""


class EncoderChangedError(StoreError):
    """The encoder loaded for queries is not the one that made the catalog's vectors."""


def _mask_source(scan_info: dict, mask_index: int) -> str | None:
    """The proposer that made one mask: a union's member when recorded, else the scan's proposer."""
    sources = scan_info.get("mask_sources")
    if isinstance(sources, list) and 0 <= mask_index < len(sources) and sources[mask_index]:
        return sources[mask_index]
    return scan_info.get("proposer")


class SearchEngine:
    """Ranked instance search over a :class:`scenegrep.storage.Store`.

    Args:
        store: an open store.
        encoder: the text encoder; None = load the catalog's own encoder on first use.
        device: device for a lazily loaded encoder ("cpu" or "cuda").
    """

    def __init__(self, store: Store, encoder: ClipEncoder | None = None, device: str = "cpu"):
        self.store = store
        self.device = device
        self._encoder = encoder

    # -- encoder ---------------------------------------------------------------------------------

    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            self._encoder = self._load_catalog_encoder()
        return self._encoder

    def _load_catalog_encoder(self) -> ClipEncoder:
        ident = self.store.encoder()
        if ident is None:
            raise EmptyCatalogError("nothing indexed yet in this home: run `scenegrep index` first")
        enc = load_encoder(ident.name, ident.pretrained, device=self.device,
                           allow_random_weights=ident.random_weights)
        loaded = encoder_identity(enc.spec)
        if not loaded.matches(ident):
            raise EncoderChangedError(
                f"the catalog was built with {ident.describe()}, but loading it now gives "
                f"{loaded.describe()}: the weights file changed; re-index or restore it")
        if ident.random_weights:
            log.warning("this catalog was built with RANDOM encoder weights: scores are meaningless")
        return enc

    # -- queries ---------------------------------------------------------------------------------

    def embed_text(self, text: str, templates: bool = False) -> np.ndarray:
        """(D,) float32 unit vector for ``text`` (optionally a prompt-template ensemble)."""
        prompts = [t.format(text) for t in PROMPT_TEMPLATES] if templates else [text]
        emb = self.encoder.encode_texts(prompts)
        v = emb.mean(axis=0)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed_image(self, image: Any) -> np.ndarray:
        """(D,) float32 unit vector of a photo (a PIL image, an (H, W, 3) uint8 array, a path or bytes),
        from the catalog encoder's image tower."""
        return self.encoder.encode_images([_rgb_image(image)])[0].astype(np.float32)

    def search(self, text: str, k: int = 10, *, templates: bool = False, **options: Any) -> list[Hit]:
        """The ``k`` instances most similar to ``text``, best first (options: :meth:`search_vector`'s)."""
        check_text(text)
        return self.search_vector(self.embed_text(text, templates), k=k, **options)

    def like(self, instance_id: int, k: int = 10, **options: Any) -> list[Hit]:
        """The ``k`` instances most similar to a stored instance (its own vector; itself excluded)."""
        vector = self.store.instance_vector(instance_id)
        if vector is None:
            raise QueryError(f"instance {instance_id} has no vector (it was never visible in a used frame)")
        return self.search_vector(vector, k=k, exclude=(int(instance_id),), **options)

    def search_vector(self, vector: np.ndarray, k: int = 10, *, filter: InstanceFilter | None = None,
                      scans: Sequence[str] | None = None, fold: bool = True, min_relevance: float | None = None,
                      exclude: Sequence[int] = (), nprobe: int | None = None) -> list[Hit]:
        """The ``k`` instances most similar to a (D,) query vector (normalised here), best first.

        Args:
            filter: only instances meeting it (applied inside the vector search: k hits whenever k exist).
            scans: shorthand for a filter on scan names (combined with ``filter``).
            fold: fold near-duplicates of a better hit of the same scan into it (:mod:`.folding`).
            min_relevance: drop hits whose calibrated relevance is below this (:mod:`.relevance`).
            exclude: instance ids never returned (``like`` excludes the example).
            nprobe: IVF lists visited per query in compressed segments (default: the store's setting);
                more is slower and closer to exact search.
        """
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            raise QueryError("the query vector must be finite and non-zero")
        q = q / norm
        if scans:
            filter = replace(filter or InstanceFilter(), scans=tuple(scans))
        live = int(self.store.vector_count())
        if live == 0:
            return []
        calib = Calibration.for_query(q, self.store.reference_vectors(REFERENCE_SIZE))
        skip = set(int(i) for i in exclude)
        want = min(k, live)
        plain = not fold and not skip and min_relevance is None
        fetch = want if plain else min(live, MAX_CANDIDATES, max(4 * want, want + 32))
        while True:
            ranked = [(i, s) for i, s in self.store.search(q, fetch, filter=filter, nprobe=nprobe)[0] if i not in skip]
            cut = False
            if min_relevance is not None and calib is not None:
                rel = calib(np.array([s for _, s in ranked], np.float64))
                cut = bool((rel < min_relevance).any())  # relevance falls with the score: the rest is below
                ranked = [r for r, ok in zip(ranked, rel >= min_relevance) if ok]
            infos = self.store.instances_by_ids([i for i, _ in ranked])
            if fold:
                groups = fold_hits(ranked, {i: infos[i].scan_name for i in infos}, self.store.instance_indices, want)
            else:
                groups = [Group(i, s) for i, s in ranked[:want] if i in infos]
            if plain or cut or len(groups) >= want or fetch >= min(live, MAX_CANDIDATES):
                break
            fetch = min(live, MAX_CANDIDATES, fetch * 4)
        hits = []
        for g in groups:
            hit = self.hit_for(infos[g.id], g.score)
            hit.relevance = None if calib is None else float(calib(g.score))
            hit.folded = g.folded
            hits.append(hit)
        return hits

    def search_many(self, texts: Sequence[str], k: int = 10, **options: Any) -> list[list[Hit]]:
        """One ranked list per text (texts embedded in one batch)."""
        for t in texts:
            check_text(t)
        if len(texts) > MAX_BATCH:
            raise QueryError(f"{len(texts)} queries in one batch; at most {MAX_BATCH}")
        vectors = self.encoder.encode_texts(list(texts)) if texts else np.zeros((0, 1), np.float32)
        return [self.search_vector(v, k=k, **options) for v in vectors]

    # -- hits ------------------------------------------------------------------------------------

    def hit(self, instance_id: int, score: float = float("nan")) -> Hit:
        return self.hit_for(self.store.instance(instance_id), score)

    def hit_for(self, info: InstanceInfo, score: float = float("nan")) -> Hit:
        """The :class:`Hit` of an instance already read from the catalog."""
        return Hit(
            id=int(info.id),
            scan=info.scan_name,
            score=float(score),
            n_points=int(info.point_count),
            bbox=[round(float(x), 4) for x in info.bbox],
            thumbnail=self.thumbnail_path(info.id) if info.has_thumbnail else None,
            mask_score=float(info.score),
        )

    def details(self, info: InstanceInfo, with_vector: bool = False, scan: ScanInfo | None = None) -> InstanceDetails:
        """What the catalog knows about an instance already read (``show``); ``scan``: its scan's
        :class:`ScanInfo` when the caller has it (listing a scan's instances reads it once)."""
        hit = self.hit_for(info)
        scan = scan if scan is not None else self.store.find_scan(hit.scan)
        scan_info = scan.info if scan else {}
        vector = None
        if with_vector:
            v = self.store.instance_vector(info.id)
            vector = None if v is None else np.asarray(v, np.float32).tolist()
        return InstanceDetails(
            id=hit.id, scan=hit.scan, n_points=hit.n_points, bbox=hit.bbox, thumbnail=hit.thumbnail,
            mask_score=hit.mask_score, searchable=bool(info.searchable), best_frame=info.best_frame,
            mask_index=int(info.mask_index), scan_source=scan.source_path if scan else None,
            proposer=_mask_source(scan_info, int(info.mask_index)), mask_method_2d=scan_info.get("mask_method_2d"),
            vector=vector)

    def thumbnail_path(self, instance_id: int) -> str | None:
        """Absolute path of the instance's JPEG thumbnail, written from the catalog on first request."""
        path = Path(self.store.home).resolve() / "thumbnails" / f"{int(instance_id)}.jpg"
        if not path.exists():
            data = self.store.thumbnail(instance_id)
            if data is None:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return str(path)

    def points(self, instance_id: int) -> HitPoints:
        """The exact point subset of an instance (indices, xyz, rgb)."""
        idx, xyz, rgb = self.store.instance_points(instance_id)
        return HitPoints(indices=idx, xyz=xyz, rgb=rgb)

