"""The tissues around real lungs: body wall, fat, ribs, sternum, spine, mediastinum with heart and
great vessels, diaphragm with liver, stomach and spleen below, and the table.

Everything is placed from the lungs themselves (their extent slice by slice, their medial edges,
their bases), so the body fits the chest it surrounds. :func:`build_body` returns the tissue
label volume (:class:`Tissue`) on the rendering grid; :mod:`m2unet.phantoms.appearance` gives each
tissue its HU.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.ndimage import binary_dilation, distance_transform_edt, maximum_filter1d, minimum_filter1d, uniform_filter1d

from m2unet.phantom_geometry import Grid


class Tissue(IntEnum):
    AIR = 0
    FAT = 1
    MUSCLE = 2
    BONE = 3
    MARROW = 4
    MEDIASTINUM = 5  # mediastinal fat and soft tissue
    BLOOD = 6  # heart chambers and great vessels
    MYOCARDIUM = 7
    LIVER = 8
    SPLEEN = 9
    STOMACH = 10  # fluid content
    GAS = 11  # bowel / stomach gas
    TABLE = 12
    LUNG = 13
    AIRWAY = 14  # lumen
    AIRWAY_WALL = 15
    DISC = 16
    CANAL = 17  # spinal canal


@dataclass(frozen=True)
class BodyDraw:
    wall_side_mm: float
    wall_front_mm: float
    wall_back_mm: float
    fat_mm: float
    rib_pitch_mm: float
    rib_height_mm: float
    rib_slope: float
    rib_phase_mm: float
    vertebra_radius_mm: float
    disc_pitch_mm: float
    heart_axes_mm: tuple[float, float, float]
    heart_shift_mm: float
    aorta_radius_mm: float
    table_gap_mm: float
    table_mm: float
    squareness: float


def draw_body(rng: np.random.Generator) -> BodyDraw:
    return BodyDraw(
        wall_side_mm=float(rng.uniform(18, 55)),
        wall_front_mm=float(rng.uniform(12, 45)),
        wall_back_mm=float(rng.uniform(35, 75)),
        fat_mm=float(rng.uniform(4, 30)),
        rib_pitch_mm=float(rng.uniform(24, 34)),
        rib_height_mm=float(rng.uniform(8, 13)),
        rib_slope=float(rng.uniform(0.2, 0.4)),
        rib_phase_mm=float(rng.uniform(0, 40)),
        vertebra_radius_mm=float(rng.uniform(14, 20)),
        disc_pitch_mm=float(rng.uniform(23, 29)),
        heart_axes_mm=(float(rng.uniform(55, 75)), float(rng.uniform(45, 60)), float(rng.uniform(45, 60))),
        heart_shift_mm=float(rng.uniform(5, 25)),
        aorta_radius_mm=float(rng.uniform(10, 15)),
        table_gap_mm=float(rng.uniform(0, 25)),
        table_mm=float(rng.uniform(6, 16)),
        squareness=float(rng.uniform(2.0, 3.0)),
    )


def _extent_per_slice(lung: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice: (has lung, first index, last index) of lung along in-plane ``axis`` (1 y, 2 x)."""
    proj = lung.any(axis=3 - axis)  # (z, n)
    has = proj.any(axis=1)
    n = proj.shape[1]
    first = np.where(has, proj.argmax(axis=1), 0)
    last = np.where(has, n - 1 - proj[:, ::-1].argmax(axis=1), n - 1)
    return has, first.astype(float), last.astype(float)


