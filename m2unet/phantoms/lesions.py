"""COVID-19-like findings inside real lobes, in six looks, with exact truth per lobe.

How much of each lobe is involved comes from :func:`m2unet.phantom_lesions.sample_design` (the
percentages are drawn so that the severity rule of :mod:`m2unet.phantom_severity` gives the label
asked for). Where and how the opacities look is a *family* and a *distribution*:

- families (:data:`FAMILIES`): ``ground_glass`` (hazy, little consolidation), ``consolidation``
  (mostly solid), ``mixed``, ``nodular`` (round foci with a halo), ``band`` (curvilinear subpleural
  bands), and ``crazy_paving`` (ground glass with thickened septal lines). ``crazy_paving`` is the
  :data:`HELD_OUT_FAMILY`: training never draws it, so the classifier can be judged on a look it
  never saw.
- distributions: ``peripheral`` (close to the pleura), ``posterior_basal`` (the dependent lung and
  the bases) and ``diffuse``.

A lesion field is drawn on a coarse grid over the lungs (a few mm), brought to the rendering grid,
and each lobe's lesion is the part of the lobe where the field exceeds the lobe's quantile for the
designed percentage, so the truth (:attr:`Lesions.involvement_percent`) is the design to within
ties. Attenuation: ground glass from about -750 HU at its margin to -300 HU, consolidation -100 to
+50 HU, septal lines of crazy paving +150 to +250 HU above the glass around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, zoom

from m2unet.labels import Lobe
from m2unet.phantom_geometry import Grid
from m2unet.phantom_lesions import sample_design
from m2unet.phantom_severity import is_severe, lobe_severity_score

FAMILIES = ("ground_glass", "consolidation", "mixed", "nodular", "band", "crazy_paving")
HELD_OUT_FAMILY = "crazy_paving"
TRAINING_FAMILIES = tuple(f for f in FAMILIES if f != HELD_OUT_FAMILY)
DISTRIBUTIONS = ("peripheral", "posterior_basal", "diffuse")
GROUND_GLASS_HU = (-750.0, -300.0)
CONSOLIDATION_HU = (-100.0, 50.0)
_COARSE_MM = 2.5

# share of the lesion volume that is consolidation, per family
_CONSOLIDATION_SHARE = {
    "ground_glass": (0.0, 0.06),
    "consolidation": (0.5, 0.9),
    "mixed": (0.15, 0.45),
    "nodular": (0.2, 0.6),
    "band": (0.3, 0.8),
    "crazy_paving": (0.0, 0.08),
}


@dataclass(frozen=True)
class LesionDraw:
    """What one case's findings are: family, distribution, per-lobe percentages, look."""

    family: str
    distribution: str
    percent: dict[Lobe, float]
    blob_mm: float  # size of the opacities (Gaussian sigma of the field)
    prior_weight: float
    peripheral_mm: float
    consolidation_share: float
    ground_glass_hu: tuple[float, float]  # (margin, core)
    consolidation_hu: float
    septal_hu: float  # crazy paving: how much denser the septal lines are


def draw_lesions(rng: np.random.Generator, severity: str | None = None, family: str | None = None) -> LesionDraw:
    """A random draw; ``family`` None picks one of the :data:`TRAINING_FAMILIES`."""
    if family is None:
        family = str(rng.choice(TRAINING_FAMILIES))
    if family not in FAMILIES:
        raise ValueError(f"lesion family {family!r} is not one of {', '.join(FAMILIES)}")
    design = sample_design(rng, severity)
    blob = {"nodular": rng.uniform(3, 7), "band": rng.uniform(10, 20)}.get(family, rng.uniform(6, 16))
    return LesionDraw(
        family=family,
        distribution=str(rng.choice(DISTRIBUTIONS, p=(0.45, 0.35, 0.2))),
        percent=dict(design.percent),
        blob_mm=float(blob),
        prior_weight=float(rng.uniform(0.6, 1.8)),
        peripheral_mm=float(rng.uniform(8, 25)),
        consolidation_share=float(rng.uniform(*_CONSOLIDATION_SHARE[family])),
        ground_glass_hu=(float(rng.uniform(-750, -650)), float(rng.uniform(-560, -300))),
        consolidation_hu=float(rng.uniform(*CONSOLIDATION_HU)),
        septal_hu=float(rng.uniform(150, 250)),
    )


@dataclass(frozen=True)
class Lesions:
    """The findings on the rendering grid: ``mask`` (any lesion), ``consolidation`` (a subset),
    ``hu`` (float32, valid inside ``mask``), and the truth per lobe."""

    draw: LesionDraw
    mask: np.ndarray
    consolidation: np.ndarray
    hu: np.ndarray
    involvement_percent: dict[Lobe, float]

    @property
    def lobe_scores(self) -> dict[Lobe, int]:
        return {lobe: lobe_severity_score(p) for lobe, p in self.involvement_percent.items()}

    @property
    def ct_severity_score(self) -> int:
        return int(sum(self.lobe_scores.values()))

    @property
    def severe(self) -> bool:
        return is_severe(self.ct_severity_score)


