"""SAM refinement of a mask's 2D region (OpenMask3D's ``run_sam``), one image embedding per frame.

OpenMask3D, per (mask, top-k view): SAM is prompted with points drawn from the mask's visible projected
pixels, ``rounds`` times (10), each time with ``min(points, P)`` (5) of the P pixels chosen at random
without replacement, all labelled foreground, ``multimask_output=False``; the round whose predicted IoU is
**strictly greater** than the best so far (starting at 0) wins, and the level-0 crop box is the bounding
box of that SAM mask (x2/y2 exclusive, :func:`scenegrep.indexer.features.crops.box_from_pixels` semantics).

What differs, and why:

* **One image embedding per frame.** OpenMask3D calls ``set_image`` for every (mask, view) pair.
  :meth:`SamRefiner.refine` is called once per frame with every mask that chose it, embeds the image
  once and decodes all masks x rounds prompt sets in a few batched calls of SAM's prompt encoder and
  mask decoder (the same modules ``SamPredictor.predict_torch`` runs). Only the winning round of each
  mask is upsampled to image resolution, so memory is one image embedding plus one prompt batch.
* **Seeded sampling.** The points of a round come from a generator seeded with
  ``(seed, frame_id, mask_id)`` (:func:`prompt_point_indices`), so they depend only on the seed, the
  frame, the mask and the round number, never on which other masks share the frame or on batching.
  OpenMask3D shuffles with the unseeded global numpy generator (its results move by 1-1.5 AP between runs).
* **No SAM mask.** When no round's predicted IoU is above 0, or the winning mask is empty, OpenMask3D's
  ``mask2box`` returns None and its crop loop crashes (it unpacks None). Here the view falls back to the
  projected-points box (the no-SAM mode's box) and ``stats["fallbacks"]`` counts it.
* **Resolution.** Prompts are the depth-grid pixels mapped to the colour image with
  :func:`scenegrep.indexer.features.crops.scale_pixels` (OpenMask3D assumes both grids are equal; then it is the
  identity).

Checkpoints are loaded with ``torch.load(weights_only=True)`` into an architecture from
:data:`SAM_ARCHS` (``vit_b``, ``vit_l``, ``vit_h``; tests register tiny ones) with a strict key and shape
check; every problem is one :class:`SamCheckpointError` line naming the file.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from scenegrep.indexer.features.crops import Box, box_from_pixels, scale_box, scale_pixels
from scenegrep.indexer.features.encoders import autocast_context, check_precision
from scenegrep.indexer.weights import WeightsFileError, safe_torch_load, sha256_file

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class SamCheckpointError(WeightsFileError):
    """A SAM checkpoint that cannot be used (missing, not a checkpoint, truncated, other architecture)."""


# --------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamArch:
    """Hyper-parameters of one SAM architecture (segment_anything's ``_build_sam`` arguments).

    Attributes:
        encoder_embed_dim: width of the ViT image encoder.
        encoder_depth: ViT blocks.
        encoder_num_heads: attention heads per block.
        encoder_global_attn_indexes: blocks with global (not windowed) attention.
        image_size: side of the square encoder input (1024 for the released models); images are resized
            so the longest side is this, as ``SamPredictor`` does.
        patch_size: ViT patch size; the image embedding is ``image_size // patch_size`` square.
        window_size: windowed-attention size.
        prompt_embed_dim: width of the prompt encoder, decoder and image embedding (256).
        decoder_depth: two-way transformer blocks of the mask decoder.
        decoder_mlp_dim: MLP width of the decoder transformer.
        decoder_num_heads: decoder attention heads.
        iou_head_hidden_dim: hidden width of the IoU prediction head.
        mask_in_chans: hidden channels of the (unused here) mask-prompt encoder.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16


#: Registered architectures by ``--sam-model`` name (segment_anything's ``sam_model_registry`` values).
SAM_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
}

#: Non-persistent buffers of ``Sam`` (not in a state dict), set from the architecture after loading.
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


def register_sam_arch(name: str, arch: SamArch, *, overwrite: bool = False) -> None:
    """Add an architecture under ``name`` (what ``--sam-model`` / ``model_type`` accept)."""
    if name in SAM_ARCHS and not overwrite and SAM_ARCHS[name] != arch:
        raise ValueError(f"SAM architecture {name!r} is already registered with other settings")
    SAM_ARCHS[name] = arch


