"""Lobe masks from a DICOM Segmentation: a SEG a radiologist corrected in a viewer becomes training data.

Each segment is matched to one of the seven classes of :class:`m2unet.labels.SegmentationClass` by
its words: the segment label and the code meanings of its segmented property type, its modifiers
and its anatomic region ("right upper lobe", "Upper lobe of left lung", "lingula", ...). Each frame
goes to the image slice at its ImagePositionPatient (within half a slice), so the SEG may cover any
subset of slices; frames must match the image's rows and columns. BINARY, FRACTIONAL (threshold at
half the maximum) and LABELMAP segmentations are read. A segment that names no lobe, a frame that
lies on no slice, or a SEG of another size is refused with a ``ValueError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from m2unet.labels import SegmentationClass
from m2unet.volume import Volume

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"

# SNOMED CT concept ids of the lobes (and the lingula), for SEGs that code rather than name them
LOBE_CODES: dict[str, SegmentationClass] = {
    "45653009": SegmentationClass.RIGHT_UPPER_LOBE,
    "72481006": SegmentationClass.RIGHT_MIDDLE_LOBE,
    "266005": SegmentationClass.RIGHT_LOWER_LOBE,
    "45729009": SegmentationClass.LEFT_UPPER_LOBE_UPPER_DIVISION,
    "90572001": SegmentationClass.LEFT_LOWER_LOBE,
    "70253006": SegmentationClass.LINGULA,
}


def _words(segment) -> tuple[str, set[str]]:
    parts = [str(getattr(segment, "SegmentLabel", ""))]
    codes: set[str] = set()
    for attribute in ("SegmentedPropertyTypeCodeSequence", "AnatomicRegionSequence", "SegmentedPropertyCategoryCodeSequence"):
        for item in getattr(segment, attribute, []) or []:
            parts.append(str(getattr(item, "CodeMeaning", "")))
            codes.add(str(getattr(item, "CodeValue", "")))
            for modifier_attribute in ("SegmentedPropertyTypeModifierCodeSequence", "AnatomicRegionModifierSequence"):
                for modifier in getattr(item, modifier_attribute, []) or []:
                    parts.append(str(getattr(modifier, "CodeMeaning", "")))
    return " ".join(parts).lower(), codes


def segment_class(segment) -> SegmentationClass:
    """The class a SEG segment describes (see the module doc); ``ValueError`` if it names no lobe."""
    text, codes = _words(segment)
    if "lingula" in text:
        return SegmentationClass.LINGULA
    right, left = "right" in text, "left" in text
    if "middle" in text:
        return SegmentationClass.RIGHT_MIDDLE_LOBE
    if "upper" in text or "superior" in text:
        if right and not left:
            return SegmentationClass.RIGHT_UPPER_LOBE
        if left and not right:
            return SegmentationClass.LEFT_UPPER_LOBE_UPPER_DIVISION
    if "lower" in text or "inferior" in text:
        if right and not left:
            return SegmentationClass.RIGHT_LOWER_LOBE
        if left and not right:
            return SegmentationClass.LEFT_LOWER_LOBE
    for code in codes:
        if code in LOBE_CODES:
            return LOBE_CODES[code]
    number = getattr(segment, "SegmentNumber", "?")
    raise ValueError(f"segment {number} ({getattr(segment, 'SegmentLabel', '')!r}) names no lung lobe")


def _frame_position(ds, index: int) -> np.ndarray:
    groups = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    for source in ([groups[index]] if groups else []) + list(getattr(ds, "SharedFunctionalGroupsSequence", []) or []):
        if "PlanePositionSequence" in source:
            return np.array([float(v) for v in source.PlanePositionSequence[0].ImagePositionPatient])
    raise ValueError(f"frame {index + 1} has no ImagePositionPatient")


def _frame_segment(ds, index: int) -> int | None:
    groups = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    for source in ([groups[index]] if groups else []) + list(getattr(ds, "SharedFunctionalGroupsSequence", []) or []):
        if "SegmentIdentificationSequence" in source:
            return int(source.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    return None


def read_seg_class_map(path: str | Path, volume: Volume) -> np.ndarray:
    """The 7-class map (uint8, the shape of ``volume``) that the SEG at ``path`` draws on it."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises several kinds on a non-DICOM file
        raise ValueError(f"{path}: not a readable DICOM file ({exc})") from None
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class not in (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE):
        raise ValueError(f"{path}: SOPClassUID {sop_class!r} is not a DICOM Segmentation")
    depth, rows, columns = volume.shape
    if int(ds.Rows) != rows or int(ds.Columns) != columns:
        raise ValueError(
            f"{path}: mask shape {int(ds.Rows)}x{int(ds.Columns)} differs from the image's {rows}x{columns}"
        )
    try:
        classes = {int(s.SegmentNumber): segment_class(s) for s in ds.SegmentSequence}
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    kind = str(getattr(ds, "SegmentationType", "BINARY")).upper()
    origin = np.asarray(volume.origin, dtype=np.float64)
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    out = np.zeros(volume.shape, dtype=np.uint8)
    for index in range(frames.shape[0]):
        try:
            position = _frame_position(ds, index)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        voxel = direction.T @ (position - origin) / spacing  # (x, y, z) index of the frame's origin
        z = int(round(voxel[2]))
        if abs(voxel[2] - z) > 0.5 or not 0 <= z < depth or abs(voxel[0]) > 0.5 or abs(voxel[1]) > 0.5:
            raise ValueError(f"{path}: frame {index + 1} at {position.tolist()} lies on no slice of the image")
        frame = frames[index]
        if kind == "LABELMAP" or sop_class == LABEL_MAP_SEGMENTATION_STORAGE:
            for number, cls in classes.items():
                out[z][frame == number] = int(cls)
            continue
        number = _frame_segment(ds, index)
        if number not in classes:
            raise ValueError(f"{path}: frame {index + 1} refers to unknown segment {number}")
        if kind == "FRACTIONAL":
            on = frame >= float(getattr(ds, "MaximumFractionalValue", 255)) / 2.0
        else:
            on = frame > 0
        out[z][on] = int(classes[number])
    return out