def _standard(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / (a.std() + 1e-6)


def _coarse_field(rng: np.random.Generator, lung: np.ndarray, step: np.ndarray, draw: LesionDraw) -> np.ndarray:
    """The family's field plus the distribution's prior on the coarse lung box."""
    sigma = draw.blob_mm / step
    if draw.family == "nodular":
        seeds = (rng.random(lung.shape) < 0.004).astype(np.float32)
        field = _standard(gaussian_filter(seeds, sigma)) + 0.3 * _standard(gaussian_filter(rng.standard_normal(lung.shape), 12 / step))
    else:
        field = _standard(gaussian_filter(rng.standard_normal(lung.shape).astype(np.float32), sigma))
    depth = distance_transform_edt(lung, sampling=step[::-1])  # mm from the pleura, z-y-x
    if draw.family == "band":
        d0, width = rng.uniform(3, 10), rng.uniform(2, 4)
        field = 0.6 * field + 2.0 * np.exp(-(((depth - d0) / width) ** 2))
    nz, ny, _ = lung.shape
    if draw.distribution == "peripheral":
        prior = np.exp(-depth / draw.peripheral_mm)
    elif draw.distribution == "posterior_basal":
        y = np.linspace(0, 1, ny)[None, :, None]  # posterior is larger y
        z = np.linspace(1, 0, nz)[:, None, None]  # base is smaller z
        prior = 0.6 * y + 0.4 * z
    else:
        prior = np.zeros(lung.shape)
    return (field + draw.prior_weight * 2.0 * _standard(prior)).astype(np.float32)


def _to_fine(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation of the coarse field onto ``shape`` (cropped or edge-padded to fit)."""
    fine = zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1, mode="nearest", grid_mode=True)
    fine = fine[tuple(slice(0, n) for n in shape)]
    pad = [(0, n - f) for n, f in zip(shape, fine.shape)]
    return np.pad(fine, pad, mode="edge").astype(np.float32, copy=False)


def _lung_box(lobes: np.ndarray) -> tuple[slice, slice, slice]:
    zyx = np.argwhere(lobes > 0)
    lo, hi = zyx.min(axis=0), zyx.max(axis=0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def paint_lesions(rng: np.random.Generator, grid: Grid, lobes: np.ndarray, draw: LesionDraw) -> Lesions:
    """The findings of ``draw`` inside ``lobes`` (uint8 :class:`Lobe` labels on ``grid``)."""
    mask = np.zeros(lobes.shape, dtype=bool)
    consolidation = np.zeros(lobes.shape, dtype=bool)
    hu = np.zeros(lobes.shape, dtype=np.float32)
    involvement = {lobe: 0.0 for lobe in Lobe}
    if not any(p > 0 for p in draw.percent.values()) or not (lobes > 0).any():
        return Lesions(draw, mask, consolidation, hu, involvement)
    box = _lung_box(lobes)
    sub = lobes[box]
    spacing = np.asarray(grid.spacing, dtype=float)  # x, y, z
    stride = np.maximum(1, np.round(_COARSE_MM / spacing[::-1])).astype(int)  # z, y, x
    coarse_lung = sub[:: stride[0], :: stride[1], :: stride[2]] > 0
    field = _to_fine(_coarse_field(rng, coarse_lung, spacing * stride[::-1], draw), sub.shape)
    sub_mask = np.zeros(sub.shape, dtype=bool)
    sub_cons = np.zeros(sub.shape, dtype=bool)
    strength = np.zeros(sub.shape, dtype=np.float32)
    for lobe in Lobe:
        inside = sub == lobe
        n = int(inside.sum())
        p = float(draw.percent.get(lobe, 0.0))
        if n == 0 or p <= 0:
            continue
        values = field[inside]
        k = int(round(n * p / 100.0))
        if k == 0:
            continue
        order = np.argpartition(values, n - k)
        chosen = np.zeros(n, dtype=bool)
        chosen[order[n - k :]] = True
        top = values[chosen]
        lo, hi = float(top.min()), float(top.max())
        t = np.zeros(n, dtype=np.float32)
        t[chosen] = (top - lo) / max(hi - lo, 1e-6)
        c = int(round(k * draw.consolidation_share))
        cons = np.zeros(n, dtype=bool)
        if c > 0:
            cons[order[n - c :]] = True
        sub_mask[inside] = chosen
        sub_cons[inside] = cons
        strength[inside] = t
        involvement[lobe] = 100.0 * k / n
    margin, core = draw.ground_glass_hu
    sub_hu = margin + (core - margin) * np.sqrt(strength)
    if draw.family == "crazy_paving":
        reticule = gaussian_filter(rng.standard_normal(sub.shape).astype(np.float32), 2.5 / spacing[::-1])
        lines = np.abs(reticule) < 0.12 * reticule.std()
        sub_hu = np.where(lines, sub_hu + draw.septal_hu, sub_hu)
    texture = gaussian_filter(rng.standard_normal(sub.shape).astype(np.float32), 1.0) * 25.0
    sub_hu = np.where(sub_cons, draw.consolidation_hu + texture, sub_hu + texture)
    mask[box] = sub_mask
    consolidation[box] = sub_cons
    hu[box] = np.where(sub_mask, sub_hu, 0).astype(np.float32)
    return Lesions(draw, mask, consolidation, hu, involvement)
