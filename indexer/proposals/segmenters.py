"""2D segmenters for the lifted proposer: the :class:`Segmenter2D` interface and its implementations.

A segmenter turns one frame's colour image into class-agnostic 2D masks (:class:`Masks2D`, sparse pixel
index sets at the colour image's resolution; masks may overlap):

* :class:`SamAutomaticSegmenter`: SAM's automatic mask generator (``segment_anything``
  ``SamAutomaticMaskGenerator``) on a checkpoint loaded the safe way :mod:`scenegrep.indexer.features.sam`
  loads SAM (``torch.load(weights_only=True)``, strict key and shape check). Built from a
  :class:`~scenegrep.indexer.features.sam.SamRefiner` it uses the refiner's model and predictor, so the
  weights are in memory once (see :meth:`SamAutomaticSegmenter.from_refiner` for the image embedding).
* :class:`FelzenszwalbSegmenter`: no weights. Felzenszwalb-Huttenlocher graph segmentation
  (``skimage.segmentation.felzenszwalb``) on chromaticity and brightness (optionally depth).
* :class:`LabelMapSegmenter`: the frame's label map (:mod:`scenegrep.indexer.labelmaps`) as masks, one
  per id. With ground-truth maps it is the oracle that proves the lifting and merging.
* :class:`PerturbedSegmenter`: wraps another segmenter and degrades its masks (erosion, splits, merges at
  given rates, seeded per frame), to measure how the lifting copes with imperfect 2D masks.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from scenegrep.indexer.features.sam import SamRefiner
    from scenegrep.indexer.scans import Frame

log = logging.getLogger(__name__)


@dataclass
class Masks2D:
    """M 2D masks of one image, as sparse pixel sets (CSR over row-major pixels ``v * W + u``).

    Attributes:
        size: (width, height) of the image the pixels refer to.
        pixel_indices: (nnz,) uint32 row-major pixels, all masks concatenated, each block ascending.
        offsets: (M + 1,) int64 block boundaries.
        scores: (M,) float32 the segmenter's confidence (1.0 when it has none).
    """

    size: tuple[int, int]
    pixel_indices: np.ndarray
    offsets: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        self.pixel_indices = np.ascontiguousarray(self.pixel_indices, dtype=np.uint32)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        self.scores = np.ascontiguousarray(self.scores, dtype=np.float32)
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0 \
                or self.offsets[-1] != self.pixel_indices.size or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must start at 0, be non-decreasing and end at len(pixel_indices)")
        if self.scores.shape != (len(self),):
            raise ValueError(f"scores must have shape ({len(self)},), got {self.scores.shape}")
        if self.pixel_indices.size and int(self.pixel_indices.max()) >= self.size[0] * self.size[1]:
            raise ValueError("a pixel index is outside the image")

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.pixel_indices[self.offsets[i] : self.offsets[i + 1]]

    @property
    def areas(self) -> np.ndarray:
        """(M,) int64 pixels per mask."""
        return np.diff(self.offsets)

    @classmethod
    def from_label_image(cls, labels: np.ndarray, background: int | None = 0,
                         scores: np.ndarray | None = None) -> "Masks2D":
        """One mask per distinct value of ``labels`` (H, W) except ``background`` (None: every value is a
        mask), in ascending label order; ``scores`` (one per mask) default to 1."""
        labels = np.asarray(labels)
        h, w = labels.shape
        flat = labels.reshape(-1)
        pix = np.flatnonzero(flat != background) if background is not None else np.arange(flat.size)
        vals = flat[pix]
        order = np.argsort(vals, kind="stable")  # stable: pixels stay ascending within a label
        _, counts = np.unique(vals, return_counts=True)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        sc = np.ones(counts.size, np.float32) if scores is None else scores
        return cls((w, h), pix[order], offsets, sc)

    @classmethod
    def from_bool_masks(cls, masks: Sequence[np.ndarray], scores: Sequence[float] | np.ndarray | None,
                        size: tuple[int, int]) -> "Masks2D":
        """From (H, W) boolean masks (SAM's output), one sparse block each."""
        blocks = [np.flatnonzero(np.asarray(m).reshape(-1)) for m in masks]
        offsets = np.concatenate([[0], np.cumsum([b.size for b in blocks])]).astype(np.int64)
        pix = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
        sc = np.ones(len(blocks), np.float32) if scores is None else np.asarray(scores, np.float32)
        return cls(size, pix, offsets, sc)

    def label_image(self) -> np.ndarray:
        """(H, W) int32 partition: each pixel gets the smallest mask covering it (masks are painted largest
        first, so a part seen inside a larger mask keeps its own id, as SAM3D does); -1 = no mask."""
        w, h = self.size
        out = np.full(h * w, -1, np.int32)
        for i in np.argsort(-self.areas, kind="stable").tolist():
            out[self[i]] = i
        return out.reshape(h, w)


@runtime_checkable
class Segmenter2D(Protocol):
    """Makes class-agnostic 2D masks for one frame."""

    name: str

    def segment(self, frame: "Frame", image: np.ndarray) -> Masks2D:
        """Masks of ``image`` ((H, W, 3) uint8 RGB, ``frame``'s colour image) at its resolution."""
        ...

    def identity(self) -> dict[str, Any]:
        """Settings that make two segmenters give the same masks (recorded in the catalog)."""
        ...


# --------------------------------------------------------------------------------------------------
# Weight-free: Felzenszwalb on colour + depth
# --------------------------------------------------------------------------------------------------


@dataclass
class FelzenszwalbSegmenter:
    """Felzenszwalb-Huttenlocher graph segmentation with no weights.

    Pixels are compared on chromaticity (r, g, b) / (r + g + b) times ``chroma_weight`` plus brightness
    (r + g + b) / 3 times ``intensity_weight`` (colours in [0, 1]): shading changes brightness, not
    chromaticity, so the differently lit faces of one object stay one segment. ``depth_weight`` > 0 adds
    the frame's depth in metres times it as one more channel. Defaults were chosen on synthetic rooms and
    labelfusion-shelf (BENCHMARKS.md, "Lifted and union proposers"): the depth channel split sloped
    surfaces more than it separated objects there, so it is off.

    Attributes:
        scale: the algorithm's k (larger = larger segments).
        sigma: Gaussian smoothing before segmentation (pixels).
        min_size: smallest segment in pixels of the (downscaled) image.
        chroma_weight / intensity_weight: see above; both 1 = plain RGB.
        depth_weight: weight of the depth channel (0 = colour only).
        max_side: images are subsampled by an integer stride so their longest side is at most this (labels
            are scaled back by repetition); bounds the cost per frame (640x480: 0.45 s -> 0.09 s).
    """

    scale: float = 1000.0
    sigma: float = 0.8
    min_size: int = 50
    chroma_weight: float = 3.0
    intensity_weight: float = 0.3
    depth_weight: float = 0.0
    max_side: int = 320
    name: str = "felzenszwalb"
    #: Reliability of the lifted masks it gives, relative to the geometric proposer's, for the union's
    #: scores (:mod:`~scenegrep.indexer.proposals.union`): its lifted AP50 on the synthetic benchmark rooms
    #: was 0.50 where the geometric proposer's is 1.00 (BENCHMARKS.md), because superpixels split objects.
    #: The lifted defaults of 2026-12-02 raised it to 0.76; the union's AP on ten synthetic rooms and the
    #: shelf is the same at 0.5 and 0.76, so the more cautious value stays.
    union_prior: ClassVar[float] = 0.5

    def identity(self) -> dict[str, Any]:
        return {"segmenter": self.name, "scale": self.scale, "sigma": self.sigma, "min_size": self.min_size,
                "chroma_weight": self.chroma_weight, "intensity_weight": self.intensity_weight,
                "depth_weight": self.depth_weight, "max_side": self.max_side}

    def segment(self, frame: "Frame", image: np.ndarray) -> Masks2D:
        from PIL import Image
        from skimage.segmentation import felzenszwalb

        h, w = image.shape[:2]
        step = max(1, -(-max(h, w) // self.max_side))  # integer stride: labels map back exactly
        rgb = image[::step, ::step].astype(np.float32) / 255.0
        if self.intensity_weight != 1.0 or self.chroma_weight != 1.0:
            # Chromaticity (colour over brightness) does not change with shading, so the faces of one
            # object lit differently stay together; brightness keeps a smaller weight (grey vs white).
            total = rgb.sum(axis=2, keepdims=True)
            chroma = rgb / np.maximum(total, 1e-3)
            feats = [chroma * self.chroma_weight, total / 3.0 * self.intensity_weight]
        else:
            feats = [rgb]
        if self.depth_weight > 0:
            depth = frame.load_depth()
            if depth.shape != (h, w):
                depth = np.asarray(Image.fromarray(depth).resize((w, h), Image.Resampling.NEAREST))
            feats.append(self.depth_weight * depth[::step, ::step, None])
        small = np.concatenate(feats, axis=2)
        with warnings.catch_warnings():  # skimage warns that 4+ channels are "interpreted as multichannel": meant
            warnings.filterwarnings("ignore", message=".*third dimension.*")
            labels = felzenszwalb(small, scale=self.scale, sigma=self.sigma, min_size=self.min_size, channel_axis=-1)
        if step > 1:
            labels = np.repeat(np.repeat(labels, step, axis=0), step, axis=1)[:h, :w]
        return Masks2D.from_label_image(labels, background=None)


# --------------------------------------------------------------------------------------------------
# SAM's automatic mask generator
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamAutomaticOptions:
    """``SamAutomaticMaskGenerator`` settings (its defaults).

    Attributes:
        points_per_side: prompt grid is points_per_side x points_per_side over the image.
        points_per_batch: prompts decoded together.
        pred_iou_thresh: keep masks whose predicted IoU is above this.
        stability_score_thresh: keep masks whose stability score is above this.
        box_nms_thresh: box IoU for non-maximum suppression between masks.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7


class SamAutomaticSegmenter:
    """:class:`Segmenter2D` with SAM's automatic mask generator.

    Masks come back as ``Masks2D`` with SAM's predicted IoU as score. ``precision`` fp16/bf16 runs the
    generator under autocast, as the refiner does.

    Attributes:
        name: ``"sam-amg:<model_type>"``.
        model_type / checkpoint_sha256 / device / precision / options: what it runs.
    """

    def __init__(self, model: Any, model_type: str, *, checkpoint_sha256: str | None = None, device: str = "cpu",
                 precision: str = "fp32", options: SamAutomaticOptions | None = None, predictor: Any = None):
        from segment_anything import SamAutomaticMaskGenerator

        from scenegrep.indexer.features.encoders import check_precision

        check_precision(device, precision)
        self.options = options or SamAutomaticOptions()
        self.model = model.to(device).eval()
        self.generator = SamAutomaticMaskGenerator(
            self.model, points_per_side=self.options.points_per_side,
            points_per_batch=self.options.points_per_batch, pred_iou_thresh=self.options.pred_iou_thresh,
            stability_score_thresh=self.options.stability_score_thresh, box_nms_thresh=self.options.box_nms_thresh,
            output_mode="binary_mask")
        if predictor is not None:  # the refiner's predictor: one model, one place holding the embedding
            self.generator.predictor = predictor
        self.model_type = model_type
        self.name = f"sam-amg:{model_type}"
        self.checkpoint_sha256 = checkpoint_sha256
        self.device, self.precision = str(device), precision
        self.frames = 0
        if self.device == "cpu":
            # measured (BENCHMARKS.md): each frame decodes points_per_side^2 prompts against the whole image
            log.warning("SAM's automatic masks on the CPU are slow: about 2 minutes per 640x480 frame with "
                        "vit_b (32 x 32 prompts, 2 cores), i.e. hours per scan of 100 frames; use a GPU "
                        "(--device cuda) or the weight-free segmenter (--segmenter felzenszwalb)")

    @classmethod
    def from_refiner(cls, refiner: "SamRefiner", options: SamAutomaticOptions | None = None) -> "SamAutomaticSegmenter":
        """A generator on the refiner's model and ``SamPredictor`` (no second load of the weights).

        The two stages need the same image embedding for a frame both use (``SamPredictor.set_image`` of
        the same colour image). They do not run interleaved: the proposer segments every used frame of a
        scan before the features stage starts, and an embedding is 4 MB (a 300-frame scan: 1.2 GB), so
        the embedding is not kept from one stage to the other; what is shared is the model in memory.
        """
        return cls(refiner.model, refiner.model_type, checkpoint_sha256=refiner.checkpoint_sha256,
                   device=refiner.device, precision=refiner.precision, options=options, predictor=refiner.predictor)

    def identity(self) -> dict[str, Any]:
        return {"segmenter": self.name, "model_type": self.model_type, "checkpoint_sha256": self.checkpoint_sha256,
                "precision": self.precision, **{k: getattr(self.options, k) for k in self.options.__dataclass_fields__}}

    def segment(self, frame: "Frame", image: np.ndarray) -> Masks2D:
        import torch

        from scenegrep.indexer.features.encoders import autocast_context

        with torch.inference_mode(), autocast_context(self.device, self.precision):
            records = self.generator.generate(np.ascontiguousarray(image))
        self.frames += 1
        h, w = image.shape[:2]
        return Masks2D.from_bool_masks([r["segmentation"] for r in records],
                                       [float(r["predicted_iou"]) for r in records], (w, h))


def load_sam_segmenter(model_type: str, checkpoint: Path | str, *, device: str = "cpu", precision: str = "fp32",
                       options: SamAutomaticOptions | None = None) -> SamAutomaticSegmenter:
    """Load a SAM checkpoint (:func:`scenegrep.indexer.features.sam.load_sam_model`: weights_only, strict
    check) as an automatic-mask segmenter.

    Raises:
        scenegrep.indexer.features.sam.SamCheckpointError: the checkpoint cannot be used (one line).
        ValueError: unknown model type or precision.
    """
    from scenegrep.indexer.features.sam import load_sam_model

    model, sha = load_sam_model(model_type, checkpoint, device=device)
    log.info("SAM automatic masks: %s from %s (sha256 %s)", model_type, checkpoint, sha[:12])
    return SamAutomaticSegmenter(model, model_type, checkpoint_sha256=sha, device=device, precision=precision,
                                 options=options)


# --------------------------------------------------------------------------------------------------
# Label maps (oracle) and degraded masks
# --------------------------------------------------------------------------------------------------


@dataclass
class LabelMapSegmenter:
    """One mask per non-zero id of the frame's label map (:func:`scenegrep.indexer.labelmaps.label_map_path`),
    resampled (nearest) to the colour image's size. A frame without a map gets no masks."""

    name: str = "label-maps"

    def identity(self) -> dict[str, Any]:
        return {"segmenter": self.name}

    def segment(self, frame: "Frame", image: np.ndarray) -> Masks2D:
        from scenegrep.indexer.labelmaps import label_map_path, read_label_map

        h, w = image.shape[:2]
        path = label_map_path(frame)
        if not path.is_file():
            return Masks2D((w, h), np.zeros(0, np.uint32), np.zeros(1, np.int64), np.zeros(0, np.float32))
        labels = read_label_map(path)
        if labels.shape != (h, w):
            rows = np.arange(h) * labels.shape[0] // h
            cols = np.arange(w) * labels.shape[1] // w
            labels = labels[rows[:, None], cols[None, :]]
        return Masks2D.from_label_image(labels, background=0)


@dataclass
class PerturbedSegmenter:
    """Degrades another segmenter's masks, seeded per (seed, frame id), in this order:

    1. **merge**: each mask, with probability ``merge_rate``, is joined with one random touching mask
       (under-segmentation; a mask is merged at most once per frame);
    2. **split**: each resulting mask, with probability ``split_rate``, is cut in two by a random straight
       line through its centroid (over-segmentation);
    3. **erode**: every mask loses ``erode_px`` pixels at its boundary (``scipy.ndimage.binary_erosion``;
       masks that vanish are dropped), the typical thin-border error of 2D masks.

    The base masks are taken as a partition (:meth:`Masks2D.label_image`).
    """

    base: Segmenter2D
    erode_px: int = 0
    split_rate: float = 0.0
    merge_rate: float = 0.0
    seed: int = 0
    name: str = "perturbed"

    def identity(self) -> dict[str, Any]:
        return {"segmenter": self.name, "base": self.base.identity(), "erode_px": self.erode_px,
                "split_rate": self.split_rate, "merge_rate": self.merge_rate, "seed": self.seed}

    def segment(self, frame: "Frame", image: np.ndarray) -> Masks2D:
        masks = self.base.segment(frame, image)
        labels = masks.label_image()
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(frame.frame_id) & 0xFFFFFFFF])
        if self.merge_rate > 0 and len(masks) > 1:
            labels = _merge_touching(labels, len(masks), self.merge_rate, rng)
        if self.split_rate > 0:
            labels = _split_by_lines(labels, self.split_rate, rng)
        if self.erode_px > 0:
            labels = _erode_labels(labels, self.erode_px)
        return Masks2D.from_label_image(labels, background=-1)


def _merge_touching(labels: np.ndarray, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each label, with probability ``rate``, takes over one random touching label (4-neighbourhood);
    a label takes part in at most one merge."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    sel = (a != b) & (a >= 0) & (b >= 0)
    pairs = np.unique(np.stack([a[sel], b[sel]], 1), axis=0) if sel.any() else np.zeros((0, 2), np.int64)
    neighbours: dict[int, list[int]] = {}
    for x, y in pairs.tolist():
        neighbours.setdefault(x, []).append(y)
        neighbours.setdefault(y, []).append(x)
    draws = rng.random(n)  # one draw per label, so the rate is exact in expectation
    picks = rng.random(n)
    target = np.arange(n)
    used = np.zeros(n, bool)
    for i in range(n):
        if used[i] or draws[i] >= rate:
            continue
        free = [j for j in neighbours.get(i, []) if not used[j]]
        if not free:
            continue
        j = free[int(picks[i] * len(free))]
        target[j] = i
        used[i] = used[j] = True
    out = labels.copy()
    ok = labels >= 0
    out[ok] = target[labels[ok]]
    return out


def _split_by_lines(labels: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each label, with probability ``rate``, is cut by a random line through its centroid; the far side
    gets a new label."""
    ids = np.unique(labels[labels >= 0])
    draws = rng.random(ids.size)
    angles = rng.uniform(0.0, np.pi, ids.size)
    out = labels.copy()
    next_id = int(ids.max()) + 1 if ids.size else 0
    for k, i in enumerate(ids.tolist()):
        if draws[k] >= rate:
            continue
        vv, uu = np.nonzero(labels == i)
        side = (uu - uu.mean()) * np.cos(angles[k]) + (vv - vv.mean()) * np.sin(angles[k]) > 0
        if side.any() and not side.all():
            out[vv[side], uu[side]] = next_id
            next_id += 1
    return out


def _erode_labels(labels: np.ndarray, px: int) -> np.ndarray:
    """Every label eroded by ``px`` pixels (4-connected structuring element, image border counts as
    outside); vanished labels are gone."""
    from scipy import ndimage

    out = np.full_like(labels, -1)
    structure = ndimage.generate_binary_structure(2, 1)
    for i, sl in enumerate(ndimage.find_objects(labels + 1)):
        if sl is None:
            continue
        m = labels[sl] == i
        er = ndimage.binary_erosion(m, structure, iterations=px, border_value=0)
        out[sl][er] = i
    return out
