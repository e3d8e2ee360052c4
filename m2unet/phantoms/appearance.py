"""How a phantom looks: each tissue's HU, fissures, vessels, the scanner's kernel, slices and noise.

Every case draws its appearance anew (SynthSeg-style randomisation around realistic values), so a
network trained on the phantoms learns the shapes, not one look: tissue HU (with or without
intravenous contrast), the lung's density and its dependent (posterior) gradient, how visible the
fissures are (at 1 mm a thin dense line, at 5 mm often gone), the kernel (soft or sharp), the slice
thickness (thick slices average the thin planes they span: partial volume), correlated noise, and
what the scanner writes outside its reconstruction circle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from m2unet.phantoms.body import Tissue

# (low, high) HU per tissue without contrast; with contrast the blood pool and enhancing organs rise
_PLAIN_HU = {
    Tissue.AIR: (-1010, -990),
    Tissue.FAT: (-120, -80),
    Tissue.MUSCLE: (30, 60),
    Tissue.BONE: (350, 900),
    Tissue.MARROW: (120, 300),
    Tissue.MEDIASTINUM: (-70, 20),
    Tissue.BLOOD: (30, 50),
    Tissue.MYOCARDIUM: (35, 55),
    Tissue.LIVER: (45, 70),
    Tissue.SPLEEN: (40, 55),
    Tissue.STOMACH: (0, 25),
    Tissue.GAS: (-1000, -850),
    Tissue.TABLE: (-300, 150),
    Tissue.LUNG: (-900, -800),
    Tissue.AIRWAY: (-1000, -960),
    Tissue.AIRWAY_WALL: (-50, 60),
    Tissue.DISC: (60, 110),
    Tissue.CANAL: (5, 35),
}
_CONTRAST_HU = {
    Tissue.BLOOD: (150, 350),
    Tissue.MYOCARDIUM: (90, 140),
    Tissue.LIVER: (90, 130),
    Tissue.SPLEEN: (100, 140),
}
THICKNESSES_MM = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 6.0, 8.0)
_THICKNESS_P = (0.06, 0.12, 0.12, 0.06, 0.12, 0.1, 0.1, 0.16, 0.06, 0.1)
_FINE_PLANE_MM = 1.25  # thin planes thicker slices are averaged from


@dataclass(frozen=True)
class AppearanceDraw:
    tissue_hu: dict[int, float]
    contrast: bool
    lung_gradient_hu: float  # posterior minus anterior lung density
    fissure_hu: float
    fissure_visibility: float  # 0 invisible .. 1 a full-density line
    blur_px: float  # Gaussian sigma of the kernel, in pixels
    sharpen: float  # unsharp-mask amount (sharp lung / bone kernels)
    noise_sd_hu: float
    noise_correlation_px: float
    outside_fov_hu: float
    thickness_mm: float

    @property
    def planes_per_slice(self) -> int:
        return max(1, int(round(self.thickness_mm / _FINE_PLANE_MM)))

    @property
    def plane_step_mm(self) -> float:
        return self.thickness_mm / self.planes_per_slice


def draw_appearance(rng: np.random.Generator, thickness_mm: float | None = None) -> AppearanceDraw:
    contrast = bool(rng.random() < 0.45)
    table = dict(_PLAIN_HU)
    if contrast:
        table.update(_CONTRAST_HU)
    thickness = float(rng.choice(THICKNESSES_MM, p=_THICKNESS_P)) if thickness_mm is None else float(thickness_mm)
    if not 0.3 <= thickness <= 10:
        raise ValueError(f"slice thickness {thickness!r} mm is outside 0.3..10")
    return AppearanceDraw(
        tissue_hu={int(t): float(rng.uniform(*r)) for t, r in table.items()},
        contrast=contrast,
        lung_gradient_hu=float(rng.uniform(0, 90)),
        fissure_hu=float(rng.uniform(-500, -150)),
        fissure_visibility=float(rng.uniform(0, 1) ** 1.5 * max(0.0, 1.2 - thickness / 5)),
        blur_px=float(rng.uniform(0.2, 1.1)),
        sharpen=float(rng.uniform(0, 1.2) if rng.random() < 0.5 else 0.0),
        noise_sd_hu=float(rng.uniform(6, 40)),
        noise_correlation_px=float(rng.uniform(0.3, 1.5)),
        outside_fov_hu=float(rng.choice([-1024.0, -2000.0, -3024.0, -1000.0])),
        thickness_mm=thickness,
    )


def fissure_planes(lobes: np.ndarray) -> np.ndarray:
    """Voxels of one lobe next to another lobe (face neighbours): the fissures' surfaces."""
    out = np.zeros(lobes.shape, dtype=bool)
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        x, y = lobes[tuple(a)], lobes[tuple(b)]
        touch = (x > 0) & (y > 0) & (x != y)
        out[tuple(a)] |= touch
    return out


