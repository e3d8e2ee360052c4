"""The voxel grid of a synthetic chest CT: shape, spacing and origin, varied like the paper's data.

The paper's 666 scans (Section IV-A) are 512 x (512~666) pixels per slice with 23~732 slices, an
in-plane spacing of 0.586~0.984 mm and 0.399~10 mm between slices. :func:`sample_grid` draws a grid
from that range when the caller gives neither shape nor spacing, and otherwise fits the missing one
to a chest: a caller asking for ``shape=(24, 128, 128)`` gets a coarse grid that still holds the
whole thorax, which keeps tests fast.

Geometry is LPS with an identity direction (axial slices): x towards the patient's left, y towards
posterior, z towards the head; index (0, 0, 0) is the right-anterior-inferior corner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IN_PLANE_SPACING_MM = (0.586, 0.984)
SLICE_SPACING_MM = (0.399, 10.0)
SLICE_COUNT = (23, 732)
COLUMNS = 512
ROWS = (512, 666)

# Slice spacings scanners commonly reconstruct, with rough frequencies; the ends are the paper's.
_COMMON_SLICE_SPACINGS = (
    (0.4, 0.04),
    (0.625, 0.14),
    (0.8, 0.06),
    (1.0, 0.20),
    (1.25, 0.10),
    (1.5, 0.05),
    (2.0, 0.07),
    (3.0, 0.05),
    (5.0, 0.18),
    (7.5, 0.03),
    (10.0, 0.08),
)

# Craniocaudal coverage of a chest CT, and the in-plane field of view a coarse grid is fitted to.
_COVERAGE_MM = (265.0, 350.0)
_FIT_FOV_MM = (360.0, 430.0)
MAX_FITTED_SPACING_MM = 50.0  # the engine's limit on a plausible CT spacing


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid: ``shape`` (z, y, x), ``spacing`` and ``origin`` (x, y, z) in mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, name: str) -> np.ndarray:
        """Patient coordinates (mm, float64) of the voxel centres along axis ``x``, ``y`` or ``z``."""
        i = "xyz".index(name)
        n = self.shape[2 - i]
        return self.origin[i] + self.spacing[i] * np.arange(n, dtype=np.float64)

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Distance (x, y, z) in mm between the first and last voxel centres."""
        return tuple(s * (n - 1) for s, n in zip(self.spacing, self.shape[::-1]))  # type: ignore

    @property
    def centre(self) -> tuple[float, float, float]:
        return tuple(o + e / 2 for o, e in zip(self.origin, self.extent_mm))  # type: ignore

    def coarsened(self, step_mm: float) -> "Grid":
        """A grid over the same extent with about ``step_mm`` between voxels (at least 2 per axis)."""
        counts = [max(2, int(math.ceil(e / step_mm)) + 1) for e in self.extent_mm]
        spacing = [e / (n - 1) if e > 0 else step_mm for e, n in zip(self.extent_mm, counts)]
        return Grid(
            shape=(counts[2], counts[1], counts[0]),
            spacing=tuple(spacing),  # type: ignore[arg-type]
            origin=self.origin,
        )


def _check_shape(shape) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"shape must be 3 positive integers (z, y, x), got {shape!r}")
    if shape[0] < 2 or min(shape[1:]) < 16:
        raise ValueError(f"shape {tuple(shape)!r} is too small: at least 2 slices, 16 rows and columns")
    return tuple(int(n) for n in shape)  # type: ignore[return-value]


def _check_spacing(spacing) -> tuple[float, float, float]:
    if len(spacing) != 3 or not all(np.isfinite(s) and 0 < s <= 50 for s in spacing):
        raise ValueError(f"spacing must be 3 values (x, y, z) in (0, 50] mm, got {spacing!r}")
    return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def sample_slice_spacing(rng: np.random.Generator) -> float:
    values, weights = zip(*_COMMON_SLICE_SPACINGS)
    p = np.asarray(weights) / np.sum(weights)
    return float(values[rng.choice(len(values), p=p)])


def sample_grid(rng: np.random.Generator, shape=None, spacing=None) -> Grid:
    """A grid for one case; ``shape`` (z, y, x) and ``spacing`` (x, y, z) are kept when given."""
    coverage = rng.uniform(*_COVERAGE_MM)
    given_spacing = spacing is not None
    if shape is not None:
        shape = _check_shape(shape)
    if spacing is not None:
        spacing = _check_spacing(spacing)
    if shape is None and spacing is None:
        in_plane = round(float(rng.uniform(*IN_PLANE_SPACING_MM)), 3)
        dz = sample_slice_spacing(rng)
        rows = COLUMNS if rng.random() < 0.8 else int(rng.integers(ROWS[0] + 1, ROWS[1] + 1))
        slices = int(np.clip(round(coverage / dz), *SLICE_COUNT))
        shape = (slices, rows, COLUMNS)
        spacing = (in_plane, in_plane, dz)
    elif spacing is None:
        nz, ny, nx = shape
        in_plane = float(rng.uniform(*_FIT_FOV_MM)) / nx
        spacing = (in_plane, in_plane, coverage / nz)
    elif shape is None:
        sx, sy, sz = spacing
        fov = float(rng.uniform(*_FIT_FOV_MM))
        nx = COLUMNS if 300 <= COLUMNS * sx <= 520 else max(16, int(round(fov / sx)))
        ny = nx if 300 <= nx * sy <= 520 else max(16, int(round(fov / sy)))
        shape = (max(2, int(round(coverage / sz))), ny, nx)
    nz, ny, nx = shape
    sx, sy, sz = spacing
    if sz > MAX_FITTED_SPACING_MM:
        raise ValueError(
            f"shape {tuple(shape)!r}: {nz} slices cannot cover a chest {MAX_FITTED_SPACING_MM:g} mm or "
            f"less apart; ask for at least {int(np.ceil(_COVERAGE_MM[1] / MAX_FITTED_SPACING_MM))} slices"
        )
    # The image centre sits near the scanner's isocentre; the table position sets z.
    cx = rng.uniform(-15, 15)
    cy = rng.uniform(-15, 15)
    z0 = round(float(rng.uniform(-520, -180)), 1)
    origin = (
        round(cx - (nx - 1) * sx / 2, 3),
        round(cy - (ny - 1) * sy / 2, 3),
        z0,
    )
    if not given_spacing:  # rounded so that DICOM's decimal strings hold it exactly
        spacing = tuple(round(float(v), 5) for v in spacing)
    return Grid(shape=shape, spacing=spacing, origin=origin)  # type: ignore[arg-type]
