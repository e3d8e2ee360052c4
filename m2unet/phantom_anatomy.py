"""The chest of a synthetic case: its proportions, and its lobes and tissues on a voxel grid.

Anatomy is described in a frame centred on the body: ``u`` = x - centre (mm, towards the patient's
left), ``v`` = y - centre (mm, towards posterior), and the height ``t`` = (z - lung base) / lung
height, 0 at the lowest point of the lungs (posterior costophrenic recess) and 1 at the apices.

Most structures are extruded cross-sections (body, fat, muscle, rib cage, spine) and every
boundary between lobes is a height map t = f(u, v): the oblique fissures rise from anterior-basal
to posterior-apical (about 45 degrees), the right horizontal fissure is nearly level, the lingula
is the inferior part of the left upper lobe in front of the left oblique fissure, and the
diaphragm domes (the right one higher) are height maps too. So a whole slab costs a few
comparisons per voxel against 2-D maps computed once: fast and vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2unet.labels import SegmentationClass as C
from m2unet.phantom_geometry import Grid
from m2unet.phantom_tubes import Tubes, polyline

# Tissue HU (before the scanner's calibration and noise)
AIR_HU = -1000.0
BONE_CORTICAL_HU = 700.0
CARTILAGE_HU = 140.0
CSF_HU = 15.0
TABLE_HU = 180.0


@dataclass(frozen=True)
class Anatomy:
    """Proportions of one synthetic chest, in mm (frame: see the module docstring)."""

    centre_x: float
    centre_y: float
    z_base: float  # z of the lowest point of the lungs
    lung_height: float
    body_a: float  # skin, lateral semi-axis
    body_b: float  # skin, antero-posterior semi-axis
    fat_mm: float  # subcutaneous fat at the sides; thinner in front and behind
    fat_ap_mm: float
    muscle_mm: float  # chest wall muscle at the sides; thinner in front and behind
    muscle_ap_mm: float
    rib_mm: float
    cage_a: float  # inner (pleural) surface of the rib cage
    cage_b: float
    mediastinum_mm: float  # half width of the anterior mediastinum
    hilum_mm: float  # half width of the mediastinum at the level of the trachea
    vertebra_v: float
    vertebra_r: float
    trachea_v: float
    trachea_r: float
    carina_t: float
    heart_u: float
    heart_v: float
    heart_t: float
    heart_axes: tuple[float, float, float]
    heart_angle: float  # radians, the long axis turned towards the left-anterior
    dome_t: tuple[float, float]  # (right, left) heights of the diaphragm domes
    apex_t: float  # above this height the lungs narrow to their apices
    right_oblique: tuple[float, float, float]  # (t anterior, t posterior, curvature exponent)
    left_oblique: tuple[float, float, float]
    horizontal_t: float
    lingula_t: float
    fissure_warp: np.ndarray  # (4, 4) low-frequency warps of the four lobar boundaries
    rib_period: float
    rib_height: float
    rib_drop: float  # how much lower a rib is in front than at the back
    rib_phase: float
    disc_period: float
    disc_phase: float
    fat_hu: float
    muscle_hu: float
    liver_hu: float
    blood_hu: float
    bone_hu: float  # cancellous bone
    lung_hu: float  # anterior (non-dependent) lung
    lung_gradient_hu: float  # how much denser the dependent (posterior) lung is

    def t_of_z(self, z):
        return (np.asarray(z, dtype=np.float64) - self.z_base) / self.lung_height

    def z_of_t(self, t):
        return self.z_base + np.asarray(t, dtype=np.float64) * self.lung_height


def sample_anatomy(rng: np.random.Generator, grid: Grid) -> Anatomy:
    """Draw a chest that fits ``grid`` (body inside the circular field of view, lungs in z)."""
    size = rng.uniform(0.0, 1.0)
    body_a = 140 + 50 * size + rng.uniform(-6, 6)
    body_b = body_a * rng.uniform(0.6, 0.72)
    # The body must fit in the circle the scanner reconstructs (the smaller in-plane extent).
    ex, ey, ez = grid.extent_mm
    limit = 0.47 * min(ex, ey)
    scale = min(1.0, limit / max(body_a, body_b))
    body_a *= scale
    body_b *= scale
    fat = rng.uniform(5, 24) * (0.6 + 0.8 * size) * scale
    fat_ap = fat * rng.uniform(0.4, 0.7)
    muscle = rng.uniform(9, 16) * scale
    muscle_ap = muscle * rng.uniform(0.5, 0.8)
    rib = rng.uniform(8, 11) * scale
    cage_a = body_a - fat - muscle - rib
    cage_b = body_b - fat_ap - muscle_ap - rib
    gcx, gcy, gcz = grid.centre
    room_x = max(0.0, limit - body_a)
    centre_x = gcx + rng.uniform(-1, 1) * min(10.0, room_x)
    centre_y = gcy + rng.uniform(-1, 1) * min(15.0, max(0.0, limit - body_b))

    lung_height = rng.uniform(205, 265) * (0.9 + 0.2 * size)
    if ez - 16 >= 190:
        lung_height = min(lung_height, ez - 16)
    room = ez - lung_height
    if room >= 16:
        z_base = grid.origin[2] + rng.uniform(0.25, 0.7) * room
    else:  # a partial view: centre the slab on the hila, where all five lobes meet
        z_base = gcz - 0.42 * lung_height

    vertebra_r = rng.uniform(14, 18) * scale
    vertebra_v = cage_b - vertebra_r - rng.uniform(4, 10) * scale
    trachea_r = rng.uniform(7.5, 10.0) * scale
    trachea_v = vertebra_v - vertebra_r - rng.uniform(12, 18) * scale - trachea_r
    dome_r = rng.uniform(0.2, 0.3)
    dome_l = dome_r - rng.uniform(0.02, 0.07)
    heart_c = rng.uniform(42, 50) * scale
    heart_a = cage_a * rng.uniform(0.44, 0.52)
    heart_b = cage_b * rng.uniform(0.5, 0.6)
    heart_v = -cage_b + heart_b * rng.uniform(0.9, 1.05)
    heart_t = dome_l + 0.75 * heart_c / lung_height
    return Anatomy(
        centre_x=float(centre_x),
        centre_y=float(centre_y),
        z_base=float(z_base),
        lung_height=float(lung_height),
        body_a=float(body_a),
        body_b=float(body_b),
        fat_mm=float(fat),
        fat_ap_mm=float(fat_ap),
        muscle_mm=float(muscle),
        muscle_ap_mm=float(muscle_ap),
        rib_mm=float(rib),
        cage_a=float(cage_a),
        cage_b=float(cage_b),
        mediastinum_mm=float(rng.uniform(6, 14) * scale),
        hilum_mm=float(rng.uniform(24, 32) * scale),
        vertebra_v=float(vertebra_v),
        vertebra_r=float(vertebra_r),
        trachea_v=float(trachea_v),
        trachea_r=float(trachea_r),
        carina_t=float(rng.uniform(0.58, 0.68)),
        heart_u=float(rng.uniform(0.12, 0.22) * cage_a),
        heart_v=float(heart_v),
        heart_t=float(heart_t),
        heart_axes=(float(heart_a), float(heart_b), float(heart_c)),
        heart_angle=float(rng.uniform(0.25, 0.6)),
        dome_t=(float(dome_r), float(dome_l)),
        apex_t=float(rng.uniform(0.6, 0.68)),
        right_oblique=(
            float(rng.uniform(-0.06, 0.04)),
            float(rng.uniform(0.8, 0.88)),
            float(rng.uniform(0.65, 0.9)),
        ),
        left_oblique=(
            float(rng.uniform(-0.04, 0.06)),
            float(rng.uniform(0.82, 0.9)),
            float(rng.uniform(0.65, 0.9)),
        ),
        horizontal_t=float(rng.uniform(0.52, 0.58)),
        lingula_t=float(rng.uniform(0.55, 0.61)),
        fissure_warp=rng.normal(0.0, 0.012, size=(4, 4)),
        rib_period=float(rng.uniform(22, 28) * (0.9 + 0.2 * size)),
        rib_height=float(rng.uniform(8, 11)),
        rib_drop=float(rng.uniform(55, 85)),
        rib_phase=float(rng.uniform(0, 30)),
        disc_period=float(rng.uniform(25, 31)),
        disc_phase=float(rng.uniform(0, 30)),
        fat_hu=float(rng.uniform(-115, -85)),
        muscle_hu=float(rng.uniform(38, 55)),
        liver_hu=float(rng.uniform(48, 66)),
        blood_hu=float(rng.uniform(34, 48)),
        bone_hu=float(rng.uniform(180, 300)),
        lung_hu=float(rng.uniform(-945, -845)),
        lung_gradient_hu=float(rng.uniform(25, 70)),
    )


def _warp(coef: np.ndarray, un: np.ndarray, vn: np.ndarray) -> np.ndarray:
    """A smooth low-frequency surface warp over normalised coordinates (in units of t)."""
    return (
        coef[0] * np.sin(np.pi * un + 3 * coef[3])
        + coef[1] * np.sin(np.pi * vn + 5 * coef[2])
        + coef[2] * np.cos(2 * np.pi * un * vn)
        + coef[3] * (un * vn)
    )


class ChestSections:
    """The anatomy's 2-D maps on one grid, and the class map and tissues of any slab of it."""

    def __init__(self, anatomy: Anatomy, grid: Grid):
        a = anatomy
        self.anatomy = a
        self.grid = grid
        f4 = np.float32
        u = (grid.axis("x") - a.centre_x).astype(f4)[None, :]
        v = (grid.axis("y") - a.centre_y).astype(f4)[:, None]
        self.t = a.t_of_z(grid.axis("z")).astype(f4)
        self.z = grid.axis("z")

        e_cage = (u / a.cage_a) ** 2 + (v / a.cage_b) ** 2
        self.in_cage = e_cage < 1
        e_ribs = (u / (a.cage_a + a.rib_mm)) ** 2 + (v / (a.cage_b + a.rib_mm)) ** 2
        self.rib_band = (e_ribs < 1) & ~self.in_cage
        # the back lies flat on the table: a superellipse behind, an ellipse in front
        back = np.where(v > 0, np.float32(3.0), np.float32(2.0))
        in_body = np.abs(u / a.body_a) ** back + np.abs(v / a.body_b) ** back < 1
        inner_a, inner_b = a.body_a - a.fat_mm, a.body_b - a.fat_ap_mm
        in_muscle = np.abs(u / inner_a) ** back + np.abs(v / inner_b) ** back < 1

        # spine: vertebral body (varies in z: discs), canal and posterior arch (constant)
        r = a.vertebra_r
        dv = v - a.vertebra_v
        rho_vb = np.sqrt((u / 1.15) ** 2 + dv**2)
        self.vertebral_body = rho_vb < r
        self.vertebral_cortex = self.vertebral_body & (rho_vb > r - 2.0)
        rows = np.flatnonzero(self.vertebral_body.any(axis=1))
        cols = np.flatnonzero(self.vertebral_body.any(axis=0))
        self.vertebra_box = (
            (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)) if len(rows) else (slice(0, 0), slice(0, 0))
        )
        canal_v = a.vertebra_v + r + 0.45 * r
        rho_canal = np.sqrt(u**2 + (v - canal_v) ** 2)
        canal = rho_canal < 0.45 * r
        arch = (rho_canal >= 0.45 * r) & (rho_canal < 0.8 * r)
        spinous = (np.abs(u) < 0.25 * r) & (v > canal_v) & (v < canal_v + 2.2 * r)
        transverse = (np.abs(v - canal_v) < 0.22 * r) & (np.abs(u) < 1.7 * r)
        posterior_elements = (arch | spinous | transverse) & in_body
        spine_keepout = (rho_vb < r + 5) | ((np.abs(u) < 1.9 * r) & (v > a.vertebra_v))

        # mediastinum: narrow in front, wider around trachea and oesophagus
        w_med = a.mediastinum_mm + (a.hilum_mm - a.mediastinum_mm) * np.exp(
            -(((v - a.trachea_v) / (0.45 * a.cage_b)) ** 2)
        )
        self.candidate = {
            "right": self.in_cage & (u < -w_med) & ~spine_keepout,
            "left": self.in_cage & (u > w_med) & ~spine_keepout,
        }

        # diaphragm: one dome per side, deepest in the posterior-lateral recesses
        un = u / a.cage_a
        vn = v / a.cage_b
        t_dia = np.empty((grid.shape[1], grid.shape[2]), dtype=f4)
        for side, sign, dome in (("right", -1, a.dome_t[0]), ("left", 1, a.dome_t[1])):
            rho2 = ((un - sign * 0.45) / 0.62) ** 2 + ((vn + 0.3) / 0.9) ** 2
            rho2_recess = ((0.8 - 0.45) / 0.62) ** 2 + ((0.8 + 0.3) / 0.9) ** 2
            t_side = dome * (1 - rho2 / rho2_recess)
            if side == "right":
                t_dia[:] = np.broadcast_to(t_side, t_dia.shape)
            else:
                np.copyto(t_dia, np.broadcast_to(t_side, t_dia.shape), where=np.broadcast_to(u >= 0, t_dia.shape))
        self.t_diaphragm = t_dia
        rows = np.flatnonzero(self.in_cage.any(axis=1))
        cols = np.flatnonzero(self.in_cage.any(axis=0))
        if len(rows) and len(cols):
            self.cage_box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        else:
            self.cage_box = (slice(0, 0), slice(0, 0))
        self.t_diaphragm_min = float(t_dia[self.in_cage].min()) if self.in_cage.any() else 1.0
        self.t_diaphragm_max = float(t_dia[self.in_cage].max()) if self.in_cage.any() else 0.0

        # apices: above apex_t each lung narrows to a dome
        self.apex_e = {}
        for side, sign in (("right", -1), ("left", 1)):
            cu = sign * (a.cage_a + a.mediastinum_mm) / 2
            au = 0.55 * (a.cage_a - a.mediastinum_mm)
            cv, bv = 0.05 * a.cage_b, 0.92 * a.cage_b
            self.apex_e[side] = ((u - cu) / au) ** 2 + ((v - cv) / bv) ** 2

        # lobar boundaries as heights t(u, v)
        q = np.clip((vn + 1) / 2, 0, 1)  # 0 anterior .. 1 posterior
        w = a.fissure_warp
        t_ant, t_post, gamma = a.right_oblique
        self.t_right_oblique = (t_ant + (t_post - t_ant) * q**gamma + _warp(w[0], un, vn)).astype(f4)
        self.t_horizontal = (a.horizontal_t - 0.04 * vn - 0.02 * np.abs(un) + _warp(w[1], un, vn)).astype(f4)
        t_ant, t_post, gamma = a.left_oblique
        self.t_left_oblique = (t_ant + (t_post - t_ant) * q**gamma + _warp(w[2], un, vn)).astype(f4)
        self.t_lingula = (a.lingula_t - 0.06 * vn + _warp(w[3], un, vn)).astype(f4)

        # heart: an ellipsoid turned about z, with a shell of pericardial fat
        ca, sa = np.cos(a.heart_angle), np.sin(a.heart_angle)
        du, dvh = u - a.heart_u, v - a.heart_v
        p = du * ca - dvh * sa
        qh = du * sa + dvh * ca
        ha, hb, hc = a.heart_axes
        self.heart_e = (p / ha) ** 2 + (qh / hb) ** 2
        self.heart_fat_e = (p / (ha + 5)) ** 2 + (qh / (hb + 5)) ** 2
        self.heart_z = a.z_of_t(a.heart_t)

        # constant tissues: outside air, table, fat, muscle, posterior elements, rib band
        base = np.full((grid.shape[1], grid.shape[2]), AIR_HU, dtype=f4)
        table_v = a.body_b + 1.0 + 0.0009 * u**2
        table = (v > table_v) & (v < table_v + 5.0) & (np.abs(u) < 1.25 * a.body_a)
        base[np.broadcast_to(table, base.shape)] = TABLE_HU
        base[np.broadcast_to(in_body, base.shape)] = a.fat_hu
        base[np.broadcast_to(in_muscle, base.shape)] = a.muscle_hu
        base[np.broadcast_to(self.in_cage, base.shape)] = a.fat_hu + 20  # mediastinal fat
        base[np.broadcast_to(canal, base.shape)] = CSF_HU
        base[np.broadcast_to(posterior_elements, base.shape)] = a.bone_hu + 150
        self.base = base
        self.abdomen = np.where(u < 0, a.liver_hu, a.liver_hu - 12).astype(f4) * np.ones_like(base)
        self.lung_hu = (a.lung_hu + a.lung_gradient_hu * np.clip((vn + 1) / 2, 0, 1)).astype(f4) * np.ones_like(base)

        band = np.flatnonzero(self.rib_band)
        ub = np.broadcast_to(u, base.shape).ravel()[band]
        vb = np.broadcast_to(v, base.shape).ravel()[band]
        self.rib_index = band
        self.rib_shift = (a.rib_drop * np.clip((1 - vb / (a.cage_b + a.rib_mm)) / 2, 0, 1)).astype(f4)
        self.rib_cartilage = (np.abs(ub) < 0.32 * a.cage_a) & (vb < 0)
        self.rib_gap = (np.abs(ub) < 0.1 * a.cage_a) & (vb < 0)  # sternum, not ribs
        self.sternum = np.zeros(base.shape, dtype=bool)
        self.sternum.ravel()[band[self.rib_gap]] = True

    # --- slabs -------------------------------------------------------------------------------

    def lung_envelope(self, t: np.ndarray) -> np.ndarray:
        """How far (in units of ``apex_e``) each lung reaches at height ``t``: the thorax is a
        cone that narrows from mid-height, and above ``apex_t`` each lung closes to its apex."""
        a = self.anatomy
        cone = np.interp(t, [0.25, a.apex_t], [1.5, 1.0]).astype(np.float32)
        rise = np.clip((t - a.apex_t) / (1 - a.apex_t), 0, 1)
        dome = (1 - rise) ** 1.2  # a rounded cone: the apex is narrower than a half-ellipsoid
        return np.where(t > a.apex_t, dome, cone)

    def class_slab(self, k0: int, k1: int, solid=None) -> np.ndarray:
        """The 7-class map (uint8) of slices k0..k1; ``solid``: voxels no lung may occupy."""
        return self.classes_at(self.z[k0:k1], solid)

    def classes_at(self, z: np.ndarray, solid=None) -> np.ndarray:
        """The 7-class map (uint8) of axial planes at ``z`` (mm, any positions)."""
        a = self.anatomy
        z = np.asarray(z, dtype=np.float64)
        out = np.zeros((len(z),) + self.base.shape, dtype=np.uint8)
        tz = a.t_of_z(z)
        planes = np.flatnonzero((tz > self.t_diaphragm_min) & (tz < 1.0))
        if not len(planes):
            return out
        p0, p1 = planes[0], planes[-1] + 1
        ys, xs = self.cage_box
        t = tz[p0:p1].astype(np.float32)[:, None, None]
        g2 = self.lung_envelope(t)
        dz = (z[p0:p1, None, None] - self.heart_z) / a.heart_axes[2]
        heart_lim = (1 - dz**2).astype(np.float32)
        sub = out[p0:p1, ys, xs]
        above = t > self.t_diaphragm[ys, xs]
        if np.any(heart_lim > 0):
            above &= self.heart_fat_e[ys, xs] >= heart_lim
        for side in ("right", "left"):
            lung = above & self.candidate[side][ys, xs]
            lung &= self.apex_e[side][ys, xs] < g2
            if side == "right":
                lower, split = self.t_right_oblique[ys, xs], self.t_horizontal[ys, xs]
                labels = (C.RIGHT_LOWER_LOBE, C.RIGHT_MIDDLE_LOBE, C.RIGHT_UPPER_LOBE)
            else:
                lower, split = self.t_left_oblique[ys, xs], self.t_lingula[ys, xs]
                labels = (C.LEFT_LOWER_LOBE, C.LINGULA, C.LEFT_UPPER_LOBE_UPPER_DIVISION)
            cls = np.where(t < split, np.uint8(labels[1]), np.uint8(labels[2]))
            np.copyto(cls, np.uint8(labels[0]), where=t < lower)
            np.copyto(sub, cls, where=lung)
        if solid is not None:
            out[solid] = 0
        return out

    def tissue_at(self, z: np.ndarray) -> np.ndarray:
        """HU (float32) of everything but the lungs' contents, on axial planes at ``z`` (mm)."""
        a = self.anatomy
        z = np.asarray(z, dtype=np.float64)
        n = len(z)
        hu = np.empty((n,) + self.base.shape, dtype=np.float32)
        hu[:] = self.base
        tt = a.t_of_z(z).astype(np.float32)
        ys, xs = self.cage_box
        box = hu[:, ys, xs]
        # abdomen below the diaphragm (only the planes that reach below it)
        low = np.flatnonzero(tt <= self.t_diaphragm_max)
        if len(low):
            q0, q1 = low[0], low[-1] + 1
            below = tt[q0:q1, None, None] <= self.t_diaphragm[ys, xs]
            below &= self.in_cage[ys, xs]
            np.copyto(box[q0:q1], self.abdomen[ys, xs], where=below)
        # heart and pericardial fat (only the planes through it)
        dz = (z - self.heart_z) / a.heart_axes[2]
        through = np.flatnonzero(np.abs(dz) < 1)
        if len(through):
            q0, q1 = through[0], through[-1] + 1
            lim = (1 - dz[q0:q1] ** 2).astype(np.float32)[:, None, None]
            sub = box[q0:q1]
            fat = self.heart_fat_e[ys, xs] < lim
            fat &= tt[q0:q1, None, None] > self.t_diaphragm[ys, xs] - 0.03
            np.copyto(sub, np.float32(a.fat_hu + 10), where=fat)
            np.copyto(sub, np.float32(a.blood_hu), where=self.heart_e[ys, xs] < lim)
        # vertebral bodies and discs
        disc = ((z - a.disc_phase) % a.disc_period) < 6.0
        vy, vx = self.vertebra_box
        vbox = hu[:, vy, vx]
        vb = np.where(disc[:, None, None], np.float32(a.muscle_hu + 30), np.float32(a.bone_hu))
        np.copyto(vbox, vb, where=self.vertebral_body[vy, vx])
        np.copyto(vbox, np.float32(BONE_CORTICAL_HU), where=self.vertebral_cortex[vy, vx] & ~disc[:, None, None])
        # ribs, costal cartilage and sternum
        in_thorax = (tt > -0.3) & (tt < 1.06)
        if np.any(in_thorax):
            phase = (z[:, None] + self.rib_shift[None, :] - a.rib_phase) % a.rib_period
            rib = (phase < a.rib_height) & in_thorax[:, None] & ~self.rib_gap[None, :]
            value = np.where(self.rib_cartilage, np.float32(CARTILAGE_HU), np.float32(a.bone_hu + 250))
            flat = hu.reshape(n, -1)
            cols = flat[:, self.rib_index]
            np.copyto(cols, np.broadcast_to(value, cols.shape), where=rib)
            flat[:, self.rib_index] = cols
            sternum_on = (tt > 0.2) & (tt < 0.95)
            if np.any(sternum_on):
                np.copyto(hu, np.float32(a.bone_hu + 100), where=self.sternum & sternum_on[:, None, None])
        return hu


