"""Per-lobe quantification (beyond the paper): volume, opacity and the CT severity score.

Opacity: the lobe's voxels whose attenuation lies in the ground-glass / consolidation band
[-700, +100) HU. The lower bound is the upper limit of well-aerated lung, -950 to -700 HU, in
Colombi D, et al. "Well-aerated Lung on Admitting Chest CT to Predict Adverse Outcome in COVID-19
Pneumonia", Radiology 2020;296(2):E86-E96 (the same -700 HU boundary between aerated parenchyma and
ground-glass is used by Negroni D, et al., "COVID-19 CT Scan Lung Segmentation: How We Do It",
J Digit Imaging 2022;35:424-431). The upper bound is the top of the non-aerated compartment
(-100 to +100 HU) of quantitative lung CT (Gattinoni L, et al., "Lung recruitment in patients with
the acute respiratory distress syndrome", N Engl J Med 2006;354:1775-1786); denser voxels
(calcification, bone, contrast) are not opacity.

Vessel exclusion. A plain HU band also counts the pulmonary vessels and bronchial walls inside the
lobe: on their own they make a healthy lobe read some 5-19 % "opacity" (synthetic phantoms and a real
5 mm series), i.e. a severity score of 2 per lobe. Opacity quantification therefore has to leave the
vessels out; here this is done with a cheap morphological surrogate (our choice, not a published
algorithm). The in-band voxels of the lung (all lobes together, so a patch that crosses a fissure
stays whole) are opened, slice by slice, by an in-plane disc of radius ``VESSEL_RADIUS_MM`` (3 mm;
an ellipse whose semi-axes are that radius in x and y pixels, rounded to whole pixels). An opening
keeps every voxel covered by a disc that fits entirely inside the band mask, so a structure narrower
than the disc's 6 mm diameter in-plane (peripheral vessels, bronchial walls, fissures,
partial-volume rims) disappears, while ground-glass and consolidation patches, which are much
wider, are kept (only their jagged borders are smoothed). The opening is 2D per slice because
clinical slices are often 1-5 mm thick, so a ball in mm would span only one to three slices; a
vessel running in-plane is still thin across its length in-plane and is removed. Known limits:
central vessels wider than 6 mm near the hila are still counted, and a lesion narrower than about
6 mm in-plane (a small nodule, a thin linear opacity) is not. ``quantify(..., vessel_radius_mm=0)``
gives the plain HU band.

CT severity score after Pan F, et al., "Time Course of Lung Changes at Chest CT during Recovery from
Coronavirus Disease 2019 (COVID-19)", Radiology 2020;295(3):715-721: per lobe 0 none, 1 < 5 %,
2 5-25 %, 3 26-49 %, 4 50-75 %, 5 > 75 % involvement; total 0-25 over the five lobes. On a continuous
percentage the bins are read as: 0 for none, 1 for (0, 5), 2 for [5, 25], 3 for (25, 50), 4 for
[50, 75], 5 for (75, 100].

What "none" means for a measurement. What the vessel opening leaves of a lobe without pneumonia is
not zero: central vessels, partial volume at the pleura and thick slices leave a little in the band.
Every lobe of the real 5 mm series (a patient without pneumonia) measured 0.07-0.83 %, and lobes of
held-out phantoms without findings 0.18-3.75 % (median 1.05 %), while phantom lobes with findings
under 5 % measured 0.51-4.68 % (median 2.49 %). Read literally, every healthy lobe would score 1
and a normal chest 5 of 25. The node therefore reads a measured involvement below
``NO_INVOLVEMENT_BELOW_PERCENT`` (1 %) as none (score 0), the measurement's noise floor (our
choice: on those 24 phantoms it scores 48 % of healthy lobes 0 instead of none, and 10 % of lobes
with minimal findings 0 instead of 1). ``severity_score(p, none_below=0)`` is Pan's scale read
literally, which is how the phantoms score the lesions they draw (:mod:`m2unet.phantom_severity`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from m2unet.labels import Lobe
from m2unet.volume import Volume


VESSEL_RADIUS_MM = 3.0  # in-plane radius of the opening that removes vessels (see the module docstring)
NO_INVOLVEMENT_BELOW_PERCENT = 1.0  # a measured involvement below this reads as none (the module docstring)


@dataclass(frozen=True)
class OpacityBand:
    """Attenuation band ``[low_hu, high_hu)`` counted as opacity."""

    low_hu: float = -700.0
    high_hu: float = 100.0

    def __post_init__(self) -> None:
        if not self.low_hu < self.high_hu:
            raise ValueError(f"opacity band low_hu ({self.low_hu}) must be below high_hu ({self.high_hu})")


def severity_score(opacity_percent: float, none_below: float = NO_INVOLVEMENT_BELOW_PERCENT) -> int:
    """Pan et al. 2020 lobe score (0-5) of an involvement percentage; below ``none_below`` percent
    it reads as none (0; ``none_below=0``: only exactly 0 % is none)."""
    p = float(opacity_percent)
    if not np.isfinite(p) or p < 0 or p > 100 + 1e-9:
        raise ValueError(f"opacity_percent must lie in [0, 100], got {opacity_percent!r}")
    if not 0 <= none_below < 5:
        raise ValueError(f"none_below must lie in [0, 5) percent, got {none_below!r}")
    if p == 0 or p < none_below:
        return 0
    if p < 5:
        return 1
    if p <= 25:
        return 2
    if p < 50:
        return 3
    if p <= 75:
        return 4
    return 5


@dataclass(frozen=True)
class LobeMeasurement:
    volume_ml: float
    opacity_ml: float
    opacity_percent: float
    severity_score: int

    def to_dict(self) -> dict:
        return {
            "volume_ml": self.volume_ml,
            "opacity_ml": self.opacity_ml,
            "opacity_percent": self.opacity_percent,
            "severity_score": self.severity_score,
        }


@dataclass(frozen=True)
class Quantification:
    """Per-lobe measurements (every :class:`Lobe`, absent ones with zero volume) and the total
    severity score 0-25."""

    lobes: dict[Lobe, LobeMeasurement]
    total_score: int
    opacity_band: OpacityBand = OpacityBand()

    @property
    def lung_volume_ml(self) -> float:
        return sum(m.volume_ml for m in self.lobes.values())

    @property
    def opacity_ml(self) -> float:
        return sum(m.opacity_ml for m in self.lobes.values())

    @property
    def opacity_percent(self) -> float:
        volume = self.lung_volume_ml
        return 100.0 * self.opacity_ml / volume if volume > 0 else 0.0

    def to_dict(self) -> dict:
        """JSON-ready: lobes keyed by ``Lobe`` name in lower case (``right_upper``, ...)."""
        return {
            "lobes": {
                lobe.name.lower(): {"label": int(lobe), "name": lobe.display_name, **m.to_dict()}
                for lobe, m in self.lobes.items()
            },
            "total_score": self.total_score,
            "lung_volume_ml": self.lung_volume_ml,
            "opacity_ml": self.opacity_ml,
            "opacity_percent": self.opacity_percent,
            "opacity_band_hu": [self.opacity_band.low_hu, self.opacity_band.high_hu],
        }


def _disc(radius_mm: float, spacing) -> np.ndarray:
    """In-plane footprint (1, ny, nx) of a disc of ``radius_mm`` on pixels of ``spacing`` (x, y, z):
    an ellipse whose semi-axes are ``radius_mm`` rounded to whole pixels (within half a pixel of the
    size in mm); a single voxel, i.e. no opening, when the pixels are coarser than twice the radius."""
    rx, ry = round(radius_mm / float(spacing[0])), round(radius_mm / float(spacing[1]))
    if rx < 1 and ry < 1:
        return np.ones((1, 1, 1), dtype=bool)
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return ((x / max(rx, 1e-6)) ** 2 + (y / max(ry, 1e-6)) ** 2 <= 1.0)[None]


def _opacity_mask(hu: np.ndarray, lung: np.ndarray, band: OpacityBand, footprint: np.ndarray) -> np.ndarray:
    """The in-band voxels of ``lung`` less the structures thinner than ``footprint`` in-plane."""
    in_band = (hu >= band.low_hu) & (hu < band.high_hu)
    in_band &= lung
    if footprint.size > 1 and in_band.any():
        # per-slice opening (the footprint is 1 voxel along z); outside the array counts as 0
        in_band = ndimage.binary_opening(in_band, structure=footprint)
    return in_band


def quantify(
    volume: Volume,
    lobe_map: np.ndarray,
    band: OpacityBand | None = None,
    vessel_radius_mm: float = VESSEL_RADIUS_MM,
) -> Quantification:
    """Measure every lobe of ``lobe_map`` (labels :class:`Lobe`, 0 background) on ``volume``.

    Opacity is the lobe's voxels in ``band`` that remain after the in-plane opening of radius
    ``vessel_radius_mm`` that removes vessels (module docstring); 0 disables the vessel exclusion.
    """
    band = band or OpacityBand()
    if not (np.isfinite(vessel_radius_mm) and vessel_radius_mm >= 0):
        raise ValueError(f"vessel_radius_mm must be finite and >= 0, got {vessel_radius_mm!r}")
    lobe_map = np.asarray(lobe_map)
    if lobe_map.shape != volume.shape:
        raise ValueError(f"lobe_map shape {lobe_map.shape} differs from the volume's {volume.shape}")
    if not np.issubdtype(lobe_map.dtype, np.integer):
        raise ValueError(f"lobe_map must hold integer labels, got dtype {lobe_map.dtype}")
    num_labels = max(Lobe) + 1
    voxels = np.zeros(num_labels, dtype=np.int64)
    opacity = np.zeros(num_labels, dtype=np.int64)
    if lobe_map.size and (int(lobe_map.min()) < 0 or int(lobe_map.max()) >= num_labels):
        raise ValueError(f"lobe_map holds labels outside 0..{num_labels - 1}")
    footprint = _disc(vessel_radius_mm, volume.spacing)
    lung_all = lobe_map > 0
    if lung_all.any():
        # bounding box of the lobes; the opening is per slice, so slabs along z give the same result
        zs, ys, xs = (np.flatnonzero(lung_all.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
        box_yx = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        for z in range(zs[0], zs[-1] + 1, 32):  # slab by slab: small temporaries
            zz = slice(z, min(z + 32, zs[-1] + 1))
            box = (zz, *box_yx)
            labels = lobe_map[box]
            opaque = _opacity_mask(volume.hu[box], lung_all[box], band, footprint)
            voxels += np.bincount(labels.ravel(), minlength=num_labels)
            opacity += np.bincount(labels[opaque].ravel(), minlength=num_labels)
    voxel_ml = volume.voxel_volume_ml
    lobes = {}
    for lobe in Lobe:
        n, k = int(voxels[lobe]), int(opacity[lobe])
        percent = 100.0 * k / n if n else 0.0
        lobes[lobe] = LobeMeasurement(
            volume_ml=n * voxel_ml,
            opacity_ml=k * voxel_ml,
            opacity_percent=percent,
            severity_score=severity_score(percent),
        )
    return Quantification(lobes=lobes, total_score=sum(m.severity_score for m in lobes.values()), opacity_band=band)
