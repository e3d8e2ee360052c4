"""Synthetic chest CT phantoms with lobe labels and COVID-19-like findings.

``make_phantom(seed)`` builds one case: a CT volume in HU (body wall and subcutaneous fat, ribs,
spine and sternum, mediastinum, heart and aorta, trachea and bronchi, pulmonary vessels, and two
lungs split into lobes by curved fissures), its 7-class label map (:class:`m2unet.labels.SegmentationClass`),
ground-glass and consolidation masks, each lobe's involvement, the CT severity score and the
severity label (:mod:`m2unet.phantom_severity` documents the rule). The same seed always gives the
same case; the anatomy, findings and scanner do not depend on the grid asked for, so a small
``shape`` gives a coarse view of the same chest. Training, the tests and the node's ``send-demo``
all use it; :mod:`m2unet.phantom_dicom` writes it as a DICOM CT series or NIfTI.

Rendering goes one slab of slices at a time, twice: the first pass builds the class map and the
histograms that turn each lobe's designed involvement into a threshold on the lesion field, the
second the HU. A thick slice (over 1.5 mm, on grids finer than 1.5 mm in-plane) averages planes
across its thickness, as a detector row integrates its slab; labels are those of the slice's
centre plane. Memory is the output arrays (5 bytes a voxel) plus a few slab-sized temporaries.

The parts, one idea each: :mod:`~m2unet.phantom_geometry` (grids like the paper's data),
:mod:`~m2unet.phantom_anatomy` (the chest and its lobes), :mod:`~m2unet.phantom_tubes` and
:mod:`~m2unet.phantom_vessels` (airways, aorta, pulmonary vessels), :mod:`~m2unet.phantom_lesions`
(ground-glass and consolidation), :mod:`~m2unet.phantom_severity` (score and label rule),
:mod:`~m2unet.phantom_scanners` (noise, calibration and storage of five scanner models).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from m2unet.labels import CLASS_TO_LOBE, Lobe
from m2unet.phantom_anatomy import Anatomy, ChestSections, central_tubes, sample_anatomy
from m2unet.phantom_geometry import Grid, sample_grid
from m2unet.phantom_lesions import (
    LEVELS,
    LesionDesign,
    LesionField,
    histogram,
    sample_design,
    thresholds,
)
from m2unet.phantom_scanners import ScannerProfile, resolve_scanner
from m2unet.phantom_severity import LabelledCase, is_severe, lobe_severity_score
from m2unet.phantom_tubes import TubePainter
from m2unet.phantom_vessels import lobe_trees
from m2unet.volume import IDENTITY_DIRECTION, Volume

GENERATOR_VERSION = "1"  # bump when a seed's phantom changes: it enters the DICOM UIDs
_SLAB_VOXELS = 1 << 23  # voxels per slab (32 slices of 512 x 512)
_DESIGN_STEP_MM = 4.0  # spacing of the coarse grid that holds the lesion field and vessel seeds
_POINTS_PER_LOBE = 512
_MAX_HU = 3071


@dataclass(frozen=True)
class Phantom(LabelledCase):
    """One synthetic case. Arrays are indexed (z, y, x) on ``volume``'s grid."""

    seed: int
    volume: Volume
    class_map: np.ndarray  # uint8, SegmentationClass labels
    lesion_mask: np.ndarray  # bool: ground-glass or consolidation
    consolidation_mask: np.ndarray  # bool, a subset of lesion_mask
    involvement_percent: dict[Lobe, float]
    lobe_scores: dict[Lobe, int]  # CT severity score per lobe, 0-5 (Pan et al. 2020)
    ct_severity_score: int  # total, 0-25
    severe: bool  # the rule in m2unet.phantom_severity: total score >= 18
    scanner: ScannerProfile
    noise_sd_hu: float
    anatomy: Anatomy = field(repr=False)
    design: LesionDesign = field(repr=False)

    @property
    def case_key(self) -> str:
        """What identifies this case among phantoms: generator version, seed, grid, scanner and
        severity (the DICOM UIDs derive from it)."""
        v = self.volume
        spacing = ",".join(f"{s:.5f}" for s in v.spacing)
        return (
            f"m2unet-phantom/{GENERATOR_VERSION}:{self.seed}:{v.shape}:{spacing}:"
            f"{self.scanner.name}:{self.severity}"
        )


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _lobe_points(rng: np.random.Generator, coarse: Grid, class_map: np.ndarray) -> dict[int, np.ndarray]:
    """Up to _POINTS_PER_LOBE points (x, y, z mm) drawn inside each class of a coarse map."""
    points = {}
    spacing = np.asarray(coarse.spacing)
    origin = np.asarray(coarse.origin)
    for label in range(1, 7):
        zyx = np.argwhere(class_map == label)
        if len(zyx) == 0:
            continue
        take = rng.choice(len(zyx), size=min(_POINTS_PER_LOBE, len(zyx)), replace=False)
        xyz = zyx[take][:, ::-1] + rng.uniform(-0.5, 0.5, size=(len(take), 3))
        points[label] = origin + xyz * spacing
    return points


