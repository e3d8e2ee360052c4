"""Reading a folder that holds one CT series into an engine :class:`~m2unet.volume.Volume` (pydicom).

Instances are sorted along the slice normal (from ImageOrientationPatient) by ImagePositionPatient;
the slice spacing is the median distance between neighbours; stored values become HU through
RescaleSlope and RescaleIntercept. A folder holding several series, slices of different size or
orientation, or no image at all is refused with a ``ValueError`` naming the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from m2unet.volume import Volume


@dataclass
class DicomSeries:
    volume: Volume
    sop_instance_uids: list[str]  # per slice, in volume order
    series_instance_uid: str
    frame_of_reference_uid: str | None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def read_dicom_series(folder: str | Path) -> DicomSeries:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of DICOM files")
    headers = []
    for path in _files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "Rows" not in ds:
            continue
        headers.append((path, ds))
    if not headers:
        raise ValueError(f"{folder}: holds no DICOM image with ImagePositionPatient")
    series = {str(ds.SeriesInstanceUID) for _, ds in headers}
    if len(series) > 1:
        raise ValueError(f"{folder}: holds {len(series)} series; give one folder per series")
    orientation = np.array([float(v) for v in headers[0][1].ImageOrientationPatient])
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    rows, columns = int(headers[0][1].Rows), int(headers[0][1].Columns)
    for path, ds in headers:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-4):
            raise ValueError(f"{path}: ImageOrientationPatient differs from the rest of the series")
        if int(ds.Rows) != rows or int(ds.Columns) != columns:
            raise ValueError(f"{path}: Rows/Columns {ds.Rows}x{ds.Columns} differ from {rows}x{columns}")
    positions = [float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for _, ds in headers]
    order = np.argsort(positions, kind="stable")
    headers = [headers[i] for i in order]
    positions = [positions[i] for i in order]
    if len(headers) > 1:
        gaps = np.diff(positions)
        if np.any(gaps < 1e-3):
            raise ValueError(f"{folder}: two instances share a slice position")
        slice_spacing = float(np.median(gaps))
    else:
        slice_spacing = float(getattr(headers[0][1], "SliceThickness", 1.0) or 1.0)
    pixel_spacing = [float(v) for v in headers[0][1].PixelSpacing]  # row spacing (y), column spacing (x)
    hu = np.empty((len(headers), rows, columns), dtype=np.float32)
    for k, (path, _) in enumerate(headers):
        ds = pydicom.dcmread(path)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        hu[k] = ds.pixel_array.astype(np.float32) * slope + intercept
    direction = np.stack([row_dir, col_dir, normal], axis=1)  # columns: x, y, z index axes
    first = headers[0][1]
    if np.abs(hu).max() < 32767:
        hu = hu.astype(np.int16)
    volume = Volume(
        hu=hu,
        spacing=(pixel_spacing[1], pixel_spacing[0], slice_spacing),
        origin=tuple(float(v) for v in first.ImagePositionPatient),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    return DicomSeries(
        volume=volume,
        sop_instance_uids=[str(ds.SOPInstanceUID) for _, ds in headers],
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID) if "FrameOfReferenceUID" in first else None,
    )
