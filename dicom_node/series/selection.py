"""Series selection: which frames of a series may enter the volume, and why the others may not.

Only axial ORIGINAL/PRIMARY CT images enter. Out, each with a reason: objects that are not CT
images (dose reports, secondary captures, ...), localizers, DERIVED or SECONDARY images
(reformats, MIPs), frames whose plane is not axial (normal more than ``AXIAL_MAX_TILT_DEG`` from
the patient's z axis: coronal and sagittal reformats; gantry tilts up to that angle stay in),
frames missing their geometry, and frames on an image grid (orientation, size, pixel spacing)
other than the series' majority. A series with fewer than ``MIN_SLICES`` usable frames is skipped
with its reason.

Slices dropped for their own geometry (``DROPPED_SLICE_REASONS``: another grid, not axial, no or
a bad geometry) are part of the scan: when they are more than ``MAX_DROPPED_SHARE`` (10 %) of
the slices, reconstruction fails the series with that reason rather than measure part of a chest;
fewer are left out and stated (``status``, ``findings.json``, the QC). An ``Exclusion`` of another
grid says how it differs (``detail``: "other image size 128x128", "other pixel spacing ...").
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dicom_node.series.frames import CT_STORAGE_CLASSES, Frame

MIN_SLICES = 8
AXIAL_MAX_TILT_DEG = 35.0
DROPPED_SLICE_REASONS = frozenset({"other_image_grid", "not_axial", "missing_geometry", "bad_orientation"})
MAX_DROPPED_SHARE = 0.10


@dataclass(frozen=True)
class Exclusion:
    sop_instance_uid: str
    frame_number: int | None
    reason: str
    detail: str | None = None  # how it differs, in words (no patient data): "other image size 128x128"

    def describe(self) -> str:
        return self.detail or self.reason.replace("_", " ")


def grid_difference(frame: Frame, majority: tuple) -> str:
    """How ``frame``'s image grid differs from the ``majority`` grid key, in words."""
    orientation, rows, columns, spacing = grid_key(frame)
    if (rows, columns) != (majority[1], majority[2]):
        return f"other image size {columns}x{rows}"
    if spacing != majority[3]:
        return "other pixel spacing " + " x ".join(f"{v:g}" for v in spacing) + " mm"
    if orientation != majority[0]:
        return "other orientation"
    return "other image grid"


@dataclass(frozen=True)
class Selection:
    usable: list[Frame]
    excluded: list[Exclusion]
    skip_reason: str | None  # None: enough usable frames for a volume

    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(e.reason for e in self.excluded))


def exclusion_reason(frame: Frame) -> str | None:
    """Why a frame cannot enter the volume on its own merits, or None."""
    if frame.sop_class_uid not in CT_STORAGE_CLASSES:
        return "not_ct_image"
    if "LOCALIZER" in frame.image_type:
        return "localizer"
    if frame.image_type[:2] != ("ORIGINAL", "PRIMARY"):
        return "not_original_primary"
    if frame.position is None or frame.orientation is None or frame.pixel_spacing is None:
        return "missing_geometry"
    if frame.rows < 1 or frame.columns < 1:
        return "missing_geometry"
    if not (np.isfinite(frame.pixel_spacing).all() and min(frame.pixel_spacing) > 0):
        return "missing_geometry"
    row, col = np.asarray(frame.orientation[:3]), np.asarray(frame.orientation[3:])
    if not (0.99 < np.linalg.norm(row) < 1.01 and 0.99 < np.linalg.norm(col) < 1.01 and abs(row @ col) < 0.01):
        return "bad_orientation"
    if abs(frame.normal[2]) < math.cos(math.radians(AXIAL_MAX_TILT_DEG)):
        return "not_axial"
    return None


def grid_key(frame: Frame) -> tuple:
    """Frames on one image grid share this key (orientation to 1e-3, size, spacing to 1e-3 mm)."""
    return (
        tuple(round(v, 3) + 0.0 for v in frame.orientation or ()),
        frame.rows,
        frame.columns,
        tuple(round(v, 3) for v in frame.pixel_spacing or ()),
    )


def select_frames(frames: list[Frame], min_slices: int = MIN_SLICES) -> Selection:
    """Split a series' frames into usable and excluded (with reasons)."""
    usable, excluded = [], []
    for f in frames:
        why = exclusion_reason(f)
        if why is None:
            usable.append(f)
        else:
            excluded.append(Exclusion(f.sop_instance_uid, f.frame_number, why))
    if usable:
        grids = Counter(grid_key(f) for f in usable)
        majority = grids.most_common(1)[0][0]
        keep = [f for f in usable if grid_key(f) == majority]
        excluded += [
            Exclusion(f.sop_instance_uid, f.frame_number, "other_image_grid", grid_difference(f, majority))
            for f in usable
            if grid_key(f) != majority
        ]
        usable = keep
    skip = None
    if len(usable) < min_slices:
        counts = Counter(e.reason for e in excluded)
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        skip = f"too few usable slices: {len(usable)} < {min_slices}" + (f" (excluded: {detail})" if detail else "")
    return Selection(usable=usable, excluded=excluded, skip_reason=skip)
