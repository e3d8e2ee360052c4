"""Small synthetic CT series written with pydicom, for ingest tests (geometry under full control).

``write_ct_series(folder, hu, ...)`` writes one CT Image Storage file per slice of ``hu`` (z, y, x)
and returns the paths in slice order. Options cover what reconstruction must handle: signed or
unsigned storage with a rescale, gantry tilt (orientation tilted about the x axis while the table
moves along z), an acquisition number, explicit or implicit VR, and image type.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

PYDICOM_ROOT = "1.2.826.0.1.3680043.8.498."


def phantom_hu(n: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    """A body-like HU volume: air outside, soft tissue body, two dark lungs, some noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:n, 0:size, 0:size]
    c = (size - 1) / 2
    hu = np.full((n, size, size), -1000.0)
    body = ((x - c) / (0.45 * size)) ** 2 + ((y - c) / (0.38 * size)) ** 2 < 1
    hu[body] = 40
    for side in (-1, 1):
        lung = ((x - c - side * 0.2 * size) / (0.15 * size)) ** 2 + ((y - c) / (0.25 * size)) ** 2 < 1
        hu[lung] = -850
    hu += rng.normal(0, 10, hu.shape) + 3 * z
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def write_ct_series(
    folder: str | Path,
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    origin: tuple[float, float, float] = (-12.0, -10.0, -100.0),
    tilt_deg: float = 0.0,
    signed: bool = True,
    slope: float = 1.0,
    intercept: float | None = None,
    acquisition_number: int | None = 1,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    sop_uids: list[str] | None = None,
    implicit_vr: bool = False,
    first_instance_number: int = 1,
    name_prefix: str = "ct",
) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = hu.shape
    study_uid = study_uid or generate_uid(prefix=PYDICOM_ROOT)
    series_uid = series_uid or generate_uid(prefix=PYDICOM_ROOT)
    frame_of_reference_uid = frame_of_reference_uid or generate_uid(prefix=PYDICOM_ROOT)
    if intercept is None:
        intercept = 0.0 if signed else -1024.0
    t = math.radians(tilt_deg)
    row_cos = (1.0, 0.0, 0.0)
    col_cos = (0.0, math.cos(t), math.sin(t))
    table_step = spacing[2] / math.cos(t)  # the table moves along z; planes are spacing[2] apart
    stored = np.round((hu.astype(np.float64) - intercept) / slope)
    if signed:
        stored = stored.astype(np.int16)
    else:
        if stored.min() < 0:
            raise ValueError("unsigned storage needs hu >= intercept")
        stored = stored.astype(np.uint16)
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uids[k] if sop_uids else generate_uid(prefix=PYDICOM_ROOT)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.Modality = "CT"
        ds.PatientName = "Test^Synthetic"
        ds.PatientID = "SYN-0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20250101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.InstanceNumber = first_instance_number + k
        if acquisition_number is not None:
            ds.AcquisitionNumber = acquisition_number
        ds.Manufacturer = "m2unet-tests"
        ds.ImageType = list(image_type)
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (origin[0], origin[1], origin[2] + k * table_step)]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.GantryDetectorTilt = f"{tilt_deg:g}"
        ds.KVP = "120"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if signed else 12 if stored.max() < 4096 else 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"{name_prefix}{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_ct(
    path: str | Path,
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    origin: tuple[float, float, float] = (-12.0, -10.0, -100.0),
    frame_order: list[int] | None = None,
    intercept: float = -1024.0,
) -> Path:
    """One Enhanced CT Image Storage instance holding ``hu``'s slices as frames, stored in
    ``frame_order`` (default: slice order), positions and rescale in the functional groups."""
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, rows, cols = hu.shape
    order = list(range(n)) if frame_order is None else list(frame_order)
    stored = np.round(hu.astype(np.float64) - intercept).astype(np.uint16)
    ds = Dataset()
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=PYDICOM_ROOT)
    ds.StudyInstanceUID = generate_uid(prefix=PYDICOM_ROOT)
    ds.SeriesInstanceUID = generate_uid(prefix=PYDICOM_ROOT)
    ds.FrameOfReferenceUID = generate_uid(prefix=PYDICOM_ROOT)
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = "Test^Enhanced", "SYN-0002"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0

    def item(**kw) -> Dataset:
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([item(PixelSpacing=[spacing[1], spacing[0]], SliceThickness=spacing[2])])
    shared.PlaneOrientationSequence = Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    shared.PixelValueTransformationSequence = Sequence(
        [item(RescaleIntercept=f"{intercept:g}", RescaleSlope="1", RescaleType="HU")]
    )
    shared.CTImageFrameTypeSequence = Sequence([item(FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"])])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in order:
        fg = Dataset()
        fg.PlanePositionSequence = Sequence(
            [item(ImagePositionPatient=[origin[0], origin[1], origin[2] + k * spacing[2]])]
        )
        per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(stored[order]).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path