def _arch(model_type: str) -> SamArch:
    try:
        return SAM_ARCHS[model_type]
    except KeyError:
        raise ValueError(f"unknown SAM model {model_type!r} (choose from {', '.join(sorted(SAM_ARCHS))})") from None


def build_sam(model_type: str) -> Any:
    """A ``segment_anything.modeling.Sam`` of ``model_type`` with segment_anything's random initialisation
    (eval mode, CPU). Use :func:`load_sam_refiner` for real weights."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = _arch(model_type)
    emb = a.image_size // a.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a.encoder_depth, embed_dim=a.encoder_embed_dim, img_size=a.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=a.encoder_num_heads,
            patch_size=a.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=a.encoder_global_attn_indexes, window_size=a.window_size,
            out_chans=a.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_embed_dim, image_embedding_size=(emb, emb),
            input_image_size=(a.image_size, a.image_size), mask_in_chans=a.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=a.decoder_depth, embedding_dim=a.prompt_embed_dim,
                                          mlp_dim=a.decoder_mlp_dim, num_heads=a.decoder_num_heads),
            transformer_dim=a.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=a.iou_head_hidden_dim,
        ),
        pixel_mean=list(_PIXEL_MEAN),
        pixel_std=list(_PIXEL_STD),
    )
    return sam.eval()


# --------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_EMBED_KEY = "image_encoder.patch_embed.proj.weight"


def _first(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _read_state_dict(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with each failure turned into one SamCheckpointError line."""
    import torch

    obj = safe_torch_load(path, SamCheckpointError)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SamCheckpointError(path, "not a SAM state dict (expected a dict of tensors)")
    return obj


def _describe(sd: dict[str, Any]) -> tuple[int, int]:
    """(image-encoder width, number of blocks) of a SAM state dict."""
    depth = len({int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))})
    return int(sd[_EMBED_KEY].shape[0]), depth


def _check_state_dict(path: Path, sd: dict[str, Any], model_type: str, expected: dict[str, Any]) -> None:
    """Strict key and shape check; a checkpoint of another registered architecture is named as such."""
    if _EMBED_KEY not in sd:
        raise SamCheckpointError(path, f"not a SAM checkpoint (no {_EMBED_KEY})")
    width, depth = _describe(sd)
    want = SAM_ARCHS[model_type]
    if (width, depth) != (want.encoder_embed_dim, want.encoder_depth):
        match = " or ".join(n for n, a in SAM_ARCHS.items() if (a.encoder_embed_dim, a.encoder_depth) == (width, depth))
        what = f"a {match} SAM checkpoint" if match else "a SAM checkpoint of an unknown size"
        hint = f"; pass --sam-model {match}" if match else ""
        raise SamCheckpointError(path, f"{what} (image encoder width {width}, {depth} blocks), not {model_type} "
                                       f"(width {want.encoder_embed_dim}, {want.encoder_depth} blocks){hint}")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shaped = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if shaped:
        problems.append(f"mis-shaped {_first(shaped)}")
    if problems:
        raise SamCheckpointError(path, f"does not match SAM {model_type}: " + "; ".join(problems))


def load_sam_model(model_type: str, checkpoint: Path | str, device: str = "cpu") -> tuple[Any, str]:
    """(``Sam`` in eval mode on ``device``, sha256 of the file) for a checkpoint of ``model_type``.

    The module is built on the meta device (no random initialisation: ViT-H has 632M parameters) and
    its tensors are then taken from the checkpoint, so no weight can stay uninitialised.

    Raises:
        ValueError: unknown ``model_type``.
        SamCheckpointError: the file is missing, not a checkpoint, truncated, or not a ``model_type`` SAM.
    """
    import torch

    _arch(model_type)
    path = Path(checkpoint).expanduser()
    sd = _read_state_dict(path)
    with torch.device("meta"):
        sam = build_sam(model_type)
    _check_state_dict(path, sd, model_type, sam.state_dict())
    sam = sam.to_empty(device=device)
    sam.load_state_dict(sd, strict=True)
    with torch.no_grad():  # the two non-persistent buffers (not in any state dict)
        sam.pixel_mean.copy_(torch.tensor(_PIXEL_MEAN).view(-1, 1, 1))
        sam.pixel_std.copy_(torch.tensor(_PIXEL_STD).view(-1, 1, 1))
    persistent = set(sam.state_dict())
    leftover = [n for n, _ in sam.named_buffers() if n not in persistent and n not in ("pixel_mean", "pixel_std")]
    if leftover:  # a segment_anything version with new non-persistent buffers: never run uninitialised memory
        raise RuntimeError(f"SAM buffers not covered by the loader: {leftover}")
    return sam.eval(), sha256_file(path)