def tissue_hu(rng: np.random.Generator, tissue: np.ndarray, lobes: np.ndarray, draw: AppearanceDraw) -> np.ndarray:
    """Float32 HU of every voxel before vessels, lesions and the scanner."""
    lut = np.zeros(256, dtype=np.float32)
    for t, value in draw.tissue_hu.items():
        lut[t] = value
    hu = lut[tissue]
    # soft tissue is not flat: a faint low-frequency mottle
    mottle = gaussian_filter(rng.standard_normal(tuple(max(2, n // 8) for n in tissue.shape)).astype(np.float32), 1.0)
    mottle = np.kron(mottle, np.ones((8, 8, 8), dtype=np.float32))[: tissue.shape[0], : tissue.shape[1], : tissue.shape[2]]
    mottle = np.pad(mottle, [(0, n - m) for n, m in zip(tissue.shape, mottle.shape)], mode="edge")
    soft = (tissue != Tissue.AIR) & (tissue != Tissue.LUNG) & (tissue != Tissue.AIRWAY) & (tissue != Tissue.GAS)
    hu[soft] += 8.0 * mottle[soft] / (mottle.std() + 1e-6)
    lung = tissue == Tissue.LUNG
    rows = np.flatnonzero(lung.any(axis=(0, 2)))
    if len(rows):
        y = (np.arange(tissue.shape[1], dtype=np.float32) - rows[0]) / max(1, rows[-1] - rows[0])
        gradient = np.broadcast_to((np.clip(y, 0, 1) ** 2 * draw.lung_gradient_hu)[None, :, None], tissue.shape)
        hu[lung] += gradient[lung]
        hu[lung] += 15.0 * mottle[lung] / (mottle.std() + 1e-6)
    fissure = fissure_planes(lobes) & lung
    hu[fissure] += draw.fissure_visibility * (draw.fissure_hu - hu[fissure])
    return hu


def scanner(rng: np.random.Generator, hu: np.ndarray, draw: AppearanceDraw) -> np.ndarray:
    """Kernel, slice thickness (mean over ``planes_per_slice`` thin planes), noise and the
    reconstruction circle; int16 HU (z, y, x) with ``len(hu) // planes_per_slice`` slices."""
    m = draw.planes_per_slice
    nz = hu.shape[0] // m
    out = hu[: nz * m].reshape(nz, m, *hu.shape[1:]).mean(axis=1)
    soft = gaussian_filter(out, (0, draw.blur_px, draw.blur_px))
    if draw.sharpen > 0:
        soft += draw.sharpen * (soft - gaussian_filter(soft, (0, 1.5, 1.5)))
    noise = gaussian_filter(rng.standard_normal(soft.shape).astype(np.float32), (0, draw.noise_correlation_px, draw.noise_correlation_px))
    noise *= draw.noise_sd_hu / (noise.std() + 1e-6)
    soft += noise
    ny, nx = soft.shape[1:]
    yy, xx = np.ogrid[:ny, :nx]
    outside = (yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2 > (min(nx, ny) / 2) ** 2
    soft[:, outside] = draw.outside_fov_hu
    return np.clip(np.rint(soft), -3024, 3071).astype(np.int16)


def slice_labels(labels: np.ndarray, planes_per_slice: int) -> np.ndarray:
    """The labels of each thick slice: those of its middle thin plane."""
    m = planes_per_slice
    nz = labels.shape[0] // m
    return labels[m // 2 : nz * m : m].copy()
