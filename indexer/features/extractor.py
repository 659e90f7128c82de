"""The mask-feature stage: one CLIP vector per 3D mask from its best posed RGB-D views (OpenMask3D).

For every mask: pick the top-k views by visible pixels (:mod:`scenegrep.indexer.features.visibility`), cut
``crop_levels`` nested crops around the mask's 2D region in each of those views
(:mod:`scenegrep.indexer.features.crops`), encode every crop with CLIP, L2-normalise each crop embedding and
average them per mask (each view counts ``crop_levels`` times, as OpenMask3D). By default the mean is
L2-normalised again (``renormalize``) so every stored vector is a unit vector; OpenMask3D keeps the
raw mean (norm ~0.99), ``renormalize=False`` reproduces it.

The 2D region a view's crops are cut around comes from a :class:`~scenegrep.indexer.features.crops.MaskRefiner`:
by default the bounding box of the mask's visible projected pixels (OpenMask3D with SAM replaced by its
prompt pixels), or SAM (:class:`scenegrep.indexer.features.sam.SamRefiner`, OpenMask3D's full method).

Work is organised by frame, not by mask: each chosen colour image is decoded once, the refiner sees all
masks that chose it in one call (SAM embeds the image once for all of them; OpenMask3D embeds it once per
(mask, view) pair), the crops of those masks are cut, and crops from many masks share encoder batches of
``batch_size``. Peak memory is one colour image plus one batch of crops (plus the refiner's per-frame
work) plus the visibility record; never a views x masks x H x W array.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from scenegrep.indexer.features.crops import MaskRefiner, ProjectedPointsRefiner, multi_level_boxes
from scenegrep.indexer.features.visibility import Visibility, compute_visibility, frame_positions

if TYPE_CHECKING:
    from scenegrep.indexer.proposals.base import MaskSet
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)

#: progress(stage, done, total); stages "visibility" (frames), "crops" (chosen frames), "encode" (crops).
ProgressFn = Callable[[str, int, int], None]


class ImageEncoder(Protocol):
    """What the stage needs from an encoder (``ClipEncoder`` satisfies it)."""

    spec: Any  # has .dim

    def encode_images(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray: ...


@dataclass
class FeatureConfig:
    """Mask-feature settings (defaults follow OpenMask3D's ScanNet setup).

    Attributes:
        frame_step: use every ``frame_step``-th frame (OpenMask3D's ``frequency``). None = automatic:
            the smallest step that uses at most ``max_frames`` frames, ``ceil(n_frames / max_frames)``, so
            short scans use every frame and a 6000-frame ScanNet scan uses every 20th.
        max_frames: the frame budget of the automatic step.
        depth_threshold: metres; a point is visible when ``|sensor depth - z| <= depth_threshold``.
        top_k: views kept per mask.
        crop_levels: nested crops per view (level 0 = tight box).
        crop_expansion: per-level box growth ratio (OpenMask3D's ``multi_level_expansion_ratio``).
        batch_size: crops per encoder call.
        thumbnail_size: longest side in pixels of the stored thumbnail.
        require_positive_depth: also require z > 0 and a sensor reading > 0 (False = OpenMask3D exactly).
        renormalize: L2-normalise the mean of the crop embeddings (OpenMask3D does not).
    """

    frame_step: int | None = None
    max_frames: int = 300
    depth_threshold: float = 0.2
    top_k: int = 5
    crop_levels: int = 3
    crop_expansion: float = 0.1
    batch_size: int = 64
    thumbnail_size: int = 160
    require_positive_depth: bool = True
    renormalize: bool = True

    def __post_init__(self) -> None:
        if self.frame_step is not None and self.frame_step < 1:
            raise ValueError(f"frame_step must be >= 1 or None, got {self.frame_step}")
        if self.top_k < 1 or self.crop_levels < 1 or self.batch_size < 1 or self.max_frames < 1:
            raise ValueError("top_k, crop_levels, batch_size and max_frames must be >= 1")
        if self.depth_threshold < 0 or self.crop_expansion < 0:
            raise ValueError("depth_threshold and crop_expansion must be >= 0")


@dataclass
class InstanceFeatures:
    """Per-mask features of one scan (M masks, D = encoder dim, k = top_k).

    Attributes:
        vectors: (M, D) float32. Row m is the mask's feature when ``valid[m]``; rows of never-visible
            masks are all zero and must never be stored or searched as vectors (check ``valid``).
        valid: (M,) bool, True when the mask got at least one crop.
        best_frame: (M,) int64 frame id of the mask's best view (most visible pixels), -1 if none.
        topk_frames: (M, k) int64 frame ids of the chosen views, best first, -1 padded.
        thumbnails: per mask, JPEG bytes of the best view's level-1 crop (level 0 when crop_levels == 1),
            longest side ``thumbnail_size``; None for invalid masks.
        stats: frames_used (frames in the visibility pass), frames_decoded (colour images read),
            clip_crops (crops encoded), masks_visible, skipped_frames; mask_method (the refiner's name);
            sam_image_encodings, sam_prompts, sam_fallbacks (0 without SAM); openmask3d_sam_encodings
            (the (mask, view) pairs with visible pixels: OpenMask3D encodes the image with SAM once per
            pair); and seconds: visibility_s, refine_s (2D masks, SAM included), crops_s (decoding +
            cropping), encode_s (CLIP), features_s (the whole stage).
    """

    vectors: np.ndarray
    valid: np.ndarray
    best_frame: np.ndarray
    topk_frames: np.ndarray
    thumbnails: list[bytes | None]
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, num_masks: int, dim: int, top_k: int) -> "InstanceFeatures":
        """All-invalid features (a scan without frames, or no visible mask)."""
        return cls(
            vectors=np.zeros((num_masks, dim), np.float32),
            valid=np.zeros(num_masks, bool),
            best_frame=np.full(num_masks, -1, np.int64),
            topk_frames=np.full((num_masks, top_k), -1, np.int64),
            thumbnails=[None] * num_masks,
            stats={"frames_used": 0, "frames_decoded": 0, "clip_crops": 0, "masks_visible": 0,
                   "skipped_frames": [], "mask_method": ProjectedPointsRefiner.name,
                   "sam_image_encodings": 0, "sam_prompts": 0, "sam_fallbacks": 0,
                   "openmask3d_sam_encodings": 0, "visibility_s": 0.0, "refine_s": 0.0, "crops_s": 0.0,
                   "encode_s": 0.0, "features_s": 0.0},
        )


def _thumbnail_jpeg(crop: Any, size: int) -> bytes:
    """JPEG of ``crop`` resized (up or down) so its longest side is ``size``."""
    from PIL import Image

    w, h = crop.size
    scale = size / max(w, h)
    im = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class _CropBatcher:
    """Accumulates crops of many masks, encodes them ``batch_size`` at a time, sums per mask."""

    def __init__(self, encoder: ImageEncoder, num_masks: int, batch_size: int,
                 on_encoded: Callable[[int], None]):
        self.encoder = encoder
        self.batch_size = batch_size
        # float64 sums: the mean then differs from a float32 torch mean by < 1e-7.
        self.sums = np.zeros((num_masks, int(encoder.spec.dim)), np.float64)
        self.counts = np.zeros(num_masks, np.int64)
        self.images: list[Any] = []
        self.owners: list[int] = []
        self.encode_s = 0.0
        self.encoded = 0
        self.on_encoded = on_encoded

    def add(self, image: Any, owner: int) -> None:
        self.images.append(image)
        self.owners.append(owner)
        if len(self.images) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.images:
            return
        t0 = time.perf_counter()
        emb = np.asarray(self.encoder.encode_images(self.images, batch_size=self.batch_size), np.float32)
        # encode_images already L2-normalises; normalising again is a no-op for ClipEncoder but makes the
        # stage correct for any encoder honouring only the shape contract.
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.where(norms > 0, norms, 1.0)
        owners = np.asarray(self.owners, np.int64)
        np.add.at(self.sums, owners, emb.astype(np.float64))
        self.counts += np.bincount(owners, minlength=self.counts.size)
        self.encode_s += time.perf_counter() - t0
        self.encoded += len(self.images)
        self.images.clear()
        self.owners.clear()
        self.on_encoded(self.encoded)


def _refiner_counts(refiner: MaskRefiner) -> tuple[int, int, int]:
    """(image encodings, prompts, fallbacks) counters of a refiner that keeps them (SAM), else zeros."""
    st = getattr(refiner, "stats", None)
    if st is None:
        return 0, 0, 0
    get = st.get if isinstance(st, dict) else (lambda k, d: getattr(st, k, d))
    return tuple(int(get(k, 0)) for k in ("image_encodings", "prompts", "fallbacks"))  # type: ignore[return-value]


def extract_features(
    scan: "Scan",
    masks: "MaskSet",
    encoder: ImageEncoder,
    config: FeatureConfig | None = None,
    progress: ProgressFn | None = None,
    refiner: MaskRefiner | None = None,
) -> InstanceFeatures:
    """Compute one CLIP feature per mask of ``scan`` (see module doc).

    Args:
        scan: the scan with its posed RGB-D frames.
        masks: M masks over ``scan.points``.
        encoder: a loaded encoder (``ClipEncoder``).
        config: settings (defaults: :class:`FeatureConfig`).
        progress: optional ``progress(stage, done, total)``.
        refiner: 2D mask refiner (default :class:`ProjectedPointsRefiner`: box of the visible pixels;
            :func:`scenegrep.indexer.features.sam.load_sam_refiner` for SAM).

    Raises:
        scenegrep.indexer.scans.FrameError: a used depth or colour image is unreadable.
    """
    from PIL import Image

    t_stage = time.perf_counter()
    cfg = config or FeatureConfig()
    refiner = refiner or ProjectedPointsRefiner()
    num_masks, dim = len(masks), int(encoder.spec.dim)

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    if not scan.frames or num_masks == 0:
        log.info("%s: %s, no mask features", scan.name, "no frames" if not scan.frames else "no masks")
        empty = InstanceFeatures.empty(num_masks, dim, cfg.top_k)
        empty.stats["mask_method"] = refiner.name
        return empty

    # -- visibility + top-k ----------------------------------------------------------------------
    fidx = frame_positions(len(scan.frames), cfg.frame_step, cfg.max_frames)
    vis: Visibility = compute_visibility(
        scan, masks, fidx, threshold=cfg.depth_threshold, top_k=cfg.top_k,
        require_positive_depth=cfg.require_positive_depth,
        progress=lambda done, total: report("visibility", done, total),
    )
    by_view = vis.views_by_frame()
    num_pairs = sum(len(v) for v in by_view.values())  # (mask, view) pairs with visible pixels
    expected_crops = num_pairs * cfg.crop_levels
    sam_before = _refiner_counts(refiner)

    # -- crops, frame by frame; encoding in shared batches -----------------------------------------
    batcher = _CropBatcher(encoder, num_masks, cfg.batch_size,
                           on_encoded=lambda n: report("encode", n, expected_crops))
    thumbs: list[bytes | None] = [None] * num_masks
    thumb_slot = np.full(num_masks, np.iinfo(np.int64).max, np.int64)
    best_frame = np.full(num_masks, -1, np.int64)
    thumb_level = min(1, cfg.crop_levels - 1)
    refine_s = 0.0
    t_crops = time.perf_counter()
    views = sorted(by_view)
    for n_done, view in enumerate(views, start=1):
        frame = scan.frames[int(vis.frame_indices[view])]
        rgb = frame.load_color()
        image = Image.fromarray(rgb)
        color_size = (rgb.shape[1], rgb.shape[0])
        pairs = by_view[view]
        depth_size = (int(vis.depth_sizes[view, 0]), int(vis.depth_sizes[view, 1]))
        t0 = time.perf_counter()
        boxes = refiner.refine(rgb, [vis.pixels[m][j] for m, j in pairs], depth_size,
                               frame_id=int(frame.frame_id), mask_ids=[m for m, _ in pairs])
        refine_s += time.perf_counter() - t0
        for (m, j), box in zip(pairs, boxes):
            if box is None:
                continue
            for level, b in enumerate(multi_level_boxes(box, cfg.crop_levels, cfg.crop_expansion,
                                                        image_size=color_size)):
                crop = image.crop(b)
                if level == thumb_level and j < thumb_slot[m]:
                    # The best view with a region gives the thumbnail and best_frame.
                    thumbs[m] = _thumbnail_jpeg(crop, cfg.thumbnail_size)
                    thumb_slot[m] = j
                    best_frame[m] = frame.frame_id
                batcher.add(crop, m)
        del image, rgb
        report("crops", n_done, len(views))
    batcher.flush()
    crops_s = time.perf_counter() - t_crops - batcher.encode_s - refine_s
    sam_after = _refiner_counts(refiner)

    # -- per-mask mean ---------------------------------------------------------------------------
    valid = batcher.counts > 0
    vectors = np.zeros((num_masks, dim), np.float32)
    if valid.any():
        mean = batcher.sums[valid] / batcher.counts[valid, None]
        norms = np.linalg.norm(mean, axis=1)
        # Crop embeddings that cancel out give no direction: such a mask is not searchable (never a
        # zero or NaN vector in the index).
        degenerate = ~(norms > 1e-6)
        if degenerate.any():
            log.warning("%s: %d masks have a zero mean embedding: not searchable", scan.name, degenerate.sum())
            valid[np.flatnonzero(valid)[degenerate]] = False
            mean, norms = mean[~degenerate], norms[~degenerate]
        if cfg.renormalize:
            mean /= norms[:, None]
        vectors[valid] = mean.astype(np.float32)
    topk_frames = vis.topk_frame_ids
    stats = {
        "frames_used": int(vis.frame_indices.size),
        "frames_decoded": len(views),
        "clip_crops": int(batcher.encoded),
        "masks_visible": int(valid.sum()),
        "skipped_frames": list(vis.skipped_frames),
        "mask_method": refiner.name,
        "sam_image_encodings": sam_after[0] - sam_before[0],
        "sam_prompts": sam_after[1] - sam_before[1],
        "sam_fallbacks": sam_after[2] - sam_before[2],
        "openmask3d_sam_encodings": int(num_pairs),
        "visibility_s": float(vis.seconds),
        "refine_s": float(refine_s),
        "crops_s": float(crops_s),
        "encode_s": float(batcher.encode_s),
        "features_s": float(time.perf_counter() - t_stage),
    }
    log.info("%s: %d/%d masks visible, %d crops from %d frames, %s, %d SAM encodings (vis %.2fs, refine %.2fs, "
             "crops %.2fs, encode %.2fs, total %.2fs)", scan.name, stats["masks_visible"], num_masks,
             stats["clip_crops"], len(views), refiner.name, stats["sam_image_encodings"], stats["visibility_s"],
             refine_s, crops_s, stats["encode_s"], stats["features_s"])
    return InstanceFeatures(vectors=vectors, valid=valid, best_frame=best_frame, topk_frames=topk_frames,
                            thumbnails=thumbs, stats=stats)
