"""A quality check of every result: what a reader should not trust, in plain words.

:func:`quality_check` looks at what a result holds (the source volume and its geometry, the lobe
map, the quantification, the severity call) and returns a :class:`QualityCheck`: one
:class:`Check` per question, each passed or not with a one-line reason, and ``passed`` when all
passed. A failed check never blocks a result; it tells the reader what not to trust. Details name
numbers and anatomy only, never anything about the patient.

The checks and their limits (our choices, reasons beside each):

- ``lung_coverage``: the lungs lie inside the scanned range and the field of view. The lung (the
  union of the lobes) on the first or last slice covering more than ``END_SLICE_MAX_FRACTION``
  (1 %) of its largest cross-section means the apex or the base is probably cut off. A strict
  "no lung voxel on an end slice" would fail 6 of the 40 real annotations
  (``qc_reference.json``), where the lung grazes an end slice with at most 0.7 % of its largest
  cross-section. In-plane: a slice is cut by the image edge when the lung runs along the edge for
  ``EDGE_CONTACT_MM`` (10 mm) or more; the check fails when that holds on at least
  ``EDGE_SLICE_FRACTION`` (5 %) of the lung's slices (the annotations never touch the edge).
- ``slice_thickness``: at most ``MAX_SLICE_THICKNESS_MM`` (5 mm). The paper's data and the node's
  training use slices up to about 5 mm; thicker slices blur fissures and faint ground glass.
  When the source gives no thickness the slice spacing stands in, and the detail says so.
- ``lung_volume``: the five lobes together in ``LUNG_VOLUME_ML`` (1.5-9 L). The 40 annotations
  span 2.8-8.2 L, but they are inspiratory scans of adults; expiratory scans, small adults and
  restrictive or collapsed lungs go lower, so the floor is widened to 1.5 L; the ceiling is the
  annotations' maximum plus about 10 % (adult total lung capacity rarely exceeds 9 L).
- ``lobe_shares``: each lobe's share of the lung within the range of the 40 real annotations,
  widened by ``SHARE_MARGIN`` (15 %) of each bound: the range of 40 samples covers about 95 % of a
  population on average ((n - 1) / (n + 1)), so a normal chest seldom falls outside the widened range,
  while a lobe painted into its neighbour (e.g. a right upper lobe at 6 % instead of about 20 %)
  does. Reference numbers: ``m2unet/qc_reference.json`` (``scripts/lobe_share_reference.py``).
- ``lobe_order``: the lobes where anatomy puts them, by their centroids in patient coordinates
  (LPS: x grows towards the patient's left, y towards the back, z towards the head): each upper
  lobe above the lower lobe of its side, every right lobe to the right of every left lobe, the
  right middle lobe in front of the right lower lobe. Absent lobes are left out.
- ``severity_consistency``: the call against the measured involvement (total CT severity score
  0-25, :mod:`m2unet.quantify`): "severe" with a score below ``SEVERE_CALL_MIN_SCORE`` (10) or
  "non-severe" with a score of ``SEVERE_TOTAL_SCORE`` (18, the project's severe rule,
  :mod:`m2unet.phantom_severity`) or more fails. Between 10 and 17 either call can be right.
- ``excluded_instances`` (only when some were): source images left out of the volume by series
  assembly (other acquisitions, other image grids, localizers, duplicates...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Mapping

import numpy as np

from m2unet.labels import Lobe
from m2unet.phantom_severity import SEVERE_TOTAL_SCORE
from m2unet.volume import Volume

END_SLICE_MAX_FRACTION = 0.01  # of the lung's largest cross-section, on the first or last slice
EDGE_CONTACT_MM = 10.0  # lung along the image edge on one slice
EDGE_SLICE_FRACTION = 0.05  # of the slices holding lung
MAX_SLICE_THICKNESS_MM = 5.0
THICKNESS_TOLERANCE_MM = 0.05  # 5.0 mm written as 5.04 is still 5 mm
LUNG_VOLUME_ML = (1500.0, 9000.0)
SHARE_MARGIN = 0.15  # relative widening of each bound of the annotations' share range
SEVERE_CALL_MIN_SCORE = 10

REFERENCE_FILE = "qc_reference.json"

# what the summary image says of a failed check, in a few words
SHORT_REASONS = {
    "lung_coverage": "lungs not fully in the field",
    "slice_thickness": "thick slices",
    "lung_volume": "implausible lung volume",
    "lobe_shares": "lobe sizes unlike real chests",
    "lobe_order": "lobes out of place",
    "severity_consistency": "call contradicts measured involvement",
    "excluded_instances": "source images left out",
}


@dataclass(frozen=True)
class Check:
    name: str  # snake_case
    passed: bool
    detail: str  # one line a radiologist reads in a second

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": bool(self.passed), "detail": self.detail}


@dataclass(frozen=True)
class QualityCheck:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def short_reasons(self) -> list[str]:
        return [SHORT_REASONS.get(c.name, c.name.replace("_", " ")) for c in self.failed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "QualityCheck":
        return cls([Check(str(c["name"]), bool(c["passed"]), str(c["detail"])) for c in data["checks"]])


@lru_cache(maxsize=1)
def load_reference() -> dict:
    """The lobe-share and lung-volume reference of the 40 real annotations (package data)."""
    text = resources.files("m2unet").joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def share_limits(reference: Mapping | None = None) -> dict[Lobe, tuple[float, float]]:
    """Per lobe the accepted share range: the annotations' min and max widened by SHARE_MARGIN."""
    reference = reference or load_reference()
    return {
        lobe: (
            reference["lobe_share"][lobe.name.lower()]["min"] * (1 - SHARE_MARGIN),
            reference["lobe_share"][lobe.name.lower()]["max"] * (1 + SHARE_MARGIN),
        )
        for lobe in Lobe
    }


