"""CLIP image/text encoders through open_clip's own factory, with an identity record.

:func:`load_encoder` accepts the three model schemas open_clip itself understands:

* a built-in architecture name (``"ViT-L-14-336"``) plus ``pretrained``: an open_clip tag (``"openai"``)
  resolved from the local caches only, or the path of a checkpoint file;
* ``"hf-hub:org/repo"``: config and weights from the Hugging Face cache only;
* ``"local-dir:PATH"``: a folder with ``open_clip_config.json`` and ``open_clip_model.safetensors`` /
  ``open_clip_pytorch_model.bin`` (what :func:`scenegrep.testing.write_local_dir_model` writes).

The indexer runs offline, so nothing here ever downloads: cached files are located with
``local_files_only`` look-ups before open_clip is called, and a missing weight raises
:class:`EncoderWeightsError` (or, only with ``allow_random_weights=True``, gives a randomly initialised
model whose :class:`EncoderSpec` says so).

The :class:`EncoderSpec` is what the catalog records on the first index and compares on every later one:
two encoders with equal identities give comparable vectors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from scenegrep.choices import PRECISIONS
from scenegrep.indexer.weights import sha256_file
from scenegrep.errors import ScenegrepError

log = logging.getLogger(__name__)

LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
#: Weight file names open_clip looks for in a local-dir / hf-hub folder, in its order of preference.
_DIR_WEIGHT_NAMES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
    "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)


#: Seed of the random initialisation used with ``allow_random_weights`` (same model in every process).
RANDOM_WEIGHTS_SEED = 0

class EncoderWeightsError(ScenegrepError, RuntimeError):
    """The encoder's weights are not available locally. ``str(err)`` is one line saying how to provide them."""


@dataclass(frozen=True)
class EncoderSpec:
    """Identity of a loaded encoder: equal specs give comparable vectors.

    Attributes:
        model: open_clip model name as loaded: a built-in name, ``"hf-hub:org/repo"`` or
            ``"local-dir:/abs/path"`` (local-dir paths are made absolute so the identity does not depend on
            the working directory).
        pretrained: the open_clip tag or checkpoint path given with a built-in name; None for the schema
            forms (open_clip ignores ``pretrained`` there) and for random weights without a tag.
        checkpoint_sha256: sha256 hex of the weights file actually loaded; None for random weights.
        dim: embedding width D of ``encode_images`` / ``encode_texts``.
        image_size: (height, width) the image tower takes.
        image_mean: per-channel normalisation mean of the preprocess.
        image_std: per-channel normalisation std of the preprocess.
        random_weights: True when no weights were loaded (only with ``allow_random_weights``); such vectors
            are meaningless for search and must never be mistaken for a real model's.
    """

    model: str
    pretrained: str | None
    checkpoint_sha256: str | None
    dim: int
    image_size: tuple[int, int]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    random_weights: bool = False

    def identity(self) -> dict[str, Any]:
        """JSON-able dict of every field (tuples become lists)."""
        d = asdict(self)
        for k in ("image_size", "image_mean", "image_std"):
            d[k] = list(d[k])
        return d


# --------------------------------------------------------------------------------------------------
# Weight resolution (offline only)
# --------------------------------------------------------------------------------------------------


def _how_to_provide(model: str, pretrained: str | None) -> str:
    return (
        f"weights for {model!r}"
        + (f" / {pretrained!r}" if pretrained else "")
        + " are not available offline: put them in the Hugging Face cache (HF_HOME) or open_clip's cache, "
        "pass --clip-pretrained /path/to/file.bin, use --clip-model local-dir:/path/to/folder, "
        "or pass --allow-random-weights for a (useless for search) random model"
    )


