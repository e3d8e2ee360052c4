"""COVID-19-like findings: how much of each lobe is involved, and where the opacities lie.

A case's *design* fixes the percentage of each lobe to involve, drawn so that the label the
severity rule gives is the one asked for (or, left open, severe about one case in five). Where the
opacities go is a smooth random *field* over the chest: correlated noise (patchy, multifocal
opacities whose size is the design's blob size) plus a prior that favours the periphery (close to
the rib cage), the dependent (posterior) lung and the bases, as COVID-19 pneumonia does. A lobe's
lesion is the part of it where the field exceeds the lobe's quantile for the wanted percentage;
its highest part is consolidation, the rest ground-glass. The quantiles are taken from histograms
of the field over the full-resolution lobes (every second voxel along each axis on large grids),
so the involvement a case ends with is the designed one to within a fraction of a per cent; the
label is then scored on the rendered masks, so the rule holds exactly.

Attenuation: ground-glass from about -690 HU at its margin to -520..-400 HU next to consolidation,
consolidation -60..+35 HU, both inside the opacity band the engine measures
(:class:`m2unet.quantify.OpacityBand`, [-700, +100) HU), so the node's measurement and the
phantom's truth differ only by noise, partial volume, the smoothing of lesion edges by the
vessel-excluding opening and the wider central vessels it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from m2unet.labels import CLASS_TO_LOBE, Lobe
from m2unet.phantom_anatomy import ChestSections
from m2unet.phantom_severity import is_severe, lobe_severity_score

P_SEVERE = 0.2
LEVELS = 1 << 16  # the field is quantised to 16 bits
_BIN_EDGES = (5.0, 25.0, 50.0, 75.0)
# COVID-19 pneumonia favours the lower lobes (posterior-basal)
_LOBE_WEIGHT = {
    Lobe.RIGHT_UPPER: 0.8,
    Lobe.RIGHT_MIDDLE: 0.85,
    Lobe.RIGHT_LOWER: 1.3,
    Lobe.LEFT_UPPER: 0.8,
    Lobe.LEFT_LOWER: 1.3,
}

GROUND_GLASS_HU = (-700.0, -400.0)
CONSOLIDATION_HU = (-100.0, 50.0)


@dataclass(frozen=True)
class LesionDesign:
    """What one case's findings should be; percentages are of each lobe's volume."""

    severe: bool
    percent: dict[Lobe, float]
    consolidation_fraction: float  # of the lesion volume
    blob_mm: float  # size (Gaussian sigma) of the opacities
    prior_weight: float  # how strongly peripheral / posterior / basal
    peripheral_mm: float
    ground_glass_hu: tuple[float, float]  # (at the margin, next to consolidation)
    consolidation_hu: float

    @property
    def total_score(self) -> int:
        return sum(lobe_severity_score(p) for p in self.percent.values())


def _away_from_edges(p: float) -> float:
    """Keep a designed percentage 1.5 points away from the score's bin edges."""
    for edge in _BIN_EDGES:
        if abs(p - edge) < 1.5:
            return edge - 1.5 if p < edge else edge + 1.5
    return p


def _draw_percent(rng: np.random.Generator, severe: bool) -> dict[Lobe, float]:
    if severe:
        burden = rng.uniform(0.42, 0.85)
        spread = 0.25
        involved = {lobe: True for lobe in Lobe}
    else:
        if rng.random() < 0.12:
            return {lobe: 0.0 for lobe in Lobe}
        burden = float(np.clip(np.exp(rng.normal(np.log(0.06), 1.0)), 0.002, 0.45))
        spread = 0.55
        chance = min(1.0, 0.3 + 2.5 * burden)
        involved = {lobe: rng.random() < chance * (1.2 if _LOBE_WEIGHT[lobe] > 1 else 0.9) for lobe in Lobe}
        if not any(involved.values()):
            involved[Lobe.RIGHT_LOWER if rng.random() < 0.5 else Lobe.LEFT_LOWER] = True
    percent = {}
    for lobe in Lobe:
        if not involved[lobe]:
            percent[lobe] = 0.0
            continue
        p = 100 * burden * _LOBE_WEIGHT[lobe] * np.exp(rng.normal(0, spread))
        percent[lobe] = round(_away_from_edges(float(np.clip(p, 0.3, 97.0))), 2)
    return percent


def sample_design(rng: np.random.Generator, severity: str | None) -> LesionDesign:
    """A design whose severity rule gives ``severity`` (drawn 1 in 5 severe when None)."""
    if severity not in (None, "severe", "non-severe"):
        raise ValueError(f"severity = {severity!r} is not None, 'severe' or 'non-severe'")
    severe = bool(rng.random() < P_SEVERE) if severity is None else severity == "severe"
    for _ in range(1000):
        percent = _draw_percent(rng, severe)
        total = sum(lobe_severity_score(p) for p in percent.values())
        if is_severe(total) == severe:
            break
    else:  # pragma: no cover - the draws above make this practically unreachable
        raise RuntimeError("could not draw lesion percentages for the severity asked for")
    extent = sum(percent.values()) / 500
    return LesionDesign(
        severe=severe,
        percent=percent,
        consolidation_fraction=float(rng.uniform(0.1, 0.45) if severe else rng.uniform(0.0, 0.2)),
        blob_mm=float(rng.uniform(6, 12) + 14 * extent),
        prior_weight=float(rng.uniform(0.9, 2.0)),
        peripheral_mm=float(rng.uniform(8, 20)),
        ground_glass_hu=(
            float(rng.uniform(GROUND_GLASS_HU[0] + 10, GROUND_GLASS_HU[0] + 60)),
            float(rng.uniform(GROUND_GLASS_HU[1] - 120, GROUND_GLASS_HU[1])),
        ),
        consolidation_hu=float(rng.uniform(CONSOLIDATION_HU[0] + 40, CONSOLIDATION_HU[1] - 15)),
    )