def _patient_points(volume: Volume, index_zyx: np.ndarray) -> np.ndarray:
    """Patient (LPS, mm) coordinates of (n, 3) continuous voxel indices given as (z, y, x)."""
    ijk = np.asarray(index_zyx, dtype=float)[..., ::-1]  # -> (x, y, z) index order
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    return np.asarray(volume.origin, dtype=float) + (ijk * np.asarray(volume.spacing, dtype=float)) @ direction.T


def check_lung_coverage(volume: Volume, lobe_map: np.ndarray) -> Check:
    lung = np.asarray(lobe_map) > 0
    nz = lung.shape[0]
    area = lung.reshape(nz, -1).sum(axis=1)
    if area.max() == 0:
        return Check("lung_coverage", False, "no lung segmented")
    problems = []
    # which end of the scan is the head: the slice with the larger patient z
    ends = _patient_points(volume, np.array([[0, 0, 0], [nz - 1, 0, 0]]))[:, 2]
    head_first = ends[0] > ends[1]
    for k, label in ((0, "first"), (nz - 1, "last")):
        fraction = area[k] / area.max()
        if fraction > END_SLICE_MAX_FRACTION:
            part = "apex" if (k == 0) == head_first else "base"
            problems.append(
                f"lung {part} may be cut off: lung on the {label} slice "
                f"({100 * fraction:.0f} % of its largest cross-section)"
            )
    sx, sy = float(volume.spacing[0]), float(volume.spacing[1])
    contact = (lung[:, 0, :].sum(axis=1) + lung[:, -1, :].sum(axis=1)) * sx + (
        lung[:, :, 0].sum(axis=1) + lung[:, :, -1].sum(axis=1)
    ) * sy
    lung_slices = int((area > 0).sum())
    clipped = int((contact >= EDGE_CONTACT_MM).sum())
    if clipped and clipped >= EDGE_SLICE_FRACTION * lung_slices:
        problems.append(f"lung cut by the image edge on {clipped} of {lung_slices} slices (field of view too small)")
    if problems:
        return Check("lung_coverage", False, "; ".join(problems))
    return Check("lung_coverage", True, "apex, base and both lungs inside the scanned field")


