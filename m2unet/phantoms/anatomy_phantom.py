"""A synthetic chest CT built around a real chest's lobes (the SynthSeg recipe for M2UNet).

:func:`make_anatomy_phantom` takes one real five-lobe annotation (:mod:`.annotations`), warps it
(:mod:`.deform`), builds the body around the lungs (:mod:`.body`), grows a vessel tree from each
hilum into each lobe (:mod:`m2unet.phantom_vessels`), draws the findings (:mod:`.lesions`) and the
appearance (:mod:`.appearance`), and renders the volume in HU with its truth: the 7-class map of
:class:`m2unet.labels.SegmentationClass` (the lingula is the lower part of the left upper lobe:
the annotations have five lobes), the lesion mask, per-lobe involvement and the severity label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2unet.labels import Lobe, SegmentationClass
from m2unet.phantom_geometry import Grid
from m2unet.phantom_severity import LabelledCase
from m2unet.phantom_tubes import TubePainter
from m2unet.phantom_vessels import lobe_trees
from m2unet.phantoms.annotations import Annotation
from m2unet.phantoms.appearance import AppearanceDraw, draw_appearance, scanner, slice_labels, tissue_hu
from m2unet.phantoms.body import Tissue, build_body, draw_body
from m2unet.phantoms.deform import draw_warp, warp_annotation
from m2unet.phantoms.lesions import LesionDraw, Lesions, draw_lesions, paint_lesions
from m2unet.volume import IDENTITY_DIRECTION, Volume

LINGULA_SHARE = 0.38  # of the left upper lobe's height, from its lowest plane
_POINTS_PER_LOBE = 384
_LOBE_CLASS = {
    Lobe.RIGHT_UPPER: SegmentationClass.RIGHT_UPPER_LOBE,
    Lobe.RIGHT_MIDDLE: SegmentationClass.RIGHT_MIDDLE_LOBE,
    Lobe.RIGHT_LOWER: SegmentationClass.RIGHT_LOWER_LOBE,
    Lobe.LEFT_UPPER: SegmentationClass.LEFT_UPPER_LOBE_UPPER_DIVISION,
    Lobe.LEFT_LOWER: SegmentationClass.LEFT_LOWER_LOBE,
}


@dataclass(frozen=True)
class AnatomyPhantom(LabelledCase):
    """One case; arrays (z, y, x) on ``volume``'s grid."""

    annotation: str
    seed: int
    volume: Volume
    class_map: np.ndarray  # uint8 SegmentationClass labels
    lesion_mask: np.ndarray
    involvement_percent: dict[Lobe, float]  # on the thin planes, before slice averaging
    lobe_scores: dict[Lobe, int]
    ct_severity_score: int
    severe: bool
    lesions: LesionDraw
    appearance: AppearanceDraw



def class_map_of(lobes: np.ndarray) -> np.ndarray:
    """The 7-class map of a 5-lobe map: the lower :data:`LINGULA_SHARE` of the left upper lobe's
    height is the lingula."""
    lut = np.zeros(256, dtype=np.uint8)
    for lobe, cls in _LOBE_CLASS.items():
        lut[lobe] = cls
    out = lut[lobes]
    planes = np.flatnonzero((lobes == Lobe.LEFT_UPPER).any(axis=(1, 2)))
    if len(planes):
        cut = planes[0] + int(round(LINGULA_SHARE * (planes[-1] - planes[0] + 1)))
        low = out[:cut]
        low[low == SegmentationClass.LEFT_UPPER_LOBE_UPPER_DIVISION] = SegmentationClass.LINGULA
    return out


def _lobe_points(rng: np.random.Generator, grid: Grid, lobes: np.ndarray) -> dict[int, np.ndarray]:
    points = {}
    spacing, origin = np.asarray(grid.spacing), np.asarray(grid.origin)
    step = tuple(slice(None, None, 3) for _ in range(3))
    coarse = lobes[step]
    for lobe in Lobe:
        zyx = np.argwhere(coarse == lobe)
        if not len(zyx):
            continue
        take = rng.choice(len(zyx), size=min(_POINTS_PER_LOBE, len(zyx)), replace=False)
        xyz = (zyx[take] * 3)[:, ::-1] + rng.uniform(-1.5, 1.5, size=(len(take), 3))
        points[int(lobe)] = origin + xyz * spacing
    return points


