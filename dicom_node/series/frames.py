"""Frames: the per-image geometry and pixel transform of CT instances, single- or multi-frame.

A CT Image Storage instance is one frame; an Enhanced CT Image Storage instance holds many, with
their geometry and rescale in the Shared and Per-frame Functional Groups. :func:`frames_of` turns
either into :class:`Frame` records so that selection and reconstruction see one kind of thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.2")
CT_STORAGE_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE)
MULTIFRAME_CT_CLASSES = (ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE)


@dataclass(frozen=True)
class Frame:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None  # 1-based within a multi-frame instance; None for single-frame
    image_type: tuple[str, ...]
    rows: int
    columns: int
    position: tuple[float, float, float] | None  # Image Position (Patient), mm
    orientation: tuple[float, ...] | None  # Image Orientation (Patient): row then column cosines
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing), mm
    slope: float
    intercept: float
    acquisition_number: int | None
    sort_key: str  # tie-break for frames at one position: the SOP Instance UID and frame number

    @property
    def normal(self) -> np.ndarray:
        assert self.orientation is not None
        row = np.asarray(self.orientation[:3], float)
        col = np.asarray(self.orientation[3:], float)
        n = np.cross(row, col)
        return n / np.linalg.norm(n)


def _floats(value, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def _first(seq_holder: Dataset | None, seq: str) -> Dataset | None:
    if seq_holder is None:
        return None
    s = seq_holder.get(seq)
    return s[0] if s else None


def _image_type(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).strip().upper() for v in value)


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def frames_of(ds: Dataset, path: Path) -> list[Frame]:
    """The frames of one instance, in stored order (pixel data is not touched)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    rows, cols = _int_or_none(ds.get("Rows")) or 0, _int_or_none(ds.get("Columns")) or 0
    acq = _int_or_none(ds.get("AcquisitionNumber"))
    image_type = _image_type(ds.get("ImageType"))
    if sop_class not in MULTIFRAME_CT_CLASSES:
        return [
            Frame(
                path=path,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_uid,
                frame_number=None,
                image_type=image_type,
                rows=rows,
                columns=cols,
                position=_floats(ds.get("ImagePositionPatient"), 3),
                orientation=_floats(ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
                slope=float(ds.get("RescaleSlope", 1) or 1),
                intercept=float(ds.get("RescaleIntercept", 0) or 0),
                acquisition_number=acq,
                sort_key=sop_uid,
            )
        ]
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n = _int_or_none(ds.get("NumberOfFrames")) or len(per_frame)
    frames = []
    for i in range(n):
        groups = per_frame[i] if i < len(per_frame) else None

        def item(seq: str) -> Dataset | None:
            return _first(groups, seq) or _first(shared, seq)

        plane_pos, plane_ori = item("PlanePositionSequence"), item("PlaneOrientationSequence")
        measures, transform = item("PixelMeasuresSequence"), item("PixelValueTransformationSequence")
        frame_type = item("CTImageFrameTypeSequence")
        frames.append(
            Frame(
                path=path,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_uid,
                frame_number=i + 1,
                image_type=_image_type(frame_type.get("FrameType")) if frame_type is not None else image_type,
                rows=rows,
                columns=cols,
                position=_floats(plane_pos.get("ImagePositionPatient") if plane_pos else None, 3),
                orientation=_floats(plane_ori.get("ImageOrientationPatient") if plane_ori else None, 6),
                pixel_spacing=_floats(measures.get("PixelSpacing") if measures else None, 2),
                slope=float(transform.get("RescaleSlope", 1) or 1) if transform else float(ds.get("RescaleSlope", 1) or 1),
                intercept=float(transform.get("RescaleIntercept", 0) or 0)
                if transform
                else float(ds.get("RescaleIntercept", 0) or 0),
                acquisition_number=acq,
                sort_key=f"{sop_uid}#{i + 1:06d}",
            )
        )
    return frames
