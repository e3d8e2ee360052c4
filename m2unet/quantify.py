"""Per-lobe quantification (beyond the paper): volume, opacity and the CT severity score.

Opacity: the lobe's voxels whose attenuation lies in the ground-glass / consolidation band
[-700, +100) HU. The lower bound is the upper limit of well-aerated lung, -950 to -700 HU, in
Colombi D, et al. "Well-aerated Lung on Admitting Chest CT to Predict Adverse Outcome in COVID-19
Pneumonia", Radiology 2020;296(2):E86-E96 (the same -700 HU boundary between aerated parenchyma and
ground-glass is used by Negroni D, et al., "COVID-19 CT Scan Lung Segmentation: How We Do It",
J Digit Imaging 2022;35:424-431). The upper bound is the top of the non-aerated compartment
(-100 to +100 HU) of quantitative lung CT (Gattinoni L, et al., "Lung recruitment in patients with
the acute respiratory distress syndrome", N Engl J Med 2006;354:1775-1786); denser voxels
(calcification, bone, contrast) are not opacity. A plain HU band also counts the vessels and
bronchial walls inside the lobe, so a healthy lobe measures a few per cent of "opacity".

CT severity score after Pan F, et al., "Time Course of Lung Changes at Chest CT during Recovery from
Coronavirus Disease 2019 (COVID-19)", Radiology 2020;295(3):715-721: per lobe 0 none, 1 < 5 %,
2 5-25 %, 3 26-49 %, 4 50-75 %, 5 > 75 % involvement; total 0-25 over the five lobes. On a continuous
percentage the bins are read as: 0 when no voxel is in the band, 1 for (0, 5), 2 for [5, 25],
3 for (25, 50), 4 for [50, 75], 5 for (75, 100].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2unet.labels import Lobe
from m2unet.volume import Volume


@dataclass(frozen=True)
class OpacityBand:
    """Attenuation band ``[low_hu, high_hu)`` counted as opacity."""

    low_hu: float = -700.0
    high_hu: float = 100.0

    def __post_init__(self) -> None:
        if not self.low_hu < self.high_hu:
            raise ValueError(f"opacity band low_hu ({self.low_hu}) must be below high_hu ({self.high_hu})")


def severity_score(opacity_percent: float) -> int:
    """Pan et al. 2020 lobe score (0-5) of an involvement percentage."""
    p = float(opacity_percent)
    if not np.isfinite(p) or p < 0 or p > 100 + 1e-9:
        raise ValueError(f"opacity_percent must lie in [0, 100], got {opacity_percent!r}")
    if p == 0:
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


def quantify(volume: Volume, lobe_map: np.ndarray, band: OpacityBand | None = None) -> Quantification:
    """Measure every lobe of ``lobe_map`` (labels :class:`Lobe`, 0 background) on ``volume``."""
    band = band or OpacityBand()
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
    for z in range(0, lobe_map.shape[0], 32):  # slab by slab: small temporaries
        labels = lobe_map[z : z + 32]
        hu = volume.hu[z : z + 32]
        voxels += np.bincount(labels.ravel(), minlength=num_labels)
        in_band = (hu >= band.low_hu) & (hu < band.high_hu)
        opacity += np.bincount(labels[in_band].ravel(), minlength=num_labels)
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