def _hila(a: Anatomy) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Artery and vein roots for each class: pulmonary arteries high, veins towards the atrium."""
    zc = a.z_of_t(a.carina_t)
    hila = {}
    for labels, sign in (((1, 2, 3), -1), ((4, 5, 6), 1)):
        artery = np.array(
            [a.centre_x + sign * (a.hilum_mm + 6), a.centre_y + a.trachea_v - 4, zc - 0.06 * a.lung_height]
        )
        vein = np.array(
            [
                a.centre_x + sign * (a.hilum_mm + 2),
                a.centre_y + a.heart_v + 0.55 * a.heart_axes[1],
                a.z_of_t(a.heart_t) + 0.35 * a.heart_axes[2],
            ]
        )
        for label in labels:
            hila[label] = (artery, vein)
    return hila


def _noise_bank(rng: np.random.Generator, scanner: ScannerProfile, shape2d, count: int, pad: int) -> np.ndarray:
    """Unit-variance noise slices with the scanner's texture, larger than a slice by ``pad``."""
    ny, nx = shape2d
    bank = rng.standard_normal((count, ny + pad, nx + pad)).astype(np.float32)
    sigma = 0.2 + 1.3 * scanner.noise_correlation
    bank = gaussian_filter(bank, (0, sigma, sigma), mode="wrap")
    bank /= bank.std(axis=(1, 2), keepdims=True) + 1e-6
    return bank


def _blur_in_plane(hu: np.ndarray, b: float) -> np.ndarray:
    """A 3-tap [b, 1 - 2b, b] blur along y and x (the reconstruction kernel's softness)."""
    if b <= 0:
        return hu
    b = np.float32(b)
    for axis in (2, 1):
        n = hu.shape[axis]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        lo, hi = tuple(lo), tuple(hi)
        diff = np.subtract(hu[hi], hu[lo])  # forward differences
        diff *= b
        hu[lo] += diff  # x[i] += b (x[i+1] - x[i])
        hu[hi] -= diff  # x[i+1] -= b (x[i+1] - x[i])
    return hu


def _lung_box(cm: np.ndarray):
    """The rows and columns (slices) that hold lung in a slab of the class map, or None."""
    rows = np.flatnonzero(cm.any(axis=(0, 2)))
    if not len(rows):
        return None
    cols = np.flatnonzero(cm.any(axis=(0, 1)))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def draw_grid(seed: int, shape=None, spacing=None) -> Grid:
    """The grid :func:`make_phantom` uses for ``seed`` (see :func:`sample_grid`)."""
    return sample_grid(_streams(_check_seed(seed))[0], shape, spacing)


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent random streams: grid, anatomy, findings, scanner, vessels, noise."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 0x6D32]).spawn(6)]