def central_tubes(a: Anatomy, grid: Grid) -> tuple[Tubes, Tubes]:
    """(solid, airway) tubes of the mediastinum: aorta and oesophagus; trachea and bronchi.

    Returns ``solid`` (soft tissue that excludes lung) and ``airways`` as pairs of wall and lumen
    tubes, in patient coordinates.
    """
    cx, cy = a.centre_x, a.centre_y
    top = grid.axis("z")[-1] + 20

    def P(u, v, t=None, z=None):
        return (cx + u, cy + v, a.z_of_t(t) if z is None else z)

    zc = a.z_of_t(a.carina_t)
    r = a.vertebra_r
    desc_u = r + 0.55 * a.hilum_mm
    aorta = polyline(
        [
            P(a.heart_u - 0.35 * a.heart_axes[0], a.heart_v + 0.4 * a.heart_axes[1], a.heart_t + 0.1),
            P(-0.45 * a.hilum_mm, a.trachea_v - 1.8 * a.trachea_r, a.carina_t + 0.06),
            P(0.1 * a.hilum_mm, a.trachea_v - 1.2 * a.trachea_r, a.carina_t + 0.13),
            P(0.7 * a.hilum_mm, a.trachea_v + 0.6 * a.trachea_r, a.carina_t + 0.12),
            P(desc_u, a.vertebra_v - 0.6 * r, a.carina_t + 0.05),
            P(desc_u * 0.9, a.vertebra_v - 0.7 * r, -0.25),
        ],
        radius=[15, 15, 14, 13, 12, 11],
        value=a.blood_hu,
    )
    oesophagus = polyline(
        [P(0.25 * r, a.trachea_v + a.trachea_r + 6, z=top), P(0.6 * r, a.vertebra_v - r - 4, -0.2)],
        radius=6.5,
        value=a.muscle_hu - 10,
    )
    rt = a.trachea_r
    carina = P(0, a.trachea_v, z=zc)
    trachea = [P(0, a.trachea_v - 4, z=top), carina]
    solid = aorta.concat(oesophagus).concat(polyline(trachea, rt + 1.8, a.muscle_hu - 15))
    h = a.lung_height
    right_main = P(-0.9 * a.hilum_mm - 8, a.trachea_v + 4, z=zc - 0.08 * h)
    right_upper = P(-0.9 * a.hilum_mm - 30, a.trachea_v - 2, z=zc + 0.02 * h)
    intermedius = P(-0.9 * a.hilum_mm - 12, a.trachea_v + 8, z=zc - 0.18 * h)
    right_middle = P(-0.9 * a.hilum_mm - 30, a.trachea_v - 30, z=zc - 0.28 * h)
    right_lower = P(-0.9 * a.hilum_mm - 28, a.trachea_v + 34, z=zc - 0.34 * h)
    left_main = P(0.9 * a.hilum_mm + 14, a.trachea_v + 8, z=zc - 0.15 * h)
    left_upper = P(0.9 * a.hilum_mm + 34, a.trachea_v - 14, z=zc - 0.1 * h)
    left_lower = P(0.9 * a.hilum_mm + 30, a.trachea_v + 34, z=zc - 0.34 * h)
    branches = [
        (trachea, rt),
        ([carina, right_main, intermedius], 0.78 * rt),
        ([right_main, right_upper], 0.55 * rt),
        ([intermedius, right_middle], 0.45 * rt),
        ([intermedius, right_lower], 0.6 * rt),
        ([carina, left_main], 0.7 * rt),
        ([left_main, left_upper], 0.55 * rt),
        ([left_main, left_lower], 0.58 * rt),
    ]
    walls = Tubes.empty()
    lumens = Tubes.empty()
    for pts, radius in branches:
        walls = walls.concat(polyline(pts, radius + 1.8, a.muscle_hu - 15))
        lumens = lumens.concat(polyline(pts, radius, AIR_HU))
    return solid, walls.concat(lumens)
