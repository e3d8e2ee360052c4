"""A random elastic warp of a real annotation onto the phantom's rendering grid.

Each draw scales the chest (each axis and overall), turns it a little about the long axis and
tilts it, and adds a smooth random displacement (control points 40 mm apart, a few mm each):
one annotation gives endless plausible chests. There is no mirror: the right lung stays on the
patient's right (smaller x in LPS), because laterality is what the lobe labels encode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from m2unet.phantom_geometry import Grid
from m2unet.phantoms.annotations import Annotation

_CONTROL_MM = 40.0
_SLAB = 24  # output planes warped at once


@dataclass(frozen=True)
class WarpDraw:
    """The random part of one warp (all in mm / degrees)."""

    scale: tuple[float, float, float]  # x, y, z
    rotation_deg: float  # about z (the long axis)
    tilt_deg: float  # about x (head up / down)
    displacement_mm: float  # standard deviation of the smooth displacement
    fov_mm: float  # side of the square reconstruction field
    pixel_mm: float
    plane_step_mm: float  # spacing of the rendering planes (slice thickness is applied later)
    above_mm: float  # coverage above the lung apex
    below_mm: float  # coverage below the lung base
    shift_mm: tuple[float, float]  # field centre against the chest centre (x, y)


def draw_warp(
    rng: np.random.Generator,
    *,
    pixel_mm: tuple[float, float] = (1.2, 2.0),
    plane_step_mm: float = 1.25,
    strength: float = 1.0,
) -> WarpDraw:
    """A random warp; ``strength`` 0 gives the annotation as it is (scale 1, no displacement)."""
    s = float(strength)
    overall = 1 + s * rng.uniform(-0.08, 0.08)
    scale = tuple(float(overall * (1 + s * rng.uniform(-0.07, 0.07))) for _ in range(3))
    return WarpDraw(
        scale=scale,  # type: ignore[arg-type]
        rotation_deg=float(s * rng.uniform(-6, 6)),
        tilt_deg=float(s * rng.uniform(-3, 3)),
        displacement_mm=float(s * rng.uniform(1.5, 5.0)),
        fov_mm=float(rng.uniform(340, 460)),
        pixel_mm=float(rng.uniform(*pixel_mm)),
        plane_step_mm=float(plane_step_mm),
        above_mm=float(rng.uniform(12, 45)),
        below_mm=float(rng.uniform(30, 80)),
        shift_mm=(float(rng.uniform(-15, 15)), float(rng.uniform(-10, 25))),
    )


@dataclass(frozen=True)
class WarpedAnatomy:
    """The annotation on the rendering grid: ``lobes`` uint8 and ``airway`` bool (z, y, x)."""

    grid: Grid
    lobes: np.ndarray
    airway: np.ndarray


def _rotation(rotation_deg: float, tilt_deg: float) -> np.ndarray:
    a, b = np.deg2rad(rotation_deg), np.deg2rad(tilt_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _lung_box_mm(annotation: Annotation) -> tuple[np.ndarray, np.ndarray]:
    zyx = np.argwhere(annotation.lobes > 0)
    lo_i, hi_i = zyx.min(axis=0)[::-1], zyx.max(axis=0)[::-1]
    spacing, origin = np.asarray(annotation.spacing), np.asarray(annotation.origin)
    return origin + lo_i * spacing, origin + hi_i * spacing


def warp_annotation(annotation: Annotation, draw: WarpDraw, rng: np.random.Generator) -> WarpedAnatomy:
    """``annotation`` warped by ``draw`` onto its rendering grid (labels by nearest neighbour)."""
    lo, hi = _lung_box_mm(annotation)
    centre = (lo + hi) / 2
    half = (hi - lo) / 2 * np.asarray(draw.scale)
    n_xy = max(16, int(round(draw.fov_mm / draw.pixel_mm)))
    pixel = draw.fov_mm / n_xy
    z_lo = centre[2] - half[2] - draw.below_mm
    z_hi = centre[2] + half[2] + draw.above_mm
    n_z = max(4, int(np.floor((z_hi - z_lo) / draw.plane_step_mm)) + 1)
    fov_centre = centre[:2] + np.asarray(draw.shift_mm)
    origin = (
        float(fov_centre[0] - pixel * (n_xy - 1) / 2),
        float(fov_centre[1] - pixel * (n_xy - 1) / 2),
        float(z_lo),
    )
    grid = Grid(shape=(n_z, n_xy, n_xy), spacing=(pixel, pixel, draw.plane_step_mm), origin=origin)

    # output point q -> source point  R^-1 S^-1 (q - c) + c + d(q)
    inverse = np.linalg.inv(_rotation(draw.rotation_deg, draw.tilt_deg) @ np.diag(draw.scale))
    extent = np.asarray(grid.extent_mm)
    n_ctrl = np.maximum(2, np.ceil(extent / _CONTROL_MM).astype(int) + 1)  # x, y, z
    control = rng.normal(0.0, draw.displacement_mm, size=(3, n_ctrl[2], n_ctrl[1], n_ctrl[0])).astype(np.float32)

    lobes = np.zeros(grid.shape, dtype=np.uint8)
    airway = np.zeros(grid.shape, dtype=bool)
    src_spacing, src_origin = np.asarray(annotation.spacing), np.asarray(annotation.origin)
    source = annotation.lobes | (annotation.airway.astype(np.uint8) << 7)  # lobe 1..5, airway bit 128

    # only the in-plane box that can hold lung is warped
    margin = 2 * half.max() * 0.15 + 4 * draw.displacement_mm + 10
    box_lo = np.floor((centre[:2] - half[:2] * 1.2 - margin - np.asarray(origin[:2])) / pixel).astype(int)
    box_hi = np.ceil((centre[:2] + half[:2] * 1.2 + margin - np.asarray(origin[:2])) / pixel).astype(int) + 1
    x0, y0 = np.clip(box_lo, 0, n_xy)
    x1, y1 = np.clip(box_hi, 0, n_xy)
    xs = grid.axis("x")[x0:x1]
    ys = grid.axis("y")[y0:y1]
    zs_all = grid.axis("z")
    for k0 in range(0, n_z, _SLAB):
        k1 = min(n_z, k0 + _SLAB)
        Z, Y, X = np.meshgrid(zs_all[k0:k1], ys, xs, indexing="ij")
        q = np.stack([X, Y, Z], axis=0).reshape(3, -1)
        s = inverse @ (q - centre[:, None]) + centre[:, None]
        ctrl_index = np.stack(
            [(Z.ravel() - origin[2]) / max(extent[2], 1e-6) * (n_ctrl[2] - 1),
             (Y.ravel() - origin[1]) / max(extent[1], 1e-6) * (n_ctrl[1] - 1),
             (X.ravel() - origin[0]) / max(extent[0], 1e-6) * (n_ctrl[0] - 1)]
        )
        for axis in range(3):
            s[axis] += map_coordinates(control[axis], ctrl_index, order=1, mode="nearest")
        index = (s - src_origin[:, None]) / src_spacing[:, None]
        values = map_coordinates(source, index[::-1], order=0, mode="constant", cval=0, prefilter=False)
        values = values.reshape(k1 - k0, y1 - y0, x1 - x0).astype(np.uint8)
        lobes[k0:k1, y0:y1, x0:x1] = values & 127
        airway[k0:k1, y0:y1, x0:x1] = values >= 128
    return WarpedAnatomy(grid=grid, lobes=lobes, airway=airway)