def _hf_cached(repo_id: str, filename: str, cache_dir: str | None) -> str | None:
    """Path of ``repo_id/filename`` in the HF cache, or None; never touches the network."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        # local_files_only alone is not enough: building request headers may still fetch a registry from
        # the Hub (huggingface_hub's agent detection), which hangs offline. Offline mode stops it.
        with _hf_offline():
            return hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=cache_dir,
                                   local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        # LocalEntryNotFoundError is the normal "not cached" answer; ValueError/OSError cover malformed
        # repo ids and unreadable caches, which mean the same thing for us: not available offline.
        return None


def _hf_cached_weights(repo_id: str, filename: str | None, cache_dir: str | None) -> str | None:
    """Mirror of open_clip's ``download_pretrained_from_hf`` choice (safetensors first), cache only."""
    filename = filename or "open_clip_pytorch_model.bin"
    candidates: list[str] = []
    if filename == "open_clip_pytorch_model.bin":
        candidates.append("open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        candidates.append(filename[:-4] + ".safetensors")
    candidates.append(filename)
    for name in candidates:
        path = _hf_cached(repo_id, name, cache_dir)
        if path is not None:
            return path
    return None


def _resolve_tag(model: str, tag: str, cache_dir: str | None) -> tuple[dict, str | None]:
    """(open_clip's pretrained cfg for the tag, cached weights path or None). {} cfg = unknown tag."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        return {}, None
    if cfg.get("file"):
        return cfg, cfg["file"] if os.path.isfile(cfg["file"]) else None
    hf = cfg.get("hf_hub", "")
    if hf:
        repo_id, filename = os.path.split(hf)
        path = _hf_cached_weights(repo_id, filename or None, cache_dir)
        if path is not None:
            return cfg, path
    url = cfg.get("url", "")
    if url:
        # open_clip's URL downloads land in cache_dir or ~/.cache/clip under the URL's basename.
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(path):
            return cfg, path
    return cfg, None


def _find_checkpoint_in_dir(folder: Path) -> str | None:
    """The weights file open_clip would load from a local-dir folder (its own helper when available)."""
    try:
        from open_clip.factory import _find_checkpoint_in_dir as oc_find
    except ImportError:  # older/newer open_clip without the private helper: mirror its preference order
        oc_find = None
    if oc_find is not None:
        return oc_find(folder)
    for name in _DIR_WEIGHT_NAMES:
        if (folder / name).is_file():
            return str(folder / name)
    return None


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Make huggingface_hub refuse HTTP for the duration (it then answers from its cache)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


# --------------------------------------------------------------------------------------------------
# Reduced precision (shared with the SAM refiner)
# --------------------------------------------------------------------------------------------------


def _device_type(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def autocast_context(device: str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to fp16/bf16 on ``device``'s type (CUDA or CPU); a no-op for fp32.

    Weights stay fp32: autocast runs matmuls/convolutions in the low precision and keeps reductions
    such as layer norms in fp32, which is what keeps the accuracy loss small.
    """
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=_device_type(device), dtype=dtype)