def check_slice_thickness(volume: Volume, slice_thickness_mm: float | None) -> Check:
    if slice_thickness_mm is not None and np.isfinite(slice_thickness_mm) and slice_thickness_mm > 0:
        value, what = float(slice_thickness_mm), "slice thickness"
    else:
        value, what = float(volume.spacing[2]), "slice thickness not given; slice spacing"
    limit = f"at most {MAX_SLICE_THICKNESS_MM:g} mm"
    if value > MAX_SLICE_THICKNESS_MM + THICKNESS_TOLERANCE_MM:
        return Check(
            "slice_thickness",
            False,
            f"{what} {value:g} mm: thicker than the model was built for ({limit}); fissures and faint opacities blur",
        )
    return Check("slice_thickness", True, f"{what} {value:g} mm ({limit})")


def check_lung_volume(quantification) -> Check:
    volume_l = quantification.lung_volume_ml / 1000.0
    low, high = (v / 1000.0 for v in LUNG_VOLUME_ML)
    if not low <= volume_l <= high:
        return Check(
            "lung_volume",
            False,
            f"lung volume {volume_l:.1f} L is outside the plausible {low:g}-{high:g} L for an adult chest",
        )
    return Check("lung_volume", True, f"lung volume {volume_l:.1f} L ({low:g}-{high:g} L)")


def check_lobe_shares(quantification, reference: Mapping | None = None) -> Check:
    reference = reference or load_reference()
    total = quantification.lung_volume_ml
    if total <= 0:
        return Check("lobe_shares", False, "no lung segmented")
    limits = share_limits(reference)
    out = []
    for lobe in Lobe:
        share = quantification.lobes[lobe].volume_ml / total
        low, high = limits[lobe]
        if not low <= share <= high:
            out.append(f"{lobe.display_name} {100 * share:.1f} % of the lung (real chests {100 * low:.0f}-{100 * high:.0f} %)")
    n = reference.get("annotations", 40)
    if out:
        return Check("lobe_shares", False, "; ".join(out))
    return Check("lobe_shares", True, f"every lobe's share of the lung within the range of {n} real chests")