class LesionField:
    """The design's field on a coarse grid, read out at full resolution one slab at a time."""

    def __init__(self, design: LesionDesign, coarse: ChestSections, rng: np.random.Generator):
        self.design = design
        g = coarse.grid
        a = coarse.anatomy
        sx, sy, sz = g.spacing
        noise = rng.standard_normal(g.shape, dtype=np.float32)
        sigma = [design.blob_mm / s for s in (sz, sy, sx)]
        field = gaussian_filter(noise, sigma, mode="nearest", truncate=3.0)
        field /= field.std() + 1e-6
        fine = gaussian_filter(noise, [s / 2.5 for s in sigma], mode="nearest", truncate=3.0)
        fine *= 0.4 / (fine.std() + 1e-6)
        field += fine

        # the prior: peripheral (near the rib cage), dependent (posterior) and basal
        u = (g.axis("x") - a.centre_x)[None, :]
        v = (g.axis("y") - a.centre_y)[:, None]
        e = (u / a.cage_a) ** 2 + (v / a.cage_b) ** 2
        wall_mm = np.sqrt(u**2 + v**2) * (1 / np.sqrt(np.maximum(e, 1e-6)) - 1)
        in_plane = np.exp(-np.maximum(wall_mm, 0) / design.peripheral_mm) + 0.5 * np.clip((v / a.cage_b + 1) / 2, 0, 1)
        basal = 0.5 * np.clip(1 - coarse.t, 0, 1)
        w = np.float32(design.prior_weight)
        field += (w * in_plane.astype(np.float32))[None]
        field += (w * basal.astype(np.float32))[:, None, None]
        lo, hi = float(field.min()), float(field.max())
        self.field = ((field - lo) * ((LEVELS - 1) / max(hi - lo, 1e-6))).astype(np.float32)
        self.coarse_grid = g

    def _index(self, fine_axis: np.ndarray, axis: str):
        g = self.coarse_grid
        i = "xyz".index(axis)
        n = g.shape[2 - i]
        f = (fine_axis - g.origin[i]) / g.spacing[i]
        i0 = np.clip(np.floor(f).astype(int), 0, n - 2)
        w = np.clip(f - i0, 0.0, 1.0).astype(np.float32)
        return i0, w

    def bind(self, grid) -> None:
        """Precompute the read-out for the full-resolution ``grid``."""
        self._ix = self._index(grid.axis("x"), "x")
        self._iy = self._index(grid.axis("y"), "y")

    def read(self, z: np.ndarray, yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
        """The field (float32, 0..65535) on planes at ``z`` (mm) x rows ``yi`` x columns ``xi``
        of the full-resolution grid, trilinear from the coarse grid: three separable passes."""
        iz, wz = self._index(np.asarray(z, dtype=np.float64), "z")
        wz = wz[:, None, None]
        a = self.field[iz] * (1 - wz)
        a += self.field[iz + 1] * wz
        iy, wy = self._iy[0][yi], self._iy[1][yi][None, :, None]
        b = np.take(a, iy, axis=1)
        b *= 1 - wy
        b += np.take(a, iy + 1, axis=1) * wy
        ix, wx = self._ix[0][xi], self._ix[1][xi]
        c = np.take(b, ix, axis=2)
        c *= 1 - wx
        d = np.take(b, ix + 1, axis=2)
        d *= wx
        c += d
        return c


def histogram(class_slab: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Counts (7 classes x 65536 levels) of the field's integer levels in each class."""
    key = (class_slab.astype(np.int32) << 16) | field.astype(np.uint16)
    return np.bincount(key.ravel(), minlength=7 * LEVELS).reshape(7, LEVELS)


def thresholds(design: LesionDesign, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class field values from which a voxel is lesion, and consolidation (float32 [7]).

    A voxel whose field has integer level q is lesion when q > k, that is field >= k + 1.
    """
    lesion = np.full(7, np.inf, dtype=np.float32)
    consolidation = np.full(7, np.inf, dtype=np.float32)
    for lobe in Lobe:
        classes = np.flatnonzero(CLASS_TO_LOBE == lobe)
        h = hist[classes].sum(axis=0)
        n = int(h.sum())
        p = design.percent[lobe] / 100
        if n == 0 or p <= 0:
            continue
        above = n - np.cumsum(h)  # voxels with a level > k
        k = int(np.argmin(np.abs(above - p * n)))
        if above[k] == 0:  # keep a lobe that should be involved involved, if only just
            k = int(np.flatnonzero(above > 0)[-1]) if above[0] > 0 else k
        kc = int(np.argmin(np.abs(above - p * design.consolidation_fraction * n)))
        lesion[classes] = k + 1
        consolidation[classes] = max(kc, k) + 1
    return lesion, consolidation