def _slabs(grid: Grid) -> list[tuple[int, int]]:
    nz, ny, nx = grid.shape
    step = max(1, _SLAB_VOXELS // (ny * nx))
    return [(k, min(k + step, nz)) for k in range(0, nz, step)]


def _class_map(sections: ChestSections, solid: TubePainter, grid: Grid) -> np.ndarray:
    """Pass 1: the 7-class map of the whole grid."""
    nz, ny, nx = grid.shape
    class_map = np.empty(grid.shape, dtype=np.uint8)
    z = grid.axis("z")
    for k0, k1 in _slabs(grid):
        class_map[k0:k1] = sections.class_slab(k0, k1, solid.mask((k1 - k0, ny, nx), z[k0:k1]))
    return class_map


def _field_histogram(class_map: np.ndarray, field: LesionField, grid: Grid) -> np.ndarray:
    """The lesion field's level counts per class; every 2nd voxel per axis on big grids."""
    nz, ny, nx = grid.shape
    stride = 1 if nz * ny * nx <= _SLAB_VOXELS else 2
    hist = np.zeros((7, LEVELS), dtype=np.int64)
    for k0, k1 in _slabs(grid):
        cm = class_map[k0:k1]
        box = _lung_box(cm)
        zi = np.arange(k0 + (-k0) % stride, k1, stride)
        if box is None or not len(zi):
            continue
        ys, xs = box
        yi = np.arange(ys.start, ys.stop, stride)
        xi = np.arange(xs.start, xs.stop, stride)
        sub = cm[zi - k0][:, yi][:, :, xi]
        hist += histogram(sub, field.read(grid.axis("z")[zi], yi, xi))
    return hist


@dataclass
class _Rendered:
    hu: np.ndarray
    lesion_mask: np.ndarray
    consolidation_mask: np.ndarray
    lobe_voxels: np.ndarray  # per class
    lesion_voxels: np.ndarray  # per class


@dataclass
class _Lesions:
    """The findings on some planes, inside the lungs' box ``ys`` x ``xs``."""

    ys: slice
    xs: slice
    lesion: np.ndarray  # bool, on the box
    consolidation: np.ndarray  # bool, on the box
    values: np.ndarray  # HU of the lesion voxels, in the order of np.nonzero(lesion)


def _lesions(
    cm: np.ndarray,
    z: np.ndarray,
    field: LesionField,
    levels: tuple[np.ndarray, np.ndarray],
    design: LesionDesign,
) -> _Lesions | None:
    """Where the field passes each lobe's thresholds on the planes at ``z`` with classes ``cm``."""
    box = _lung_box(cm)
    if box is None:
        return None
    ys, xs = box
    lesion_level, consolidation_level = levels
    cmb = cm[:, ys, xs]
    f = field.read(z, np.arange(ys.start, ys.stop), np.arange(xs.start, xs.stop))
    lo = np.take(lesion_level, cmb)
    lesion = f >= lo
    consolidation = np.zeros_like(lesion)
    values = np.zeros(0, dtype=np.float32)
    if lesion.any():
        hi = np.take(consolidation_level, cmb[lesion])
        lo_l = lo[lesion]
        f_l = f[lesion]
        cons_l = f_l >= hi
        span = np.where(np.isfinite(hi), hi - lo_l, np.float32(LEVELS) - lo_l)
        s_l = np.sqrt(np.clip((f_l - lo_l) / np.maximum(span, 1), 0, 1))
        gg_lo, gg_hi = design.ground_glass_hu
        values = (gg_lo + (gg_hi - gg_lo) * s_l).astype(np.float32)
        values[cons_l] = design.consolidation_hu
        consolidation[lesion] = cons_l
    return _Lesions(ys, xs, lesion, consolidation, values)


def _scene(
    z: np.ndarray,
    cm: np.ndarray,
    sections: ChestSections,
    painters: tuple[TubePainter, TubePainter, TubePainter],
    lesions: _Lesions | None,
) -> np.ndarray:
    """Tissue HU (float32, before the scanner) on the planes at ``z`` with classes ``cm``."""
    solid_painter, vessel_painter, airway_painter = painters
    tissue = sections.tissue_at(z)
    solid_painter.blend(tissue, z)
    if lesions is not None:
        ys, xs = lesions.ys, lesions.xs
        tb = tissue[:, ys, xs]
        np.copyto(tb, sections.lung_hu[ys, xs], where=cm[:, ys, xs] > 0)
        if len(lesions.values):
            tb[lesions.lesion] = lesions.values
    vessel_painter.blend(tissue, z)
    airway_painter.blend(tissue, z)
    return tissue


def _slice_planes(grid: Grid) -> np.ndarray:
    """Offsets (mm) of the planes averaged into one slice: a thick slice (more than 1.5 mm)
    integrates its slab, as a CT detector row does, so thin vessels and edges blur along z.
    Coarse grids (tests, previews: over 1.5 mm in-plane) take the centre plane only."""
    sz = grid.spacing[2]
    fine = min(grid.spacing[:2]) <= 1.5
    m = 1 if sz <= 1.5 or not fine else min(4, int(np.ceil(sz / 2.5)))
    return ((np.arange(m) + 0.5) / m - 0.5) * sz


def _render(
    grid: Grid,
    sections: ChestSections,
    class_map: np.ndarray,
    painters: tuple[TubePainter, TubePainter, TubePainter],
    design: LesionDesign,
    field: LesionField,
    levels: tuple[np.ndarray, np.ndarray],
    profile: ScannerProfile,
    noise_sd: float,
    rng: np.random.Generator,
) -> _Rendered:
    """Pass 2: the HU of every slab, with the lesions the thresholds ``levels`` select.

    The labels (classes, lesion and consolidation masks) are those of each slice's centre plane;
    the HU of a thick slice is the mean over planes across its thickness.
    """
    nz, ny, nx = grid.shape
    hu = np.empty(grid.shape, dtype=np.int16)
    lesion_mask = np.zeros(grid.shape, dtype=bool)
    consolidation_mask = np.zeros(grid.shape, dtype=bool)
    lobe_voxels = np.zeros(7, dtype=np.int64)
    lesion_voxels = np.zeros(7, dtype=np.int64)
    pad = 32
    bank = _noise_bank(rng, profile, (ny, nx), 6, pad)
    offsets = rng.integers(0, pad + 1, size=(nz, 2))
    which = rng.integers(0, len(bank), size=nz)
    flips = rng.integers(0, 2, size=nz)
    yy = np.arange(ny, dtype=np.float32)[:, None] * grid.spacing[1]
    xx = np.arange(nx, dtype=np.float32)[None, :] * grid.spacing[0]
    ey, ex = yy[-1, 0] / 2, xx[0, -1] / 2
    outside_fov = ((yy - ey) ** 2 + (xx - ex) ** 2) > min(ex, ey) ** 2
    planes = _slice_planes(grid)
    z_axis = grid.axis("z")
    for k0, k1 in _slabs(grid):
        cm = class_map[k0:k1]
        z = z_axis[k0:k1]
        centre = _lesions(cm, z, field, levels, design)
        if centre is not None:
            ys, xs = centre.ys, centre.xs
            cmb = cm[:, ys, xs]
            lesion_mask[k0:k1, ys, xs] = centre.lesion
            consolidation_mask[k0:k1, ys, xs] = centre.consolidation
            lobe_voxels += np.bincount(cmb.ravel(), minlength=7)
            lesion_voxels += np.bincount(cmb[centre.lesion], minlength=7)
        if len(planes) == 1:
            tissue = _scene(z, cm, sections, painters, centre)
        else:
            tissue = np.zeros((k1 - k0, ny, nx), dtype=np.float32)
            for offset in planes:
                zp = z + offset
                cmp = sections.classes_at(zp, painters[0].mask((k1 - k0, ny, nx), zp))
                tissue += _scene(zp, cmp, sections, painters, _lesions(cmp, zp, field, levels, design))
            tissue *= np.float32(1 / len(planes))
        tissue = _blur_in_plane(tissue, profile.blur)
        tissue *= np.float32(profile.hu_gain)
        tissue += np.float32(profile.hu_offset)
        for j, k in enumerate(range(k0, k1)):
            oy, ox = offsets[k]
            n = bank[which[k], oy : oy + ny, ox : ox + nx]
            if flips[k]:
                n = n[::-1]
            tissue[j] += np.float32(noise_sd) * n
        np.copyto(tissue, np.float32(profile.outside_fov_hu), where=outside_fov)
        np.clip(tissue, max(profile.min_hu, -3024), _MAX_HU, out=tissue)
        np.rint(tissue, out=tissue)
        hu[k0:k1] = tissue
    return _Rendered(hu, lesion_mask, consolidation_mask, lobe_voxels, lesion_voxels)


def _lobe_involvement(rendered: _Rendered) -> dict[Lobe, float]:
    involvement = {}
    for lobe in Lobe:
        classes = np.flatnonzero(CLASS_TO_LOBE == lobe)
        n = int(rendered.lobe_voxels[classes].sum())
        involvement[lobe] = 100.0 * int(rendered.lesion_voxels[classes].sum()) / n if n else 0.0
    return involvement


def make_phantom(seed: int, *, shape=None, spacing=None, severity=None, scanner=None) -> Phantom:
    """Build the synthetic chest CT of ``seed``.

    ``shape`` (z, y, x) and ``spacing`` (x, y, z, mm) default to a draw from the paper's range
    (512 x 512~666 pixels of 0.586~0.984 mm, 23~732 slices 0.4~10 mm apart); give ``shape`` alone
    for a coarse grid over the whole chest (``shape=(24, 128, 128)`` for tests). ``severity``
    forces the label ("severe" or "non-severe"); left None, about one case in five is severe.
    ``scanner`` is a profile name of :data:`m2unet.phantom_scanners.SCANNERS`, a
    :class:`ScannerProfile`, or None to draw one. Raises ``ValueError`` naming a bad argument.
    """
    seed = _check_seed(seed)
    if severity not in (None, "severe", "non-severe"):
        raise ValueError(f"severity = {severity!r} is not None, 'severe' or 'non-severe'")
    rng_grid, rng_anatomy, rng_design, rng_scanner, rng_vessels, rng_noise = _streams(seed)
    profile = resolve_scanner(scanner, rng_scanner)
    noise_sd = float(rng_scanner.uniform(*profile.noise_sd_hu))
    grid = sample_grid(rng_grid, shape, spacing)
    anatomy = sample_anatomy(rng_anatomy, grid)

    sections = ChestSections(anatomy, grid)
    coarse_grid = grid.coarsened(_DESIGN_STEP_MM)
    coarse = ChestSections(anatomy, coarse_grid)
    coarse_classes = coarse.class_slab(0, coarse_grid.shape[0])

    solid, airways = central_tubes(anatomy, grid)
    h = float(min(grid.spacing[:2]))
    points = _lobe_points(rng_vessels, coarse_grid, coarse_classes)
    vessels = lobe_trees(
        rng_vessels,
        points,
        _hila(anatomy),
        total_points=sum(len(p) for p in points.values()),
        hilum_radius=5.5,
        min_radius=max(0.6, 0.5 * h),
        value=anatomy.blood_hu,
    )
    painters = (
        TubePainter(solid.split(16.0), grid),
        TubePainter(vessels.split(12.0), grid),
        TubePainter(airways.split(12.0), grid),
    )
    class_map = _class_map(sections, painters[0], grid)

    # The findings are drawn for the severity asked for; should the rendered involvement land
    # on the other side of the rule (a lobe of a few voxels on a tiny grid), draw them again.
    for _attempt in range(8):
        design = sample_design(rng_design, severity)
        field = LesionField(design, coarse, rng_design)
        field.bind(grid)
        levels = thresholds(design, _field_histogram(class_map, field, grid))
        rendered = _render(grid, sections, class_map, painters, design, field, levels, profile, noise_sd, rng_noise)
        involvement = _lobe_involvement(rendered)
        scores = {lobe: lobe_severity_score(p) for lobe, p in involvement.items()}
        total = int(sum(scores.values()))
        if severity is None or is_severe(total) == (severity == "severe"):
            break
    else:  # pragma: no cover - needs eight unlucky draws in a row
        raise RuntimeError(f"seed {seed}: could not render findings that are {severity}")

    volume = Volume(hu=rendered.hu, spacing=grid.spacing, origin=grid.origin, direction=IDENTITY_DIRECTION)
    return Phantom(
        seed=seed,
        volume=volume,
        class_map=class_map,
        lesion_mask=rendered.lesion_mask,
        consolidation_mask=rendered.consolidation_mask,
        involvement_percent=involvement,
        lobe_scores=scores,
        ct_severity_score=total,
        severe=is_severe(total),
        scanner=profile,
        noise_sd_hu=noise_sd,
        anatomy=anatomy,
        design=design,
    )
