"""A plain Hounsfield-unit lung mask.

Used by the predictor to plan where the decoder runs (crop to the lungs, skip slices without lung)
and to check the lobes' union on a real series. The lobes themselves are not cut to it: a threshold
loses consolidated lung (:mod:`m2unet.postprocess`). No learning involved:

1. air: voxels below ``threshold_hu`` (-400 HU: aerated lung is about -850 HU, soft tissue above
   -100 HU);
2. outside air: per slice, air connected to the image border (the room, the air under the table)
   is removed; what remains is air enclosed by the body;
3. airways: per slice, a small enclosed air region (area below ``airway_max_area_mm2``) whose centre
   lies near the body's left-right midline (within ``airway_midline_fraction`` of the body width)
   is the trachea, a main bronchus or the oesophagus, and is removed; the bronchi inside the lung
   stay (they are lung for the lobes);
4. components: the largest 3D component is kept, and the second when it holds at least
   ``second_lung_fraction`` of the first (the two lungs, when they do not touch); bowel gas and
   other air pockets are dropped;
5. fill: per slice, a closing of radius ``closing_mm`` (on a grid coarsened 2x in-plane; it only
   adds voxels) and the filling of holes up to ``max_hole_mm2`` (15 cm2; the heart and the
   mediastinum, when the lungs close a ring around them, are larger) take in vessels, nodules and
   opacities enclosed by or bordering aerated lung, each side of the body's midline apart; a consolidation wider than about twice ``closing_mm`` along the pleura stays
   partly outside (post-processing may allow a margin around the mask for that reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from m2unet.preprocessing import PreprocessingConfig, body_box
from m2unet.volume import Volume

SLICE_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
SLICE_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within a slice only
BODY_THRESHOLD_HU = -500.0  # as the body crop of preprocessing
SLAB = 32  # slices processed together in the per-slice steps (bounds the memory of labels)


def label(mask: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label`` into uint16 when the components fit (half the memory of int32)."""
    try:
        out = np.empty(mask.shape, dtype=np.uint16)
        count = ndimage.label(mask, structure=structure, output=out)
        return out, int(count)
    except RuntimeError:  # more components than uint16 holds
        labels, count = ndimage.label(mask, structure=structure)
        return labels, int(count)


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label ``0..count``, counted slab by slab (``np.bincount`` would first widen the
    whole array to int64)."""
    sizes = np.zeros(count + 1, dtype=np.int64)
    for start in range(0, labels.shape[0], SLAB):
        sizes += np.bincount(labels[start : start + SLAB].ravel(), minlength=count + 1)
    return sizes


@dataclass(frozen=True)
class LungMaskConfig:
    threshold_hu: float = -400.0
    airway_max_area_mm2: float = 700.0
    airway_midline_fraction: float = 0.12
    closing_mm: float = 10.0
    max_hole_mm2: float = 1500.0
    second_lung_fraction: float = 0.15


def _enclosed_air(
    hu: np.ndarray, spacing_xy: tuple[float, float], midline: float, body_width: float, config: LungMaskConfig
) -> np.ndarray:
    """Steps 1-3 for a slab of slices: air enclosed by the body, airways removed."""
    air = hu < config.threshold_hu
    labels, count = label(air, SLICE_STRUCTURE)
    if count == 0:
        return air
    drop = np.zeros(count + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        drop[np.unique(edge)] = True
    area = np.bincount(labels.ravel(), minlength=count + 1)
    sx, sy = spacing_xy
    small = np.flatnonzero((area * sx * sy < config.airway_max_area_mm2) & ~drop)
    small = small[small > 0]
    if small.size:
        # the centre of a small region: the middle of its bounding box is close enough
        boxes = ndimage.find_objects(labels)
        cx = np.array([(boxes[i - 1][2].start + boxes[i - 1][2].stop - 1) / 2.0 for i in small])
        central = np.abs(cx - midline) < config.airway_midline_fraction * body_width
        drop[small[central]] = True
    drop[0] = True
    return ~drop[labels]


def _close_and_fill(
    mask: np.ndarray, spacing_xy: tuple[float, float], closing_mm: float, max_hole_mm2: float
) -> np.ndarray:
    if closing_mm > 0 and mask.any():
        sx, sy = spacing_xy
        # pad with background so that the erosion also acts at the array's edges
        pad = int(np.ceil(closing_mm / (2 * min(sx, sy)))) + 1
        coarse = np.pad(mask[:, ::2, ::2], ((0, 0), (pad, pad), (pad, pad)))
        sampling = (1e6, 2 * sy, 2 * sx)  # a huge z spacing keeps each slice on its own
        dilated = ndimage.distance_transform_edt(~coarse, sampling=sampling) <= closing_mm
        closed = ndimage.distance_transform_edt(dilated, sampling=sampling) > closing_mm
        closed = closed[:, pad:-pad, pad:-pad]
        up = np.repeat(np.repeat(closed, 2, axis=1), 2, axis=2)[:, : mask.shape[1], : mask.shape[2]]
        mask = mask | up
    holes = ndimage.binary_fill_holes(mask, structure=SLICE_STRUCTURE) & ~mask
    labels, count = label(holes, SLICE_STRUCTURE)
    if count:
        area_mm2 = np.bincount(labels.ravel()) * spacing_xy[0] * spacing_xy[1]
        fill = area_mm2 <= max_hole_mm2
        fill[0] = False
        mask = mask | fill[labels]
    return mask


def _fill(mask: np.ndarray, spacing_xy: tuple[float, float], midline: float, config: LungMaskConfig) -> np.ndarray:
    """Step 5 for a slab: per-slice closing on a 2x coarser grid (adds only) and hole filling, for
    each side of the body's midline apart (so that the mediastinum between the lungs, closed into
    a ring, is never filled)."""
    out = np.zeros_like(mask)
    midline = min(max(int(round(midline)), 0), mask.shape[2])
    for side in (slice(0, midline), slice(midline, mask.shape[2])):
        if side.stop > side.start:
            out[:, :, side] = _close_and_fill(mask[:, :, side], spacing_xy, config.closing_mm, config.max_hole_mm2)
    return out


def lung_mask(volume: Volume, config: LungMaskConfig | None = None) -> np.ndarray:
    """Boolean lung mask (z, y, x) of ``volume``."""
    config = config or LungMaskConfig()
    hu = volume.hu
    spacing_xy = (float(volume.spacing[0]), float(volume.spacing[1]))
    mask = np.zeros(hu.shape, dtype=bool)
    # work inside the body box (grown by 2 pixels so that outside air reaches the crop's border)
    body = body_box(hu, PreprocessingConfig(body_threshold_hu=BODY_THRESHOLD_HU, min_body_size=1))
    y0, y1 = max(body.y0 - 2, 0), min(body.y1 + 2, hu.shape[1])
    x0, x1 = max(body.x0 - 2, 0), min(body.x1 + 2, hu.shape[2])
    midline, width = (body.x0 + body.x1) / 2.0 - x0, float(body.x1 - body.x0)
    body_mid = (body.x0 + body.x1) / 2.0
    for start in range(0, hu.shape[0], SLAB):
        stop = min(start + SLAB, hu.shape[0])
        mask[start:stop, y0:y1, x0:x1] = _enclosed_air(hu[start:stop, y0:y1, x0:x1], spacing_xy, midline, width, config)
    if not mask.any():
        return mask
    # step 5, then step 4 inside the bounding box of the candidates (the closing must not bridge the
    # lungs and bowel gas across the diaphragm, so components are chosen first)
    box = bounding_box(mask)
    sub = mask[box]
    labels, count = label(sub)
    if count > 1:
        sizes = component_sizes(labels, count)
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        keep = np.zeros(count + 1, dtype=bool)
        keep[order[0]] = True
        if sizes[order[1]] >= config.second_lung_fraction * sizes[order[0]]:
            keep[order[1]] = True
        sub = keep[labels]
    del labels
    for start in range(0, sub.shape[0], SLAB):
        sub[start : start + SLAB] = _fill(sub[start : start + SLAB], spacing_xy, body_mid - box[2].start, config)
    mask[box] = sub
    return mask


def lung_slices(mask: np.ndarray) -> np.ndarray:
    """Indices of the slices that hold lung."""
    return np.flatnonzero(mask.any(axis=(1, 2)))


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """Bounding box (z, y, x slices) of a 3D mask grown by ``margin`` voxels (clamped), or None
    when the mask is empty."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    part = mask[zs[0] : zs[-1] + 1]
    ys = np.flatnonzero(part.any(axis=(0, 2)))
    xs = np.flatnonzero(part.any(axis=(0, 1)))
    return tuple(  # type: ignore[return-value]
        slice(max(int(lo) - margin, 0), min(int(hi) + 1 + margin, n))
        for lo, hi, n in ((zs[0], zs[-1], mask.shape[0]), (ys[0], ys[-1], mask.shape[1]), (xs[0], xs[-1], mask.shape[2]))
    )


def lung_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box (z, y, x slices) of the lung mask, or None when it is empty."""
    return bounding_box(mask)