# --------------------------------------------------------------------------------------------------
# Seeded prompt sampling
# --------------------------------------------------------------------------------------------------


def prompt_point_indices(seed: int, frame_id: int, mask_id: int, num_pixels: int, rounds: int = 10,
                         points: int = 5) -> np.ndarray:
    """(rounds, min(points, num_pixels)) int64 indices into a mask's P visible pixels, one row per round.

    Each row is ``min(points, P)`` distinct indices in random order (OpenMask3D shuffles the pixels and
    takes the first ``points``: the same distribution). The generator is seeded with
    ``(seed, frame_id, mask_id)`` and rounds are drawn in order, so a (mask, frame, round) always gets the
    same points whatever else is refined with it.
    """
    if num_pixels <= 0:
        return np.zeros((rounds, 0), np.int64)
    key = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(frame_id) & 0xFFFFFFFFFFFFFFFF, int(mask_id) & 0xFFFFFFFFFFFFFFFF]
    rng = np.random.default_rng(key)
    n = min(int(points), int(num_pixels))
    return np.stack([rng.choice(num_pixels, size=n, replace=False) for _ in range(rounds)]).astype(np.int64)


def mask_box(mask: np.ndarray) -> Box | None:
    """OpenMask3D's ``mask2box`` of an (H, W) boolean mask: (x1, y1, x2 + 1, y2 + 1), None when empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --------------------------------------------------------------------------------------------------
# The refiner
# --------------------------------------------------------------------------------------------------


@dataclass
class SamStats:
    """Running counters of a :class:`SamRefiner` (never reset by it; callers take differences).

    Attributes:
        image_encodings: SAM image-encoder passes (one per frame that had anything to refine).
        prompts: prompt sets decoded (masks x rounds).
        decoder_calls: batched prompt-encoder + mask-decoder calls.
        fallbacks: (mask, view) pairs that got no SAM mask and used the projected-points box.
        encode_s / decode_s: seconds in the image encoder / in decoding and box extraction.
    """

    image_encodings: int = 0
    prompts: int = 0
    decoder_calls: int = 0
    fallbacks: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0

    def __getitem__(self, key: str) -> Any:  # stats["image_encodings"] reads like a dict
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Best:
    """Winning round of one mask so far (strictly greater IoU wins, starting at 0 as OpenMask3D)."""

    score: float = 0.0
    logits: Any = None  # (h, w) low-resolution mask logits of the winning round
    round: int = -1


class SamRefiner:
    """:class:`scenegrep.indexer.features.crops.MaskRefiner` with SAM (see module doc).

    Attributes:
        name: ``"sam:<model_type>"``, recorded in the catalog as the 2D mask method.
        model_type: registry name of the architecture.
        checkpoint_sha256: sha256 of the loaded file (None for an in-memory model).
        device / precision: where and how SAM runs ("fp32", or "fp16"/"bf16" autocast).
        seed / rounds / points: sampling settings (OpenMask3D: 10 rounds of 5 points, unseeded).
        prompt_batch: prompt sets per decoder call.
        stats: :class:`SamStats`.
    """

    def __init__(self, model: Any, model_type: str, *, checkpoint_sha256: str | None = None,
                 device: str = "cpu", precision: str = "fp32", seed: int = 0, rounds: int = 10,
                 points: int = 5, prompt_batch: int | None = None):
        from segment_anything import SamPredictor

        if rounds < 1 or points < 1:
            raise ValueError(f"rounds and points must be >= 1, got {rounds} and {points}")
        check_precision(device, precision)
        self.model = model.to(device).eval()
        self.predictor = SamPredictor(self.model)
        self.model_type = model_type
        self.name = f"sam:{model_type}"
        self.checkpoint_sha256 = checkpoint_sha256
        self.device = str(device)
        self.precision = precision
        self.seed, self.rounds, self.points = int(seed), int(rounds), int(points)
        # One decoder call holds a copy of the image embedding per prompt set (4 MB at 64x64x256), and
        # its upscaled masks (8 MB each): large batches pay off on a GPU, not in CPU memory.
        self.prompt_batch = int(prompt_batch or (128 if self.device.startswith("cuda") else 32))
        self.stats = SamStats()

    def identity(self) -> dict[str, Any]:
        """What makes two refiners give the same boxes (recorded in the catalog)."""
        return {"method": self.name, "model_type": self.model_type, "checkpoint_sha256": self.checkpoint_sha256,
                "rounds": self.rounds, "points": self.points, "seed": self.seed, "precision": self.precision}

    def _autocast(self) -> Any:
        return autocast_context(self.device, self.precision)

    def embed(self, image: np.ndarray) -> None:
        """Run the image encoder on ``image`` (H, W, 3) uint8 RGB (``SamPredictor.set_image``)."""
        import torch

        t0 = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
        self.stats.image_encodings += 1
        self.stats.encode_s += time.perf_counter() - t0

    def decode(self, coords: np.ndarray) -> tuple["torch.Tensor", np.ndarray]:
        """Decode B prompt sets of N foreground points each, in colour-image (x, y) pixels.

        The body of ``SamPredictor.predict`` / ``predict_torch`` with ``multimask_output=False``, minus
        the upsampling to image size (done only for winners, :meth:`boxes_of_logits`).

        Returns:
            low-resolution mask logits (B, h, w) on the device, and predicted IoUs (B,) float32.
        """
        import torch

        p = self.predictor
        pts = p.transform.apply_coords(np.asarray(coords, dtype=np.float64), p.original_size)
        coords_t = torch.as_tensor(pts, dtype=torch.float, device=p.device)
        labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=p.device)
        # fp32 even with precision fp16/bf16: the predicted IoUs choose the winning round, and at bf16's
        # resolution (0.004 near 1) rounds would often tie. The decoder is a small share of the cost.
        with torch.inference_mode():
            sparse, dense = self.model.prompt_encoder(points=(coords_t, labels_t), boxes=None, masks=None)
            low, iou = self.model.mask_decoder(
                image_embeddings=p.features.float(), image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        self.stats.decoder_calls += 1
        self.stats.prompts += int(coords_t.shape[0])
        return low[:, 0].float(), iou[:, 0].float().cpu().numpy()

    def boxes_of_logits(self, logits: "torch.Tensor") -> list[Box | None]:
        """:func:`mask_box` of each (h, w) low-resolution logit map once upsampled and thresholded exactly
        as ``SamPredictor.predict`` does; the masks stay on the device, only their row/column
        occupancy comes back."""
        import torch

        p = self.predictor
        with torch.inference_mode():
            up = self.model.postprocess_masks(logits[:, None].float(), p.input_size, p.original_size)[:, 0]
            fg = up > self.model.mask_threshold
            cols, rows = fg.any(dim=1).cpu().numpy(), fg.any(dim=2).cpu().numpy()
        out: list[Box | None] = []
        for c, r in zip(cols, rows):
            xs, ys = np.flatnonzero(c), np.flatnonzero(r)
            out.append(None if xs.size == 0 else (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
        return out

    def refine(self, image: np.ndarray, pixels: Sequence[np.ndarray], pixel_size: tuple[int, int], *,
               frame_id: int = 0, mask_ids: Sequence[int] | None = None) -> list[Box | None]:
        """Level-0 boxes of the SAM masks of every input mask in this frame (see module doc).

        Args:
            image: (H, W, 3) uint8 RGB colour image.
            pixels: per mask, its (P, 2) (u, v) visible pixels on the ``pixel_size`` grid.
            pixel_size: (width, height) of that grid.
            frame_id: the frame's id (seeds the sampling).
            mask_ids: per input, the mask's identity (seeds the sampling); default ``0 .. len-1``, which
                makes the points depend on the input order: the stage always passes mask indices.

        Returns:
            One box per input (colour-image coordinates, x2/y2 exclusive); None for an input without
            pixels. A mask without a SAM mask gets its projected-points box (``stats.fallbacks``).
        """
        ids = list(range(len(pixels))) if mask_ids is None else [int(i) for i in mask_ids]
        if len(ids) != len(pixels):
            raise ValueError(f"{len(ids)} mask ids for {len(pixels)} pixel sets")
        out: list[Box | None] = [None] * len(pixels)
        todo = [i for i, uv in enumerate(pixels) if uv is not None and len(uv)]
        if not todo:
            return out  # nothing to prompt: no image encoding
        color_size = (int(image.shape[1]), int(image.shape[0]))
        self.embed(image)  # once for every mask of this frame
        t0 = time.perf_counter()
        prompts = {i: self._prompts(np.asarray(pixels[i]), frame_id, ids[i], pixel_size, color_size) for i in todo}
        best = self._best_rounds(prompts)
        winners = [i for i in todo if best[i].logits is not None]
        for i, box in zip(winners, self._winner_boxes([best[i].logits for i in winners])):
            out[i] = box
        for i in todo:
            if out[i] is None:  # no round above IoU 0, or an empty mask: the no-SAM box
                out[i] = scale_box(box_from_pixels(np.asarray(pixels[i])), pixel_size, color_size)
                self.stats.fallbacks += 1
        self.stats.decode_s += time.perf_counter() - t0
        return out

    def _prompts(self, uv: np.ndarray, frame_id: int, mask_id: int, pixel_size: tuple[int, int],
                 color_size: tuple[int, int]) -> np.ndarray:
        """(rounds, n, 2) colour-image (x, y) points of one mask's rounds (seeded, see module doc)."""
        idx = prompt_point_indices(self.seed, frame_id, mask_id, len(uv), self.rounds, self.points)
        return scale_pixels(uv[idx.ravel()], pixel_size, color_size).reshape(idx.shape[0], idx.shape[1], 2)

    def _best_rounds(self, prompts: dict[int, np.ndarray]) -> dict[int, _Best]:
        """The winning round of each mask, decoding all masks' rounds in batches of ``prompt_batch``."""
        best = {i: _Best() for i in prompts}
        groups: dict[int, list[int]] = {}  # a batch needs equal point counts (P < points gives fewer)
        for i, c in prompts.items():
            groups.setdefault(c.shape[1], []).append(i)
        for members in groups.values():
            coords = np.concatenate([prompts[i] for i in members])
            owners = np.repeat(members, self.rounds)
            rounds = np.tile(np.arange(self.rounds), len(members))
            for s in range(0, len(coords), self.prompt_batch):
                logits, iou = self.decode(coords[s : s + self.prompt_batch])
                # Rounds of one mask arrive in order, so "strictly greater" keeps the first best round.
                for b, (owner, rnd) in enumerate(zip(owners[s : s + len(iou)], rounds[s : s + len(iou)])):
                    if iou[b] > best[owner].score:
                        # clone: a view would keep the whole batch of logits alive
                        best[owner] = _Best(float(iou[b]), logits[b].clone(), int(rnd))
        return best

    def _winner_boxes(self, logits: list["torch.Tensor"]) -> list[Box | None]:
        import torch

        out: list[Box | None] = []
        for s in range(0, len(logits), self.prompt_batch):
            out.extend(self.boxes_of_logits(torch.stack(logits[s : s + self.prompt_batch])))
        return out


