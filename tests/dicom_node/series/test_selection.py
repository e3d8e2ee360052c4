"""Series selection: only axial ORIGINAL/PRIMARY CT frames, reasons for the rest, too-few skip."""

from pathlib import Path

import pydicom

from dicom_node.series.frames import frames_of
from dicom_node.series.selection import MIN_SLICES, select_frames
from tests.support.ct_series import phantom_hu, write_ct_series


def frames(paths):
    out = []
    for p in paths:
        out += frames_of(pydicom.dcmread(p, stop_before_pixels=True), Path(p))
    return out


def edit(path, **attrs):
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_reasons_for_each_kind_of_unusable_object(tmp_path):
    files = write_ct_series(tmp_path, phantom_hu(16, 8))
    edit(files[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    edit(files[1], ImageType=["DERIVED", "SECONDARY", "AXIAL"])
    edit(files[2], SOPClassUID=pydicom.uid.SecondaryCaptureImageStorage)
    edit(files[3], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])  # coronal
    edit(files[4], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])  # sagittal
    ds = pydicom.dcmread(files[5])
    del ds.ImagePositionPatient
    ds.save_as(files[5])
    edit(files[6], PixelSpacing=[0.5, 0.5])  # another grid
    sel = select_frames(frames(files))
    assert sel.reason_counts() == {
        "localizer": 1,
        "not_original_primary": 1,
        "not_ct_image": 1,
        "not_axial": 2,
        "missing_geometry": 1,
        "other_image_grid": 1,
    }
    assert len(sel.usable) == 9 and sel.skip_reason is None


def test_tilted_axial_is_still_axial(tmp_path):
    files = write_ct_series(tmp_path, phantom_hu(MIN_SLICES, 8), tilt_deg=25)
    sel = select_frames(frames(files))
    assert len(sel.usable) == MIN_SLICES and not sel.excluded


def test_too_few_usable_slices_gives_a_skip_reason(tmp_path):
    files = write_ct_series(tmp_path, phantom_hu(MIN_SLICES, 8))
    edit(files[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    sel = select_frames(frames(files))
    assert sel.skip_reason == f"too few usable slices: {MIN_SLICES - 1} < {MIN_SLICES} (excluded: localizer 1)"
