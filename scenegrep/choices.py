"""The names a user chooses from, declared once, as data.

This module imports nothing heavy, so the CLI can build its ``--help`` (option choices and defaults) without
loading numpy, torch or the registries themselves. The registries take their names from here
(:mod:`scenegrep.indexer.features.presets`, the Mask3D proposer, the encoders); the built-in proposer
registry is checked against :data:`PROPOSERS` by a test.
"""

from __future__ import annotations

#: Built-in class-agnostic mask proposers (``make_proposer`` names). Names joined by ``+`` (e.g.
#: ``geometric+lifted``) are their union; ``union`` is ``geometric+lifted``.
PROPOSERS: tuple[str, ...] = ("geometric", "lifted", "union", "file", "mask3d")
#: Members of ``union``.
UNION_MEMBERS: tuple[str, ...] = ("geometric", "lifted")
#: 2D segmenters of the ``lifted`` proposer: SAM's automatic masks (needs a SAM checkpoint) or the
#: weight-free Felzenszwalb superpixels.
SEGMENTERS: tuple[str, ...] = ("sam", "felzenszwalb")
#: The proposer used when none is named.
DEFAULT_PROPOSER = "geometric"

#: Mask-feature presets (:data:`scenegrep.indexer.features.presets.PRESETS`).
PRESET_NAMES: tuple[str, ...] = ("default", "openmask3d")

#: SAM architectures of the ``segment_anything`` package.
SAM_MODELS: tuple[str, ...] = ("vit_b", "vit_l", "vit_h")

#: Mask3D post-processing: every connected part of every query once / OpenMask3D's / Mask3D's own top-k.
MASK3D_POSTPROCESS: tuple[str, ...] = ("default", "openmask3d", "mask3d")
#: Mask3D's ``topk_per_image`` (masks kept by ``postprocess="mask3d"``).
MASK3D_TOPK = 750
#: Mask3D colour normalisation: ScanNet mean/std (the released checkpoints) or [0, 1] (OpenMask3D's script).
MASK3D_COLORS: tuple[str, ...] = ("scannet", "unit")

#: Precisions of CLIP and SAM's image encoder.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
#: Devices the models run on.
DEVICES: tuple[str, ...] = ("cpu", "cuda")

#: Voxel size (metres) of the cloud back-projected from a 7-Scenes style scan's frames.
DEFAULT_VOXEL_SIZE = 0.02
