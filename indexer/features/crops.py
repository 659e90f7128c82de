"""2D crop boxes of a mask in a view: OpenMask3D's ``mask2box`` / ``mask2box_multi_level``, plus the
seam where a 2D mask refiner (SAM: :mod:`scenegrep.indexer.features.sam`) plugs in.

Boxes are ``(x1, y1, x2, y2)`` Python ints in pixel coordinates, with x2 and y2 **exclusive**, i.e.
directly usable as ``PIL.Image.crop(box)``.

Resolution: visibility works on the depth image's pixel grid. OpenMask3D crops the colour image at
those same coordinates (its colour and depth have equal size in the setups it supports). When the
sizes are equal we do exactly that (identity). When they differ we map the box per axis by the size
ratio, covering every colour pixel that overlaps the depth-pixel box: ``x1c = floor(x1 * Wc / Wd)``,
``x2c = ceil(x2 * Wc / Wd)`` (same for y), in exact integer arithmetic. The multi-level expansion then
runs at colour resolution and clips to the colour image, as OpenMask3D's expansion runs on the
colour-resolution SAM mask.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

#: (x1, y1, x2, y2), x2/y2 exclusive.
Box = tuple[int, int, int, int]


def box_from_pixels(uv: np.ndarray) -> Box:
    """Tight box of (P, 2) (u, v) pixels, as OpenMask3D's ``mask2box`` on their image.

    x1 / y1 are the smallest column / row, x2 / y2 the largest plus one.

    Raises:
        ValueError: no pixels (``mask2box`` returns None there; callers skip such views).
    """
    uv = np.asarray(uv)
    if uv.ndim != 2 or uv.shape[1] != 2 or uv.shape[0] == 0:
        raise ValueError(f"need a non-empty (P, 2) pixel array, got shape {uv.shape}")
    lo = uv.min(axis=0)
    hi = uv.max(axis=0)
    return int(lo[0]), int(lo[1]), int(hi[0]) + 1, int(hi[1]) + 1


def multi_level_boxes(box: Box, levels: int = 3, expansion: float = 0.1, *,
                      image_size: tuple[int, int]) -> list[Box]:
    """The ``levels`` boxes of OpenMask3D's ``mask2box_multi_level`` for level 0 .. levels-1.

    Level 0 is ``box`` unchanged (never clipped). Level l > 0 moves each side outward by
    ``int(|x2 - x1| * expansion) * l`` horizontally and ``int(|y2 - y1| * expansion) * l`` vertically
    (truncation before multiplying by the level, as the original), then clips x1, y1 at 0, x2 at the
    image width and y2 at the image height.

    Args:
        box: level-0 box (x1, y1, x2, y2).
        levels: number of levels.
        expansion: OpenMask3D's ``multi_level_expansion_ratio``.
        image_size: (width, height) of the image the box is clipped to.
    """
    x1, y1, x2, y2 = (int(c) for c in box)
    width, height = int(image_size[0]), int(image_size[1])
    out: list[Box] = []
    for level in range(levels):
        if level == 0:
            out.append((x1, y1, x2, y2))
            continue
        x_exp = int(abs(x2 - x1) * expansion) * level
        y_exp = int(abs(y2 - y1) * expansion) * level
        out.append((max(0, x1 - x_exp), max(0, y1 - y_exp), min(width, x2 + x_exp), min(height, y2 + y_exp)))
    return out


def scale_box(box: Box, from_size: tuple[int, int], to_size: tuple[int, int]) -> Box:
    """Map a box from an image of ``from_size`` (W, H) to one of ``to_size`` (identity when equal).

    The result covers every target pixel overlapping the source box (floor of the start, ceil of the
    exclusive end), computed in integers so equal ratios never suffer float rounding.
    """
    fw, fh = int(from_size[0]), int(from_size[1])
    tw, th = int(to_size[0]), int(to_size[1])
    if (fw, fh) == (tw, th):
        return tuple(int(c) for c in box)  # type: ignore[return-value]
    x1, y1, x2, y2 = (int(c) for c in box)
    return (
        max(0, (x1 * tw) // fw),
        max(0, (y1 * th) // fh),
        min(tw, -((-x2 * tw) // fw)),
        min(th, -((-y2 * th) // fh)),
    )


def scale_pixels(uv: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Map (P, 2) (u, v) pixels to the pixel holding each source pixel's centre in ``to_size`` (for point
    prompts); identity when the sizes are equal."""
    uv = np.asarray(uv)
    fw, fh = int(from_size[0]), int(from_size[1])
    tw, th = int(to_size[0]), int(to_size[1])
    if (fw, fh) == (tw, th):
        return uv.copy()
    out = np.empty_like(uv)
    # centre (u + 0.5) * tw / fw, floored, in integers: ((2u + 1) * tw) // (2 fw)
    out[:, 0] = np.minimum(((2 * uv[:, 0].astype(np.int64) + 1) * tw) // (2 * fw), tw - 1)
    out[:, 1] = np.minimum(((2 * uv[:, 1].astype(np.int64) + 1) * th) // (2 * fh), th - 1)
    return out


@runtime_checkable
class MaskRefiner(Protocol):
    """Turns a mask's visible projected pixels in one view into its 2D region in the colour image.

    Called once per frame with all masks that chose that frame, so a model (SAM,
    :class:`scenegrep.indexer.features.sam.SamRefiner`) can embed the image once and prompt it for every mask.
    """

    #: recorded in the catalog as the 2D mask method.
    name: str

    def refine(self, image: np.ndarray, pixels: Sequence[np.ndarray], pixel_size: tuple[int, int], *,
               frame_id: int = 0, mask_ids: Sequence[int] | None = None) -> list[Box | None]:
        """Level-0 boxes in colour-image coordinates.

        Args:
            image: (H, W, 3) uint8 colour image of the frame.
            pixels: per mask, (P, 2) (u, v) visible pixels on the depth grid of size ``pixel_size``.
            pixel_size: (width, height) of the grid ``pixels`` live on (the depth image).
            frame_id: the frame's id, and
            mask_ids: per input, the mask's index in its MaskSet: a randomised refiner seeds from these
                so its result for a (frame, mask) never depends on which other masks share the call.

        Returns:
            One box per input (x2/y2 exclusive, inside the colour image), or None when the refiner finds
            no region (the view is then skipped for that mask).
        """
        ...


class ProjectedPointsRefiner:
    """Default, no-model refiner: the 2D mask is the visible projected pixels themselves, so the box is
    their bounding box (OpenMask3D with SAM replaced by its own prompt pixels), mapped to colour
    resolution with :func:`scale_box`."""

    name = "projected-points-box"

    def identity(self) -> dict[str, str]:
        """What the catalog records as the 2D mask method."""
        return {"method": self.name}

    def refine(self, image: np.ndarray, pixels: Sequence[np.ndarray], pixel_size: tuple[int, int], *,
               frame_id: int = 0, mask_ids: Sequence[int] | None = None) -> list[Box | None]:
        color_size = (int(image.shape[1]), int(image.shape[0]))
        out: list[Box | None] = []
        for uv in pixels:
            if uv is None or len(uv) == 0:
                out.append(None)
                continue
            out.append(scale_box(box_from_pixels(uv), pixel_size, color_size))
        return out
