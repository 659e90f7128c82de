"""Per-mask CLIP features from posed RGB-D frames (OpenMask3D's mask-feature computation).

* :mod:`.visibility`: projection, depth test, distinct-pixel counts, top-k views (sparse, no dense images);
* :mod:`.crops`: crop boxes (``mask2box_multi_level``) and the 2D mask refiner seam;
* :mod:`.sam`: SAM as the 2D mask refiner (checkpoint loading, one image embedding per frame);
* :mod:`.encoders`: open_clip loading (offline) and :class:`EncoderSpec`;
* :mod:`.extractor`: the stage, :func:`extract_features`.

torch / open_clip are imported lazily (inside functions), so importing this package stays cheap.
"""

from scenegrep.indexer.features.crops import (
    Box,
    MaskRefiner,
    ProjectedPointsRefiner,
    box_from_pixels,
    multi_level_boxes,
    scale_box,
)
from scenegrep.indexer.features.encoders import (
    PRECISIONS,
    ClipEncoder,
    EncoderSpec,
    EncoderWeightsError,
    load_encoder,
)
from scenegrep.indexer.features.extractor import FeatureConfig, InstanceFeatures, extract_features
from scenegrep.indexer.features.sam import (
    SAM_ARCHS,
    SamArch,
    SamCheckpointError,
    SamRefiner,
    load_sam_refiner,
    register_sam_arch,
)
from scenegrep.indexer.features.visibility import Visibility, compute_visibility, project_points, visible_points

__all__ = [
    "Box", "MaskRefiner", "ProjectedPointsRefiner", "box_from_pixels", "multi_level_boxes", "scale_box",
    "PRECISIONS", "ClipEncoder", "EncoderSpec", "EncoderWeightsError", "load_encoder",
    "SAM_ARCHS", "SamArch", "SamCheckpointError", "SamRefiner", "load_sam_refiner", "register_sam_arch",
    "FeatureConfig", "InstanceFeatures", "extract_features",
    "Visibility", "compute_visibility", "project_points", "visible_points",
]