def load_sam_refiner(model_type: str, checkpoint: Path | str, *, device: str = "cpu", precision: str = "fp32",
                     seed: int = 0, rounds: int = 10, points: int = 5,
                     prompt_batch: int | None = None) -> SamRefiner:
    """Load a SAM checkpoint of ``model_type`` (``vit_b``/``vit_l``/``vit_h`` or a registered name) as a
    :class:`SamRefiner`.

    Args:
        model_type: architecture name in :data:`SAM_ARCHS`.
        checkpoint: the ``.pth`` state dict (e.g. ``sam_vit_h_4b8939.pth``).
        device: "cpu" or "cuda[:n]".
        precision: "fp32", or "fp16"/"bf16" autocast (CUDA; CPU where torch supports it).
        seed: sampling seed (same input and seed give the same boxes).
        rounds / points: OpenMask3D's ``num_random_rounds`` (10) / ``num_selected_points`` (5).
        prompt_batch: prompt sets per decoder call (default 128 on CUDA, 32 on CPU).

    Raises:
        SamCheckpointError: the checkpoint cannot be used (one line naming the file).
        ValueError: unknown model type, bad precision or sampling settings.
    """
    check_precision(device, precision)
    model, sha = load_sam_model(model_type, checkpoint, device=device)
    refiner = SamRefiner(model, model_type, checkpoint_sha256=sha, device=device, precision=precision,
                         seed=seed, rounds=rounds, points=points, prompt_batch=prompt_batch)
    log.info("loaded SAM %s from %s (sha256 %s) on %s, %s", model_type, checkpoint, sha[:12], device, precision)
    return refiner