def _hila(rng: np.random.Generator, grid: Grid, lobes: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Artery and vein roots per lobe: at each lung's medial edge, arteries higher than veins."""
    spacing, origin = np.asarray(grid.spacing), np.asarray(grid.origin)
    hila = {}
    for side, members in (("right", (1, 2, 3)), ("left", (4, 5))):
        lung = np.isin(lobes, members)
        planes = np.flatnonzero(lung.any(axis=(1, 2)))
        if not len(planes):
            continue
        k = int(planes[0] + 0.58 * (planes[-1] - planes[0]))
        zyx = np.argwhere(lung[k])
        if not len(zyx):
            continue
        x_medial = zyx[:, 1].max() if side == "right" else zyx[:, 1].min()
        inward = 1 if side == "right" else -1
        y_mid = float(np.median(zyx[:, 0]))
        z_mm = origin[2] + k * spacing[2]
        x_mm = origin[0] + (x_medial + inward * 3) * spacing[0]
        y_mm = origin[1] + y_mid * spacing[1]
        artery = np.array([x_mm, y_mm - 8 + rng.uniform(-4, 4), z_mm + 12])
        vein = np.array([x_mm + inward * 6, y_mm + 10 + rng.uniform(-4, 4), z_mm - 18])
        for label in members:
            hila[label] = (artery, vein)
    return hila


def _streams(seed: int) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, k, 0xA7]) for k in range(6)]


def make_anatomy_phantom(
    annotation: Annotation,
    seed: int,
    *,
    severity: str | None = None,
    family: str | None = None,
    thickness_mm: float | None = None,
    pixel_mm: tuple[float, float] = (1.2, 2.0),
    strength: float = 1.0,
) -> AnatomyPhantom:
    """Render case ``seed`` of ``annotation``. ``severity`` forces the label; ``family`` the lesion
    look (None: one of the training families); ``thickness_mm`` the slice thickness (None: drawn
    0.625-8 mm); ``pixel_mm`` the range of pixel sizes; ``strength`` of the elastic warp (0: none)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng_warp, rng_body, rng_lesion, rng_look, rng_vessel, rng_noise = _streams(int(seed))
    look = draw_appearance(rng_look, thickness_mm)
    warp = draw_warp(rng_warp, pixel_mm=pixel_mm, plane_step_mm=look.plane_step_mm, strength=strength)
    anatomy = warp_annotation(annotation, warp, rng_warp)
    grid, lobes = anatomy.grid, anatomy.lobes
    tissue = build_body(grid, lobes, anatomy.airway, draw_body(rng_body))
    hu = tissue_hu(rng_look, tissue, lobes, look)
    del tissue

    lesions: Lesions = paint_lesions(rng_lesion, grid, lobes, draw_lesions(rng_lesion, severity, family))
    np.copyto(hu, lesions.hu, where=lesions.mask)
    points = _lobe_points(rng_vessel, grid, lobes)
    vessels = lobe_trees(
        rng_vessel,
        points,
        _hila(rng_vessel, grid, lobes),
        total_points=sum(len(p) for p in points.values()),
        hilum_radius=float(rng_vessel.uniform(4.5, 6.5)),
        min_radius=max(0.6, 0.5 * min(grid.spacing[:2])),
        value=look.tissue_hu[Tissue.BLOOD],
    )
    TubePainter(vessels.split(12.0), grid).blend(hu, grid.axis("z"))
    if lesions.consolidation.any():  # vessels vanish inside consolidation
        np.copyto(hu, lesions.hu, where=lesions.consolidation)
    hu[anatomy.airway] = look.tissue_hu[Tissue.AIRWAY]  # the lumen stays air

    m = look.planes_per_slice
    volume_hu = scanner(rng_noise, hu, look)
    del hu
    class_map = class_map_of(slice_labels(lobes, m))
    lesion_mask = slice_labels(lesions.mask, m)
    out_grid_z = grid.origin[2] + (m - 1) / 2 * grid.spacing[2]
    volume = Volume(
        hu=volume_hu,
        spacing=(grid.spacing[0], grid.spacing[1], look.thickness_mm),
        origin=(grid.origin[0], grid.origin[1], out_grid_z),
        direction=IDENTITY_DIRECTION,
    )
    return AnatomyPhantom(
        annotation=annotation.name,
        seed=int(seed),
        volume=volume,
        class_map=class_map,
        lesion_mask=lesion_mask,
        involvement_percent=lesions.involvement_percent,
        lobe_scores=lesions.lobe_scores,
        ct_severity_score=lesions.ct_severity_score,
        severe=lesions.severe,
        lesions=lesions.draw,
        appearance=look,
    )
