"""Named bundles of mask-feature settings: the project's defaults and OpenMask3D's exact ones.

``scenegrep index --preset NAME`` starts from :data:`PRESETS[NAME] <PRESETS>`; every option the user
gives explicitly replaces the preset's value for it (:meth:`Preset.with_overrides`). A preset only says
*how* features are computed; which SAM weights (if any) and which device are always the user's choice.

:data:`WHY_DIFFERENT` says, per setting, why the project's default departs from OpenMask3D (or that it
does not); :func:`preset_table_markdown` renders both presets and those reasons as the README's table,
so the documentation is generated from the values the code uses.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scenegrep.errors import SettingsError
from scenegrep.choices import PRESET_NAMES, SAM_MODELS
from scenegrep.indexer.features.extractor import FeatureConfig


#: Preset fields that map one to one onto :class:`FeatureConfig` fields.
_FEATURE_FIELDS: tuple[str, ...] = (
    "frame_step", "depth_threshold", "top_k", "crop_levels", "crop_expansion",
    "require_positive_depth", "renormalize",
)


@dataclass(frozen=True)
class Preset:
    """A complete set of mask-feature settings.

    Attributes:
        name: the ``--preset`` value.
        frame_step: use every N-th frame; None = automatic (every frame up to 300, else the smallest
            step that uses at most 300).
        depth_threshold: metres; a point is visible when ``|sensor depth - z| <= depth_threshold``.
        top_k: views per mask.
        crop_levels: nested crops per view (level 0 = tight box).
        crop_expansion: per-level box growth (OpenMask3D's ``multi_level_expansion_ratio``).
        require_positive_depth: also require z > 0 and a sensor reading > 0 in the depth test.
        renormalize: L2-normalise the mean of the crop embeddings. The catalog always stores the unit
            direction (cosine search, as OpenMask3D's evaluation normalises before scoring), so this only
            changes :func:`extract_features`' output, not search results.
        sam_model: SAM architecture assumed for a ``--sam-checkpoint`` when neither ``--sam-model`` nor
            the file name says which; None = the user must say.
        sam_rounds: SAM prompting rounds per (mask, view); the highest predicted IoU wins.
        sam_points: positive prompt points drawn per round from the mask's visible pixels.
        clip_model: open_clip model name.
        clip_pretrained: open_clip pretrained tag used with a plain ``clip_model`` name.
    """

    name: str
    frame_step: int | None
    depth_threshold: float
    top_k: int
    crop_levels: int
    crop_expansion: float
    require_positive_depth: bool
    renormalize: bool
    sam_model: str | None
    sam_rounds: int
    sam_points: int
    clip_model: str
    clip_pretrained: str

    def __post_init__(self) -> None:
        if self.sam_model is not None and self.sam_model not in SAM_MODELS:
            raise ValueError(f"preset {self.name}: sam_model must be one of {', '.join(SAM_MODELS)}, "
                             f"got {self.sam_model!r}")
        if self.sam_rounds < 1 or self.sam_points < 1:
            raise ValueError(f"preset {self.name}: sam_rounds and sam_points must be >= 1")
        self.feature_config()  # FeatureConfig checks the rest (frame_step, top_k, thresholds, ...)

    def settings(self) -> dict[str, Any]:
        """Every setting except the name, as a plain dict."""
        d = dataclasses.asdict(self)
        d.pop("name")
        return d

    def with_overrides(self, **overrides: Any) -> "Preset":
        """A copy with ``overrides`` replacing the preset's values (explicit user options win).

        Raises:
            ValueError: an unknown setting name, or a value the settings reject.
        """
        unknown = sorted(set(overrides) - set(self.settings()))
        if unknown:
            raise SettingsError(f"unknown preset setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(self.settings())}")
        return dataclasses.replace(self, **overrides) if overrides else self

    def feature_config(self, **extra: Any) -> FeatureConfig:
        """The :class:`FeatureConfig` of this preset; ``extra`` sets other FeatureConfig fields
        (``batch_size``, ``max_frames``, ...) or overrides preset ones."""
        kwargs = {f: getattr(self, f) for f in _FEATURE_FIELDS}
        kwargs.update(extra)
        return FeatureConfig(**kwargs)


# The project's feature defaults are FeatureConfig's own (declared once, there).
_FEATURE_DEFAULTS = FeatureConfig()

DEFAULT = Preset(
    name="default",
    **{f: getattr(_FEATURE_DEFAULTS, f) for f in _FEATURE_FIELDS},
    sam_model=None,
    sam_rounds=10,
    sam_points=5,
    clip_model="ViT-L-14-336",
    clip_pretrained="openai",
)

OPENMASK3D = Preset(
    name="openmask3d",
    frame_step=10,
    depth_threshold=0.2,
    top_k=5,
    crop_levels=3,
    crop_expansion=0.1,
    require_positive_depth=False,
    renormalize=False,
    sam_model="vit_h",
    sam_rounds=10,
    sam_points=5,
    clip_model="ViT-L-14-336",
    clip_pretrained="openai",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (DEFAULT, OPENMASK3D)}

#: Per setting: why the project's default is what it is next to OpenMask3D's value.
WHY_DIFFERENT: dict[str, str] = {
    "frame_step": "short captures keep every frame, so briefly seen objects still get views; long ones are "
                  "capped at 300 frames (a 3000-frame ScanNet scan -> every 10th, as OpenMask3D), which bounds "
                  "the cost per scan whatever its length",
    "depth_threshold": "same",
    "top_k": "same",
    "crop_levels": "same",
    "crop_expansion": "same",
    "require_positive_depth": "OpenMask3D depth-tests points behind the camera with their negative depth; "
                              "such a point passes where the sensor has no reading (0) and its z >= -0.2",
    "renormalize": "stored vectors are unit directions either way (search is cosine, and OpenMask3D's "
                   "evaluation normalises too); re-normalising makes extract_features return them",
    "sam_model": "no SAM unless weights are given; OpenMask3D uses ViT-H, assumed for a --sam-checkpoint "
                 "whose model is not named",
    "sam_rounds": "same",
    "sam_points": "same",
    "clip_model": "same",
    "clip_pretrained": "same",
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError naming the choices otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SettingsError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def preset_table_markdown() -> str:
    """The README's table: one row per setting, the default and openmask3d values, and why they differ."""
    none = {"frame_step": "auto", "sam_model": "from the file name"}

    def fmt(key: str, v: Any) -> str:
        return none.get(key, "none") if v is None else f"`{v}`"

    rows = ["| setting | `default` | `openmask3d` | why |", "|---|---|---|---|"]
    for key, value in DEFAULT.settings().items():
        why = WHY_DIFFERENT[key].replace("|", "\\|")
        rows.append(f"| {key} | {fmt(key, value)} | {fmt(key, getattr(OPENMASK3D, key))} | {why} |")
    return "\n".join(rows)


def sam_model_for(checkpoint: Path | str, explicit: str | None, preset: Preset) -> str:
    """The SAM architecture for ``checkpoint``: ``explicit`` if given, else the one the file name names
    (the official files are ``sam_vit_h_4b8939.pth`` etc.), else the preset's ``sam_model``.

    Raises:
        ValueError: none of the three says, or the file name names more than one architecture.
    """
    if explicit is not None:
        if explicit not in SAM_MODELS:
            raise SettingsError(f"unknown SAM model {explicit!r}; choose one of {', '.join(SAM_MODELS)}")
        return explicit
    name = Path(checkpoint).name.lower()
    named = [m for m in SAM_MODELS if re.search(rf"(^|[^a-z0-9]){m}([^a-z0-9]|$)", name)]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise SettingsError(f"{checkpoint}: the file name names several SAM models ({', '.join(named)}); "
                         "pass --sam-model")
    if preset.sam_model is not None:
        return preset.sam_model
    raise SettingsError(f"{checkpoint}: cannot tell the SAM model from the file name; pass --sam-model "
                     f"{'|'.join(SAM_MODELS)}")
