"""A tiny random-weight open_clip model written in open_clip's ``local-dir:`` format.

Tests, benchmarks and the offline demo load it with ``load_encoder("local-dir:PATH")``, i.e. through
exactly the code path a user's real model takes. Its vectors carry no meaning; the model only exists so
the pipeline can run end to end without downloading weights. It uses open_clip's standard BPE tokenizer
(vocab 49408), so any text works.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: OpenAI CLIP's normalisation, the same open_clip uses by default.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"


def write_local_dir_model(
    path: Path | str,
    *,
    embed_dim: int = 64,
    image_size: int = 64,
    width: int = 64,
    layers: int = 2,
    patch_size: int = 16,
    text_width: int = 64,
    text_layers: int = 2,
    context_length: int = 77,
    vocab_size: int = 49408,
    seed: int = 0,
) -> Path:
    """Write a random ViT CLIP to folder ``path`` (created); return the folder.

    The folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
    ``open_clip_model.safetensors``. Weights come from open_clip's own initialisation under
    ``torch.manual_seed(seed)``, so equal arguments give an equal model on one torch version. Both towers
    use 2 attention heads (head width = width / 2).
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    if width % 2 or text_width % 2:
        raise ValueError("width and text_width must be even (2 attention heads)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width,
                       "patch_size": patch_size, "head_width": width // 2},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": text_width,
                     "heads": 2, "layers": text_layers},
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(_CLIP_MEAN), "std": list(_CLIP_STD)}}

    # Initialise under a private RNG state so writing a model does not disturb the caller's torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**model_cfg)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1), encoding="utf-8")
    log.debug("wrote tiny open_clip model (embed_dim %d, image %d) to %s", embed_dim, image_size, folder)
    return folder
