"""SearchEngine: text or vector -> ranked hits across every indexed scan.

The text encoder is always the one the catalog was built with (read from the catalog, loaded lazily,
and checked against the stored checkpoint hash), so a query can never be embedded in another space
than the instance vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from scenegrep.indexer.features.encoders import ClipEncoder, load_encoder
from scenegrep.indexer.pipeline import encoder_identity
from scenegrep.search.hits import Hit, HitPoints
from scenegrep.storage import InstanceInfo, Store
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


class EmptyCatalogError(StoreError):
    """Search on a home that has never indexed anything."""


class EncoderChangedError(StoreError):
    """The encoder loaded for queries is not the one that made the catalog's vectors."""


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

    def search(self, text: str, k: int = 10, scans: Sequence[str] | None = None,
               templates: bool = False) -> list[Hit]:
        """The ``k`` instances most similar to ``text``, best first, across all (or the given) scans."""
        if not text.strip():
            raise ValueError("empty query")
        return self.search_vector(self.embed_text(text, templates), k=k, scans=scans)

    def search_vector(self, vector: np.ndarray, k: int = 10, scans: Sequence[str] | None = None) -> list[Hit]:
        """Like :meth:`search` for a (D,) query vector (normalised here)."""
        if k < 1:
            raise ValueError("k must be >= 1")
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("query vector must be finite and non-zero")
        ranked = self.store.search(q / norm, k, scans=list(scans) if scans else None)[0]
        infos = self.store.instances_by_ids([i for i, _ in ranked])
        return [self.hit_for(infos[i], score) for i, score in ranked if i in infos]

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

    def thumbnail_path(self, instance_id: int) -> str | None:
        """Path of the instance's JPEG thumbnail, written from the catalog on first request."""
        path = Path(self.store.home) / "thumbnails" / f"{int(instance_id)}.jpg"
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

