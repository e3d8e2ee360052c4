"""A phantom as a DICOM CT series (CT Image Storage, one instance per slice) or as NIfTI.

The series is what a scanner would send: patient, general study, general series, frame of
reference, general equipment, general image, image plane, image pixel, CT image, VOI LUT and SOP
common modules with every Type 1 and Type 2 attribute, so ``dciodvfy`` reports no errors. Pixels
are stored as the phantom's scanner profile says (signed 16 bit, or unsigned with a rescale
intercept of -1024); the rescale always gives back the phantom's HU exactly. Instance numbers run
from the head down (1 is the most superior slice), as most scanners number them; the node sorts by
position anyway.

UIDs are deterministic: derived from the phantom's case key (seed, grid, scanner, severity), so the
same phantom written twice is the same study, and the same series sent twice is recognised as such.
Every instance says it is synthetic (Image Comments, Study and Series Description).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    UID,
    generate_uid,
)

from m2unet.phantom import GENERATOR_VERSION, Phantom

_EPOCH = dt.datetime(2020, 2, 1, 8, 0, 0)
SYNTHETIC_NOTE = "Synthetic chest CT phantom (m2unet), not patient data"


def _uid(phantom: Phantom, *parts: str) -> str:
    return generate_uid(entropy_srcs=[phantom.case_key, *parts])


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text if len(text) <= 16 else f"{value:.6g}"


_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def _is_uid(text: str) -> bool:
    return isinstance(text, str) and len(text) <= 64 and _UID_PATTERN.fullmatch(text) is not None


def default_patient_id(phantom: Phantom) -> str:
    return f"PHANTOM-{phantom.seed:06d}"


def _check_transfer_syntax(transfer_syntax) -> UID:
    ts = UID(str(transfer_syntax))
    if not ts.is_transfer_syntax:
        raise ValueError(f"transfer_syntax = {str(transfer_syntax)!r} is not a transfer syntax UID")
    if not ts.is_little_endian:
        raise ValueError(f"transfer_syntax = {ts.name!r}: big endian is not written")
    return ts


def storage(phantom: Phantom) -> tuple[np.dtype, float]:
    """How the scanner stores pixels: (stored dtype, rescale intercept); raises ``ValueError``
    when the phantom's HU do not fit."""
    profile = phantom.scanner
    intercept = float(profile.rescale_intercept)
    if profile.pixel_representation:
        lo, hi, dtype = -32768, 32767, np.dtype(np.int16)
    else:
        lo, hi, dtype = 0, 65535, np.dtype(np.uint16)
    hu = phantom.volume.hu
    hu_min, hu_max = float(hu.min()), float(hu.max())
    if hu_min - intercept < lo or hu_max - intercept > hi:
        raise ValueError(
            f"volume HU {hu_min:g}..{hu_max:g} do not fit the scanner {profile.name!r}'s storage "
            f"(pixel representation {profile.pixel_representation}, intercept {intercept:g})"
        )
    return dtype, intercept


def stored_slice(phantom: Phantom, k: int, dtype: np.dtype, intercept: float) -> np.ndarray:
    """Slice ``k`` (z index) as stored pixel values."""
    hu = phantom.volume.hu[k]
    if not np.issubdtype(hu.dtype, np.integer):
        hu = np.rint(hu)
    return np.ascontiguousarray((hu.astype(np.int32) - int(intercept)).astype(dtype))