def lobe_centroids(volume: Volume, lobe_map: np.ndarray) -> dict[Lobe, np.ndarray]:
    """Centroid in patient coordinates (LPS, mm) of each lobe present."""
    lobe_map = np.asarray(lobe_map)
    nz, ny, nx = lobe_map.shape
    n_labels = max(Lobe) + 1
    yy, xx = (a.ravel().astype(float) for a in np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"))
    counts = np.zeros(n_labels)
    sums = np.zeros((n_labels, 3))  # (z, y, x) index sums per label
    for z in range(nz):  # slice by slice: no index array the size of the volume
        labels = lobe_map[z].ravel()
        per_label = np.bincount(labels, minlength=n_labels)[:n_labels]
        counts += per_label
        sums[:, 0] += z * per_label
        sums[:, 1] += np.bincount(labels, weights=yy, minlength=n_labels)[:n_labels]
        sums[:, 2] += np.bincount(labels, weights=xx, minlength=n_labels)[:n_labels]
    return {
        lobe: _patient_points(volume, sums[lobe][None] / counts[lobe])[0] for lobe in Lobe if counts[lobe] > 0
    }


def check_lobe_order(volume: Volume, lobe_map: np.ndarray) -> Check:
    c = lobe_centroids(volume, lobe_map)
    if not c:
        return Check("lobe_order", False, "no lung segmented")
    problems = []
    for upper, lower in ((Lobe.RIGHT_UPPER, Lobe.RIGHT_LOWER), (Lobe.LEFT_UPPER, Lobe.LEFT_LOWER)):
        if upper in c and lower in c and not c[upper][2] > c[lower][2]:
            problems.append(f"{upper.display_name} not above {lower.display_name}")
    lefts = [c[lobe][0] for lobe in (Lobe.LEFT_UPPER, Lobe.LEFT_LOWER) if lobe in c]
    rights = [lobe for lobe in (Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE, Lobe.RIGHT_LOWER) if lobe in c]
    misplaced = [lobe for lobe in rights if lefts and not c[lobe][0] < min(lefts)]
    if rights and len(misplaced) == len(rights):
        problems.append("right lobes on the patient's left: sides swapped")
    else:
        problems += [f"{lobe.display_name} not on the patient's right of the left lung" for lobe in misplaced]
    middle, lower = Lobe.RIGHT_MIDDLE, Lobe.RIGHT_LOWER
    if middle in c and lower in c and not c[middle][1] < c[lower][1]:
        problems.append(f"{middle.display_name} not in front of the {lower.display_name}")
    if problems:
        shown = problems[:3] + ([f"and {len(problems) - 3} more"] if len(problems) > 3 else [])
        return Check("lobe_order", False, "; ".join(shown) + " (lobes mixed up?)")
    return Check("lobe_order", True, "upper lobes above lower lobes, right lobes on the right, middle lobe in front")


def check_severity_consistency(severity: str, total_score: int, probability_severe: float | None = None) -> Check:
    p = f" (P = {probability_severe:.2f})" if probability_severe is not None else ""
    score = f"{int(total_score)}/25"
    if severity == "severe" and total_score < SEVERE_CALL_MIN_SCORE:
        return Check(
            "severity_consistency",
            False,
            f"called severe{p} but the measured CT severity score is only {score} "
            f"(severe from {SEVERE_TOTAL_SCORE}/25; under {SEVERE_CALL_MIN_SCORE} contradicts the call)",
        )
    if severity != "severe" and total_score >= SEVERE_TOTAL_SCORE:
        return Check(
            "severity_consistency",
            False,
            f"called non-severe{p} but the measured CT severity score is {score} (severe from {SEVERE_TOTAL_SCORE}/25)",
        )
    return Check("severity_consistency", True, f"call {severity}{p} agrees with the measured CT severity score {score}")


def check_excluded_instances(
    excluded_instances: int, total_instances: int | None, reasons: Mapping[str, int] | None = None
) -> Check:
    n = int(excluded_instances)
    of = f" of {int(total_instances)}" if total_instances else ""
    why = ""
    if reasons:
        why = " (" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(reasons.items())) + ")"
    return Check(
        "excluded_instances",
        False,
        f"{n}{of} source image{'s' if n != 1 else ''} left out of the volume{why}: check the series is complete",
    )


def quality_check(
    volume: Volume,
    lobe_map: np.ndarray,
    quantification,
    severity: str,
    probability_severe: float | None = None,
    *,
    slice_thickness_mm: float | None = None,
    excluded_instances: int = 0,
    total_instances: int | None = None,
    excluded_reasons: Mapping[str, int] | None = None,
    reference: Mapping | None = None,
) -> QualityCheck:
    """Every check of the module docstring on one result.

    ``lobe_map``: :class:`~m2unet.labels.Lobe` labels (z, y, x) on ``volume``'s grid;
    ``quantification``: :class:`m2unet.quantify.Quantification` of that map; ``severity``:
    "severe" | "non-severe"; ``slice_thickness_mm``: the source's Slice Thickness when known;
    ``excluded_instances`` of ``total_instances``: source images series assembly left out
    (``excluded_reasons``: their count per reason), named as a failed check when any.
    """
    lobe_map = np.asarray(lobe_map)
    if lobe_map.shape != volume.shape:
        raise ValueError(f"lobe_map shape {lobe_map.shape} differs from the volume's {volume.shape}")
    checks = [
        check_lung_coverage(volume, lobe_map),
        check_slice_thickness(volume, slice_thickness_mm),
        check_lung_volume(quantification),
        check_lobe_shares(quantification, reference),
        check_lobe_order(volume, lobe_map),
        check_severity_consistency(severity, quantification.total_score, probability_severe),
    ]
    if excluded_instances and excluded_instances > 0:
        checks.append(check_excluded_instances(excluded_instances, total_instances, excluded_reasons))
    return QualityCheck(checks)


__all__ = ["Check", "QualityCheck", "quality_check", "load_reference", "share_limits", "SHORT_REASONS"]
