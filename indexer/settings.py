"""Typed settings of an indexing job: a feature preset plus the user's overrides, the proposer, SAM, CLIP.

:meth:`IndexSettings.create` is the one place where the options a user gave (CLI flags, keyword
arguments of :meth:`scenegrep.Collection.index`, the server) become a complete, checked job:

* the feature preset (``default`` or ``openmask3d``) with every explicitly given setting replacing the
  preset's value (an option left at ``None`` means "the preset's");
* the proposer and its options (Mask3D's checkpoint and post-processing settings apply to ``mask3d`` only);
* SAM: the architecture inferred from the checkpoint's file name when not named (``sam_vit_h_4b8939.pth``
  -> ``vit_h``), else the preset's;
* the encoder: ``clip_model=None`` means the home's own encoder when the home has one, else the preset's.

Options are named as the CLI names them (``mask3d_topk`` is ``--mask3d-topk``), and every contradiction is
a :class:`~scenegrep.errors.SettingsError` naming the option, raised before any scan is read or any model
loaded. This module imports no numpy or torch at import time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenegrep.errors import SettingsError
from scenegrep.choices import (
    DEFAULT_PROPOSER,
    DEFAULT_VOXEL_SIZE,
    DEVICES,
    MASK3D_COLORS,
    MASK3D_POSTPROCESS,
    MASK3D_TOPK,
    PRECISIONS,
    PROPOSERS,
    SEGMENTERS,
    UNION_MEMBERS,
)

if TYPE_CHECKING:
    from scenegrep.indexer.features.extractor import FeatureConfig
    from scenegrep.indexer.features.presets import Preset

__all__ = ["IndexSettings", "EncoderChoice", "flag"]

#: Options whose value comes from the feature preset unless given.
PRESET_OPTIONS: tuple[str, ...] = ("frame_step", "depth_threshold", "top_k", "crop_levels", "crop_expansion",
                                   "sam_rounds", "sam_points")
#: ``frame_step`` value meaning "every frame up to the frame budget" (the preset ``default``'s own choice).
AUTO = "auto"
_MASK3D_OPTIONS = ("checkpoint", "mask3d_postprocess", "mask3d_topk", "mask3d_colors")


def proposer_members(name: str) -> list[str]:
    """``"geometric+lifted"`` -> both; ``"union"`` -> :data:`~scenegrep.choices.UNION_MEMBERS`; else the name."""
    if name == "union":
        return list(UNION_MEMBERS)
    return [n.strip() for n in name.split("+")] if "+" in name else [name]


def flag(name: str) -> str:
    """The option ``name`` as users type it (``mask3d_topk`` -> ``--mask3d-topk``)."""
    return "--" + name.replace("_", "-")


def _only_with(names: list[str], requirement: str) -> SettingsError:
    flags = " and ".join(flag(n) for n in names) if len(names) <= 2 else ", ".join(flag(n) for n in names)
    return SettingsError(f"{flags} only appl{'ies' if len(names) == 1 else 'y'} {requirement}")


def _checkpoint_file(path: Path, kind: str) -> Path:
    """Fail before any scan is read or model loaded when a checkpoint path is not a file."""
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else f"{kind} checkpoint not found"
        raise SettingsError(what, path)
    return path


def _check_ray(given: dict[str, Any]) -> None:
    """Check the Ray options in ``given`` (and fill in ``gpus_per_worker``'s default)."""
    address = given.get("ray_address")
    if address is None:
        stray = [n for n in ("workers", "gpus_per_worker") if n in given]
        if stray:
            raise _only_with(stray, "with --ray")
        return
    address = given["ray_address"] = str(address).strip()
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address not in ("local", "auto") and not (host and port.isdigit()):
        raise SettingsError(f"{address!r} is not a Ray address: local, auto, ray://HOST:PORT or HOST:PORT "
                            "(a path right after a bare --ray is taken as its address: put --ray last)", "--ray")
    if "workers" in given and int(given["workers"]) < 1:
        raise SettingsError("must be >= 1", flag("workers"))
    cuda = given.get("device", "cpu").startswith("cuda")
    gpus = float(given.setdefault("gpus_per_worker", 1.0 if cuda else 0.0))
    if gpus < 0:
        raise SettingsError("must be >= 0", flag("gpus_per_worker"))
    if cuda and gpus == 0:
        raise SettingsError("--device cuda on Ray needs --gpus-per-worker > 0 (Ray hides the GPUs from an actor "
                            "that reserved none)", flag("gpus_per_worker"))
    if not cuda and gpus > 0:
        raise SettingsError("GPUs reserved for workers that run on the CPU: add --device cuda",
                            flag("gpus_per_worker"))


@dataclass(frozen=True)
class EncoderChoice:
    """Which CLIP model to load for a job.

    Attributes:
        model: open_clip model name, ``hf-hub:ORG/NAME`` or ``local-dir:PATH``.
        pretrained: open_clip tag or weights file; None for ``local-dir:``/``hf-hub:`` models.
        allow_random_weights: random weights are acceptable (tests, offline demo; recorded in the catalog).
        from_home: the home's own encoder was reused because no model was named.
    """

    model: str
    pretrained: str | None
    allow_random_weights: bool
    from_home: bool = False


@dataclass(frozen=True)
class IndexSettings:
    """A complete, checked indexing job (build it with :meth:`create`).

    Attributes:
        preset: the feature preset with the user's overrides applied (frame step, depth threshold, top-k,
            crop levels and expansion, SAM rounds and points, CLIP model and tag).
        proposer: a registered proposer name (``geometric``, ``file``, ``mask3d``, ...).
        masks: for ``file``: a mask file (one scan) or a folder of ``<scan>.npz``/``<scan>_masks.pt``.
        checkpoint: for ``mask3d`` (alone or in a union): the Mask3D checkpoint.
        mask3d_postprocess: for ``mask3d``: ``default``, ``openmask3d`` or ``mask3d``.
        mask3d_topk: for ``mask3d`` with ``mask3d_postprocess="mask3d"``: masks kept.
        mask3d_colors: for ``mask3d``: ``scannet`` (mean/std) or ``unit`` ([0, 1]) colours.
        segmenter: for ``lifted`` (alone or in a union): ``sam`` (SAM's automatic masks, from
            ``sam_checkpoint``) or ``felzenszwalb`` (weight-free); None = ``sam`` when a SAM checkpoint is
            given, else ``felzenszwalb``.
        sam_model: SAM architecture (resolved); None without SAM.
        sam_checkpoint: SAM weights; None = the box of the mask's projected visible points.
        clip_model: None = the home's own encoder when it has one, else the preset's.
        clip_pretrained: open_clip tag or weights file; None = the preset's tag for plain model names, none
            for ``local-dir:``/``hf-hub:``.
        allow_random_weights: accept random CLIP weights when the real ones are missing (recorded).
        seed: seed of SAM's prompt sampling.
        precision: ``fp32``, ``fp16`` or ``bf16`` for CLIP and SAM's image encoder.
        device: ``cpu`` or ``cuda`` for every model.
        voxel_size: metres; voxel of the cloud back-projected from 7-Scenes style frames (recorded, and
            part of the scan's content hash).
        depth_check: 7-Scenes style scans: keep a back-projected pixel only when a neighbouring frame's
            depth agrees with it (drops flying pixels and single noisy readings; recorded and hashed).
        force: re-index scans whose content hash is unchanged.
        batch_size: scans committed together.
        ray_address: index on Ray (:mod:`scenegrep.indexer.distributed`): ``local`` starts a Ray instance on
            this machine (its CPUs and GPUs), ``auto`` joins the cluster this machine belongs to,
            ``ray://HOST:PORT`` (Ray Client) or ``HOST:PORT`` joins that cluster; None = one process here.
        workers: Ray: actors (each loads the models once and indexes whole scans); None = one per CPU, or
            one per ``gpus_per_worker`` GPUs; never more than there are scans.
        gpus_per_worker: Ray: GPUs reserved per actor (fractions share a GPU); None = 1 with
            ``device="cuda"``, else 0.
    """

    preset: "Preset"
    proposer: str = DEFAULT_PROPOSER
    masks: Path | None = None
    checkpoint: Path | None = None
    mask3d_postprocess: str = MASK3D_POSTPROCESS[0]
    mask3d_topk: int = MASK3D_TOPK
    mask3d_colors: str = MASK3D_COLORS[0]
    segmenter: str | None = None
    sam_model: str | None = None
    sam_checkpoint: Path | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    allow_random_weights: bool = False
    seed: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    voxel_size: float = DEFAULT_VOXEL_SIZE
    depth_check: bool = True
    force: bool = False
    batch_size: int = 8
    ray_address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    extra_proposer_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, preset: str = "default", **options: Any) -> "IndexSettings":
        """Settings from ``preset`` plus ``options`` (CLI option names; ``None`` = not given).

        Raises:
            SettingsError: an unknown option or preset, or options that contradict each other (one line
                naming the option).
        """
        from scenegrep.indexer.features.presets import get_preset, sam_model_for
        from scenegrep.indexer.proposals import proposer_names

        given = {k: v for k, v in options.items() if v is not None}
        known = {f.name for f in dataclasses.fields(cls)} | set(PRESET_OPTIONS)
        unknown = sorted(set(given) - known - {"preset"})
        if unknown:
            raise SettingsError(f"unknown option(s) {', '.join(flag(u) for u in unknown)}")
        base = get_preset(preset)
        overrides = {n: given.pop(n) for n in PRESET_OPTIONS if n in given}
        if overrides.get("frame_step") == AUTO:
            overrides["frame_step"] = None
        try:
            resolved = base.with_overrides(**overrides)
        except SettingsError:
            raise
        except ValueError as e:  # FeatureConfig's own checks (a frame step or top-k below 1, ...)
            raise SettingsError(e) from None

        proposer = given.get("proposer", DEFAULT_PROPOSER)
        members = proposer_members(proposer)
        for m in members:
            if m not in proposer_names():
                raise SettingsError(f"unknown proposer {m!r}; choose one of {', '.join(proposer_names())} "
                                    "or several joined by '+'", flag("proposer"))
        if len(set(members)) != len(members):
            raise SettingsError(f"{proposer!r} names a proposer twice", flag("proposer"))
        if len(members) > 1 and "file" in members:
            raise SettingsError("'file' cannot be part of a union (its masks are read per scan)", flag("proposer"))
        if "lifted" in members:
            seg = given.setdefault("segmenter", "sam" if "sam_checkpoint" in given else "felzenszwalb")
            if seg not in SEGMENTERS:
                raise SettingsError(f"choose one of {', '.join(SEGMENTERS)}", flag("segmenter"))
            if seg == "sam" and "sam_checkpoint" not in given:
                raise SettingsError("--segmenter sam needs --sam-checkpoint PATH (SAM never runs with random weights)")
        elif "segmenter" in given:
            raise _only_with(["segmenter"], "to --proposer lifted (or a union with it)")
        if "mask3d" in members:
            if "checkpoint" not in given:
                raise SettingsError("--proposer mask3d needs --checkpoint PATH (a Mask3D .ckpt file)")
            given["checkpoint"] = _checkpoint_file(Path(given["checkpoint"]), "Mask3D")
        else:
            stray = [n for n in _MASK3D_OPTIONS if n in given]
            if stray:
                raise _only_with(stray, "to --proposer mask3d")
        if given.get("mask3d_postprocess", MASK3D_POSTPROCESS[0]) not in MASK3D_POSTPROCESS:
            raise SettingsError(f"choose one of {', '.join(MASK3D_POSTPROCESS)}", flag("mask3d_postprocess"))
        if given.get("mask3d_colors", MASK3D_COLORS[0]) not in MASK3D_COLORS:
            raise SettingsError(f"choose one of {', '.join(MASK3D_COLORS)}", flag("mask3d_colors"))
        if int(given.get("mask3d_topk", MASK3D_TOPK)) < 1:
            raise SettingsError("must be >= 1", flag("mask3d_topk"))

        sam_checkpoint = given.get("sam_checkpoint")
        if sam_checkpoint is None:
            if "sam_model" in given:
                raise SettingsError(f"--sam-model {given['sam_model']} needs --sam-checkpoint PATH "
                                    "(SAM never runs with random weights)")
            stray = [n for n in ("sam_rounds", "sam_points") if n in overrides]
            if stray:
                raise _only_with(stray, "with --sam-checkpoint")
        else:
            given["sam_checkpoint"] = _checkpoint_file(Path(sam_checkpoint), "SAM")
            given["sam_model"] = sam_model_for(given["sam_checkpoint"], given.get("sam_model"), resolved)

        if given.get("precision", "fp32") not in PRECISIONS:
            raise SettingsError(f"choose one of {', '.join(PRECISIONS)}", flag("precision"))
        if given.get("device", "cpu").split(":")[0] not in DEVICES:
            raise SettingsError(f"choose one of {', '.join(DEVICES)}", flag("device"))
        voxel = float(given.get("voxel_size", DEFAULT_VOXEL_SIZE))
        if not 0.001 <= voxel <= 1.0:
            raise SettingsError(f"{voxel} is outside 0.001..1 metres", flag("voxel_size"))
        _check_ray(given)
        if proposer == "file" and "masks" not in given:
            raise SettingsError("--proposer file needs --masks FILE_OR_FOLDER")
        if "masks" in given and proposer != "file":
            raise _only_with(["masks"], "to --proposer file")
        if "masks" in given:
            given["masks"] = Path(given["masks"])
        return cls(preset=resolved, **given)

    # -- derived forms --------------------------------------------------------------------------------

    def feature_config(self) -> "FeatureConfig":
        """The mask-feature stage's settings."""
        return self.preset.feature_config()

    def proposer_members(self) -> list[str]:
        """The proposers whose masks are used (one, or the members of a union)."""
        return proposer_members(self.proposer)

    def proposer_options(self, sam_refiner: Any | None = None) -> dict[str, Any]:
        """Keyword options of ``make_proposer(self.proposer, ...)`` (``file`` resolves its path per scan).

        ``sam_refiner``: the features stage's loaded SAM; a ``lifted`` proposer with ``segmenter="sam"``
        then shares its model instead of loading the checkpoint a second time.
        """
        per: dict[str, dict[str, Any]] = {}
        members = self.proposer_members()
        if "mask3d" in members:
            per["mask3d"] = dict(checkpoint=self.checkpoint, postprocess=self.mask3d_postprocess,
                                 topk=self.mask3d_topk, colors=self.mask3d_colors, device=self.device)
        if "lifted" in members:
            if self.segmenter != "sam":
                per["lifted"] = {}
            elif sam_refiner is not None:
                per["lifted"] = {"sam_refiner": sam_refiner}
            else:
                per["lifted"] = dict(sam_checkpoint=self.sam_checkpoint, sam_model=self.sam_model,
                                     device=self.device, precision=self.precision)
        if len(members) == 1:
            return {**per.get(members[0], {}), **self.extra_proposer_options}
        return {"member_options": {k: v for k, v in per.items() if v}, **self.extra_proposer_options}

    def encoder_choice(self, home_encoder: Any | None = None) -> EncoderChoice:
        """The CLIP model to load: the named one, else the home's own (``home_encoder``: the catalog's
        ``EncoderIdentity`` or None), else the preset's."""
        if self.clip_model is None and home_encoder is not None:
            return EncoderChoice(home_encoder.name, home_encoder.pretrained,
                                 self.allow_random_weights or bool(home_encoder.random_weights), from_home=True)
        model = self.clip_model or self.preset.clip_model
        value = self.clip_pretrained
        if value is None:
            tag = None if model.startswith(("local-dir:", "hf-hub:")) else self.preset.clip_pretrained
        else:
            tag = None if value.lower() in ("", "none") else value
        return EncoderChoice(model, tag, self.allow_random_weights)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (recorded per job)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "preset"}
        d["preset"] = self.preset.name
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