def check_precision(device: str, precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of :data:`PRECISIONS` and autocast to it works on
    ``device`` (probed with one tiny matmul: older torch builds silently disable CPU fp16 autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return
    want = torch.float16 if precision == "fp16" else torch.bfloat16
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unsupported dtype only warns; the probe below decides
            with autocast_context(device, precision):
                a = torch.ones(2, 2, device=device)
                got = (a @ a).dtype
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"precision {precision!r} is not supported on {device!r} ({e})") from e
    if got != want:
        raise ValueError(f"precision {precision!r} is not supported on {device!r} by this torch build "
                         f"(autocast gave {got}); use fp32")


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------


class ClipEncoder:
    """A loaded open_clip model with its validation preprocess and tokenizer.

    Attributes:
        spec: the encoder's identity.
        device: torch device string the model runs on ("cpu", "cuda", "cuda:1", ...).
        precision: "fp32" (default) or "fp16"/"bf16" autocast (CUDA, or CPU where torch supports it);
            weights stay fp32.
        preprocess_workers: threads that run the preprocess (resize, crop, normalise) of a batch in
            parallel; PIL's resize releases the GIL, and on a GPU the preprocess of thousands of crops is
            otherwise the bottleneck. 1 = serial. Results do not depend on it.
        model / preprocess / tokenizer: the open_clip objects (model in eval mode).
    """

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, spec: EncoderSpec,
                 device: str = "cpu", precision: str = "fp32", preprocess_workers: int | None = None):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = str(device)
        self.precision = precision
        self.preprocess_workers = max(1, preprocess_workers if preprocess_workers is not None
                                      else min(8, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None

    def _preprocess_all(self, images: Sequence[Any]) -> list[Any]:
        from PIL import Image

        def one(im: Any) -> Any:
            return self.preprocess(im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)))

        if self.preprocess_workers == 1 or len(images) < 2:
            return [one(im) for im in images]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.preprocess_workers, thread_name_prefix="clip-preprocess")
        return list(self._pool.map(one, images))  # map keeps the input order

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.precision)

    @staticmethod
    def _normalise(feats) -> np.ndarray:
        # Same arithmetic as OpenMask3D: cast to float32, then divide each row by its own L2 norm.
        feats = feats.float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """(B, D) float32 L2-normalised embeddings of PIL images or (H, W, 3) uint8 arrays.

        Each image goes through the model's own validation preprocess (resize shortest side, centre
        crop, normalise), then batches of ``batch_size`` are encoded under ``torch.inference_mode``.
        """
        import torch

        out = np.zeros((len(images), self.spec.dim), np.float32)
        for start in range(0, len(images), max(1, batch_size)):
            chunk = images[start : start + batch_size]
            batch = torch.stack(self._preprocess_all(chunk)).to(self.device)
            with torch.inference_mode(), self._autocast():
                out[start : start + len(chunk)] = self._normalise(self.model.encode_image(batch))
        return out

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(B, D) float32 L2-normalised text embeddings (open_clip tokenizer of the model)."""
        import torch

        texts = list(texts)
        out = np.zeros((len(texts), self.spec.dim), np.float32)
        for start in range(0, len(texts), max(1, batch_size)):
            chunk = texts[start : start + batch_size]
            tokens = self.tokenizer(chunk).to(self.device)
            with torch.inference_mode(), self._autocast():
                out[start : start + len(chunk)] = self._normalise(self.model.encode_text(tokens))
        return out


def load_encoder(
    model: str = "ViT-L-14-336",
    pretrained: str | None = "openai",
    device: str = "cpu",
    allow_random_weights: bool = False,
    precision: str = "fp32",
    cache_dir: str | None = None,
    preprocess_workers: int | None = None,
) -> ClipEncoder:
    """Load a CLIP model through ``open_clip.create_model_and_transforms`` without any download.

    Args:
        model: built-in open_clip name, ``"hf-hub:org/repo"`` or ``"local-dir:PATH"``.
        pretrained: for a built-in name: an open_clip tag (resolved from the HF cache or open_clip's
            URL cache) or an existing checkpoint file; ignored (as open_clip does) for the schema forms.
        device: "cpu" or "cuda[:n]".
        allow_random_weights: when weights are missing, build the architecture with random weights
            (logged as a warning and recorded as ``spec.random_weights``) instead of raising.
        precision: "fp32", or "fp16"/"bf16" autocast (CUDA; CPU where this torch supports it).
        cache_dir: open_clip / HF cache folder (None: their defaults, e.g. ``HF_HOME``).
        preprocess_workers: threads for image preprocessing (None: min(8, CPU count); 1: serial).

    Raises:
        EncoderWeightsError: weights not available offline and ``allow_random_weights`` is False.
        ValueError: unknown architecture / precision (or one the device cannot run), or a malformed
            local-dir folder.
    """
    import open_clip

    check_precision(device, precision)

    factory_kwargs: dict[str, Any] = {"device": device, "precision": "fp32", "cache_dir": cache_dir}
    checkpoint: str | None = None
    spec_pretrained: str | None = None

    if model.startswith(LOCAL_DIR_PREFIX):
        folder = Path(model[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve()
        if not (folder / "open_clip_config.json").is_file():
            raise ValueError(f"{folder}: not an open_clip local-dir model (no open_clip_config.json)")
        model = f"{LOCAL_DIR_PREFIX}{folder}"
        if pretrained not in (None, "openai"):
            log.warning("ignoring pretrained=%r: a local-dir model loads the weights in its folder", pretrained)
        checkpoint = _find_checkpoint_in_dir(folder)
        factory_args = (model, None)
        tokenizer_name = model
    elif model.startswith(HF_HUB_PREFIX):
        repo_id = model[len(HF_HUB_PREFIX) :]
        if pretrained not in (None, "openai"):
            log.warning("ignoring pretrained=%r: an hf-hub model loads the weights of its repository", pretrained)
        if _hf_cached(repo_id, "open_clip_config.json", cache_dir) is None:
            # Without the config there is no architecture to build, so random weights cannot help.
            raise EncoderWeightsError(_how_to_provide(model, None) + " (its open_clip_config.json is not cached)")
        checkpoint = _hf_cached_weights(repo_id, None, cache_dir)
        factory_args = (model, None)
        tokenizer_name = model
        if checkpoint is None:
            factory_kwargs["load_weights"] = False
    else:
        arch = model.replace("/", "-")
        if open_clip.get_model_config(arch) is None:
            raise ValueError(f"unknown open_clip model {model!r} (see open_clip.list_models())")
        model = arch
        tokenizer_name = arch
        spec_pretrained = pretrained
        tag_cfg: dict = {}
        if pretrained and os.path.isfile(pretrained):
            checkpoint = str(Path(pretrained).resolve())
        elif pretrained:
            tag_cfg, checkpoint = _resolve_tag(arch, pretrained, cache_dir)
            if not tag_cfg:
                raise ValueError(
                    f"pretrained {pretrained!r} is neither an existing file nor an open_clip tag of {arch!r} "
                    f"(tags: {open_clip.list_pretrained_tags_by_model(arch)})")
        # Pass the resolved file, not the tag, so open_clip never tries a download; carry over what the
        # tag would have set: QuickGELU (OpenAI weights need it) and its preprocess overrides.
        if tag_cfg.get("quick_gelu") and not open_clip.get_model_config(arch).get("quick_gelu", False):
            factory_kwargs["force_quick_gelu"] = True
        for src, dst in (("mean", "image_mean"), ("std", "image_std"),
                         ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
            if tag_cfg.get(src) is not None:
                factory_kwargs[dst] = tag_cfg[src]
        factory_args = (arch, checkpoint)
        # Random towers only: never let open_clip fetch default HF text/timm weights.
        factory_kwargs["pretrained_text"] = False

    random_weights = checkpoint is None
    if random_weights:
        if not allow_random_weights:
            raise EncoderWeightsError(_how_to_provide(model, pretrained if spec_pretrained else None))
        log.warning("encoder %s%s: no weights available, using RANDOM weights (allow_random_weights); "
                    "vectors are not meaningful for search", model,
                    f" / {pretrained}" if spec_pretrained else "")

    sha = sha256_file(checkpoint) if checkpoint is not None else None
    # Everything needed is local by now; offline mode makes any HF call open_clip still makes (hf-hub
    # config/weights, HF text towers or tokenizers) answer from the cache instead of trying the network.
    import torch

    # Random weights are seeded so that a catalog indexed with them can still be searched later by
    # another process (the text tower must be the same random model as the image tower that indexed).
    with _hf_offline(), torch.random.fork_rng(devices=[]):
        if random_weights:
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
        oc_model, _, preprocess = open_clip.create_model_and_transforms(*factory_args, **factory_kwargs)
        tokenizer = open_clip.get_tokenizer(tokenizer_name, cache_dir=cache_dir)
    oc_model.eval()

    pp = open_clip.get_model_preprocess_cfg(oc_model)
    size = pp.get("size", getattr(oc_model.visual, "image_size", 224))
    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    dim = _embedding_dim(oc_model, tokenizer, device)
    spec = EncoderSpec(
        model=model,
        pretrained=spec_pretrained,
        checkpoint_sha256=sha,
        dim=dim,
        image_size=size,
        image_mean=tuple(float(x) for x in pp.get("mean", ())),
        image_std=tuple(float(x) for x in pp.get("std", ())),
        random_weights=random_weights,
    )
    log.info("loaded encoder %s (dim %d, image %s, sha256 %s) on %s", model, dim, size,
             (sha or "random")[:12], device)
    return ClipEncoder(oc_model, preprocess, tokenizer, spec, device=device, precision=precision,
                       preprocess_workers=preprocess_workers)


def _embedding_dim(model: Any, tokenizer: Any, device: str) -> int:
    """Output width of the model: the visual tower's output_dim, else one tiny text encode."""
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    import torch

    with torch.inference_mode():
        return int(model.encode_text(tokenizer(["a"]).to(device)).shape[-1])