def _header(
    phantom: Phantom,
    study_instance_uid: str,
    series_instance_uid: str,
    patient_name: str,
    patient_id: str,
    intercept: float,
) -> Dataset:
    """The attributes every instance of the series shares."""
    profile = phantom.scanner
    v = phantom.volume
    nz, ny, nx = v.shape
    sx, sy, sz = v.spacing
    when = _EPOCH + dt.timedelta(days=phantom.seed % 365, minutes=(phantom.seed * 7) % 480)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # general study
    ds.StudyInstanceUID = study_instance_uid
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"PH{phantom.seed % 10**8:08d}"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic chest CT phantom"
    # general series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = 1
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = f"Chest {sz:.3g} mm (synthetic, {phantom.severity})"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    # frame of reference
    ds.FrameOfReferenceUID = _uid(phantom, study_instance_uid, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    # general equipment
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model_name
    ds.SoftwareVersions = profile.software_versions
    ds.InstitutionName = "m2unet synthetic phantoms"
    ds.StationName = "PHANTOM"
    if profile.outside_fov_hu <= -2000:
        value = int(profile.outside_fov_hu - intercept)
        ds.add_new(0x00280120, "SS" if profile.pixel_representation else "US", value)  # PixelPaddingValue
    # general image / acquisition
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = date
    ds.ContentDate = date
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = f"{SYNTHETIC_NOTE}; seed {phantom.seed}, generator {GENERATOR_VERSION}"
    # image plane
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceThickness = _ds(sz)
    # image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = profile.pixel_representation
    # CT image
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = _ds(profile.kvp)
    ds.ConvolutionKernel = profile.convolution_kernel
    ds.ReconstructionDiameter = _ds(min(nx * sx, ny * sy))
    ds.GantryDetectorTilt = "0"
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 500
    # VOI LUT: lung and mediastinal windows
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = ["1500", "400"]
    ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    return ds


def phantom_datasets(
    phantom: Phantom,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_name: str = "PHANTOM^CHEST",
    patient_id: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Iterator[Dataset]:
    """Yield the series' CT Image Storage datasets (with file meta), most superior slice first."""
    ts = _check_transfer_syntax(transfer_syntax)
    study = study_instance_uid or _uid(phantom, "study")
    series = series_instance_uid or _uid(phantom, study, "series")
    for name, uid in (("study_instance_uid", study), ("series_instance_uid", series)):
        if not _is_uid(uid):
            raise ValueError(f"{name} = {uid!r} is not a valid UID")
    pid = default_patient_id(phantom) if patient_id is None else patient_id
    dtype, intercept = storage(phantom)
    header = _header(phantom, study, series, patient_name, pid, intercept)
    v = phantom.volume
    nz = v.shape[0]
    ox, oy, oz = v.origin
    sz = v.spacing[2]
    start = _EPOCH + dt.timedelta(days=phantom.seed % 365, minutes=(phantom.seed * 7) % 480, seconds=5)
    for number, k in enumerate(range(nz - 1, -1, -1), start=1):
        ds = copy.deepcopy(header)
        sop = _uid(phantom, series, "instance", str(k))
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = number
        when = start + dt.timedelta(milliseconds=50 * number)
        ds.AcquisitionTime = when.strftime("%H%M%S.%f")
        ds.ContentTime = when.strftime("%H%M%S.%f")
        z = oz + k * sz
        ds.ImagePositionPatient = [_ds(ox), _ds(oy), _ds(z)]
        ds.SliceLocation = _ds(z)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        pixels = stored_slice(phantom, k, dtype, intercept)
        if not ts.is_encapsulated:
            ds.file_meta.TransferSyntaxUID = ts
            ds.PixelData = pixels.tobytes()
        else:
            ds.compress(ts, pixels, generate_instance_uid=False)
        yield ds


def write_ct_series(phantom: Phantom, folder, **kwargs) -> list[Path]:
    """Write the series (one file per slice, ``IM0001.dcm`` ...) into ``folder``; return the paths.

    Keyword arguments are those of :func:`phantom_datasets`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in phantom_datasets(phantom, **kwargs):
        path = folder / f"IM{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(phantom: Phantom, folder, *, stem: str | None = None) -> tuple[Path, Path]:
    """Write the volume (HU, int16) and its 7-class map as NIfTI; return (image, mask) paths.

    Files are ``<stem>.nii.gz`` and ``<stem>_classes.nii.gz`` (stem ``phantom-<seed>``), with the
    volume's geometry; labels are :class:`m2unet.labels.SegmentationClass`.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or f"phantom-{phantom.seed:06d}"
    image = phantom.volume.to_sitk()
    mask = sitk.GetImageFromArray(phantom.class_map)
    mask.CopyInformation(image)
    image_path = folder / f"{stem}.nii.gz"
    mask_path = folder / f"{stem}_classes.nii.gz"
    sitk.WriteImage(image, str(image_path), useCompression=True)
    sitk.WriteImage(mask, str(mask_path), useCompression=True)
    return image_path, mask_path