def _fill_slices(values: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Slices without lung take the values of the nearest slice with lung."""
    idx = np.flatnonzero(has)
    return np.interp(np.arange(len(values)), idx, values[idx])


def _row_fill(mask: np.ndarray) -> np.ndarray:
    """Along x: everything between the first and the last set voxel of each row."""
    left = np.maximum.accumulate(mask, axis=2)
    right = np.maximum.accumulate(mask[:, :, ::-1], axis=2)[:, :, ::-1]
    return left & right


def build_body(grid: Grid, lobes: np.ndarray, airway: np.ndarray, draw: BodyDraw) -> np.ndarray:
    """The :class:`Tissue` labels (uint8, z-y-x) of the whole grid around ``lobes``."""
    nz, ny, nx = grid.shape
    px, py, pz = grid.spacing
    lung = lobes > 0
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    has, x_first, x_last = _extent_per_slice(lung, 2)
    _, y_first, y_last = _extent_per_slice(lung, 1)
    if not has.any():
        raise ValueError("no lung on the grid")
    # a smooth body outline: the lungs' extent over +/- 40 mm, held above the apex and below the base
    window = max(1, int(round(80 / pz)))
    x_first = minimum_filter1d(_fill_slices(x_first, has), window)
    x_last = maximum_filter1d(_fill_slices(x_last, has), window)
    y_first = minimum_filter1d(_fill_slices(y_first, has), window)
    y_last = maximum_filter1d(_fill_slices(y_last, has), window)
    x_first, x_last, y_first, y_last = (uniform_filter1d(v, window) for v in (x_first, x_last, y_first, y_last))
    lung_z = np.flatnonzero(has)
    apex, base = lung_z[-1], lung_z[0]
    z_mm = (np.arange(nz) - apex) * pz  # > 0 above the apex
    taper = np.clip(1 - np.maximum(z_mm, 0) / 120.0, 0.55, 1.0)  # neck and shoulders narrow above the apex

    cx = (x_first + x_last) / 2 * px
    half_x = ((x_last - x_first) / 2 * px + draw.wall_side_mm) * taper
    front = y_first * py - draw.wall_front_mm
    back = y_last * py + draw.wall_back_mm
    cy = (front + back) / 2
    half_y = (back - front) / 2 * np.sqrt(taper)

    X = (np.arange(nx) * px)[None, None, :]
    Y = (np.arange(ny) * py)[None, :, None]
    r = (np.abs(X - cx[:, None, None]) / half_x[:, None, None]) ** draw.squareness + (
        np.abs(Y - cy[:, None, None]) / half_y[:, None, None]
    ) ** draw.squareness
    body = r <= 1.0
    inner_scale = 1 - draw.fat_mm / np.maximum(half_x, 40)[:, None, None]
    muscle = r <= inner_scale**draw.squareness
    tissue[body] = Tissue.FAT
    tissue[muscle] = Tissue.MUSCLE

    # thorax interior: between the lungs, row by row, and a thin pleural margin
    interior = _row_fill(lung) | binary_dilation(lung, iterations=1)
    tissue[interior & body] = Tissue.MEDIASTINUM

    # ribs: a shell 2-12 mm outside the lungs, banded along z, sloping down towards the front
    dist = np.empty(grid.shape, dtype=np.float32)
    for k in range(nz):
        dist[k] = distance_transform_edt(~(interior[k] | lung[k]), sampling=(py, px)) if interior[k].any() else 1e3
    phase = (np.arange(nz) * pz)[:, None, None] + draw.rib_slope * (Y - cy[:, None, None]) + draw.rib_phase_mm
    band = np.mod(phase, draw.rib_pitch_mm) < draw.rib_height_mm
    shell = (dist > 2) & (dist < 2 + draw.rib_height_mm * 0.9) & muscle
    rib = shell & band
    tissue[rib] = Tissue.BONE
    tissue[rib & (dist > 4) & (dist < draw.rib_height_mm * 0.9 - 1)] = Tissue.MARROW

    # spine: vertebral bodies behind the mediastinum, discs between them, the canal behind
    mid_x = (cx / px)[:, None, None]  # lung-midline column per slice (index units)
    vy = (y_last * py - draw.vertebra_radius_mm - 20)[:, None, None]
    vx = mid_x * px
    rv = draw.vertebra_radius_mm
    d_body = np.sqrt((X - vx) ** 2 + (Y - vy) ** 2)
    vertebra = (d_body <= rv) & body & ~lung
    z_abs = (np.arange(nz) * pz)[:, None, None]
    disc = np.mod(z_abs + draw.rib_phase_mm, draw.disc_pitch_mm) < 5.5
    tissue[vertebra] = Tissue.MARROW
    tissue[vertebra & ((d_body > rv - 2.0) | disc)] = Tissue.BONE
    tissue[vertebra & disc & (d_body < rv - 2.0)] = Tissue.DISC
    canal_y = vy + rv + 9
    canal = (np.sqrt((X - vx) ** 2 + (Y - canal_y) ** 2) <= 7.5) & body & ~lung
    arch = (np.abs(X - vx) < 22) & (Y > canal_y - 9) & (Y < canal_y + 22) & body & ~lung & ~canal
    tissue[arch] = Tissue.BONE
    tissue[canal] = Tissue.CANAL
    # sternum in front of the mediastinum
    sy = (y_first * py + 6)[:, None, None]
    sternum = (np.abs(X - vx) < 14) & (np.abs(Y - sy) < 6) & body & ~lung & (z_mm < -10)[:, None, None]
    tissue[sternum] = Tissue.BONE

    # heart: an ellipsoid in the lower mediastinum, left of the midline, in front
    height = (apex - base) * pz
    hz = base * pz + 0.28 * height
    hx = float(np.median(cx)) + draw.heart_shift_mm
    hy = float(np.median(y_first * py)) + draw.heart_axes_mm[1] + 8
    ax, ay, az = draw.heart_axes_mm
    Zm = (np.arange(nz) * pz)[:, None, None]
    e = ((X - hx) / ax) ** 2 + ((Y - hy) / ay) ** 2 + ((Zm - hz) / az) ** 2
    heart = (e <= 1) & body & ~lung
    tissue[heart] = Tissue.MYOCARDIUM
    tissue[(e <= 0.62) & body & ~lung] = Tissue.BLOOD

    # great vessels: descending aorta left of the spine, ascending aorta and arch, superior vena cava
    ra = draw.aorta_radius_mm
    arch_z = apex * pz - 0.22 * height
    desc = (np.sqrt((X - (vx + rv + ra * 0.6)) ** 2 + (Y - (vy - rv * 0.4)) ** 2) <= ra) & (Zm <= arch_z)
    asc_x, asc_y = hx - 0.6 * ax, hy - 0.3 * ay
    asc = (np.sqrt((X - asc_x) ** 2 + (Y - asc_y) ** 2) <= ra * 1.1) & (Zm >= hz) & (Zm <= arch_z)
    t = np.clip((Y - asc_y) / max(1.0, (float(np.median(vy)) - rv * 0.4) - asc_y), 0, 1)
    arch_x = asc_x + t * ((float(np.median(vx)) + rv + ra * 0.6) - asc_x)
    arch_tube = (np.abs(Zm - arch_z) <= ra) & (np.abs(X - arch_x) <= ra) & (Y >= asc_y - ra) & (Y <= float(np.median(vy)))
    svc = (np.sqrt((X - (asc_x - ra * 2.0)) ** 2 + (Y - asc_y) ** 2) <= ra * 0.8) & (Zm >= hz) & (Zm <= apex * pz + 10)
    vessels = (desc | asc | arch_tube | svc) & body & ~lung
    tissue[vessels] = Tissue.BLOOD

    # below the diaphragm: liver on the right, stomach and spleen on the left
    base_height = np.where(lung.any(axis=0), lung.argmax(axis=0), nz).astype(np.float32)  # first lung plane per column
    column_has = lung.any(axis=0)
    if column_has.any():
        _, nearest = distance_transform_edt(~column_has, return_indices=True)
        base_height = base_height[nearest[0], nearest[1]]
    # the diaphragm never rises above the lower quarter of the chest: columns whose lung begins
    # higher (in front of the heart, beside the mediastinum) have heart or mediastinum below it
    base_height = np.minimum(base_height, base + 0.25 * (apex - base))
    dome = base_height - max(1, int(round(5 / pz)))  # a 5 mm diaphragm
    below = (np.arange(nz)[:, None, None] < dome[None]) & muscle & ~lung
    right = X < cx[:, None, None]
    keep = (Tissue.BONE, Tissue.MARROW, Tissue.DISC, Tissue.CANAL, Tissue.MYOCARDIUM, Tissue.BLOOD)
    organ = below & ~np.isin(tissue, keep)
    tissue[organ & right] = Tissue.LIVER
    left = organ & ~right
    tissue[left] = Tissue.SPLEEN
    stomach = left & (Y < cy[:, None, None] + 10) & (X < cx[:, None, None] + half_x[:, None, None] * 0.6)
    tissue[stomach] = Tissue.STOMACH
    # a gas bubble in the fundus: just under the left dome
    bubble = ((X - (cx + 0.4 * half_x)[:, None, None]) / 32.0) ** 2 + ((Y - cy[:, None, None]) / 26.0) ** 2 <= 1
    gas = stomach & bubble & (np.arange(nz)[:, None, None] > dome[None] - int(25 / pz))
    tissue[gas] = Tissue.GAS

    # the lungs and airways themselves
    tissue[lung] = Tissue.LUNG
    wall = binary_dilation(airway, iterations=1) & ~airway
    tissue[wall & ~lung] = Tissue.AIRWAY_WALL
    tissue[wall & lung & (tissue == Tissue.LUNG)] = Tissue.AIRWAY_WALL
    tissue[airway] = Tissue.AIRWAY

    # the table under the patient's back
    table_top = back + draw.table_gap_mm
    curve = table_top[:, None, None] - 0.0006 * (X - cx[:, None, None]) ** 2
    table = (Y >= curve) & (Y <= curve + draw.table_mm) & (np.abs(X - cx[:, None, None]) < 230) & ~body
    tissue[table] = Tissue.TABLE
    return tissue
