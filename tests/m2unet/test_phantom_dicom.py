"""A phantom written as a DICOM CT series (valid for dciodvfy, read back exactly) and as NIfTI."""

import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, RLELossless

from m2unet.phantom import make_phantom
from m2unet.phantom_dicom import phantom_datasets, write_ct_series, write_nifti

SHAPE = (12, 96, 96)


@pytest.fixture(scope="module", params=["ge-brightspeed", "siemens-perspective"])
def phantom(request):
    # GE: signed pixels with padding outside the field of view; Siemens: unsigned, intercept -1024
    return make_phantom(31, shape=SHAPE, scanner=request.param)


def read_series(paths):
    datasets = [pydicom.dcmread(p) for p in paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    return datasets, hu


def dciodvfy_errors(path):
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    return [line for line in out.splitlines() if line.startswith("Error") or " Error " in line]


def test_dciodvfy_reports_no_errors(phantom, tmp_path):
    paths = write_ct_series(phantom, tmp_path)
    assert len(paths) == SHAPE[0]
    for path in (paths[0], paths[len(paths) // 2]):
        assert dciodvfy_errors(path) == []


def test_read_back_gives_the_same_hu_and_geometry(phantom, tmp_path):
    paths = write_ct_series(phantom, tmp_path)
    datasets, hu = read_series(paths)
    assert np.array_equal(hu, phantom.volume.hu)
    sx, sy, sz = phantom.volume.spacing
    ox, oy, oz = phantom.volume.origin
    first = datasets[0]
    assert first.SOPClassUID == CTImageStorage
    assert first.Modality == "CT"
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([sy, sx], abs=1e-5)
    for k, ds in enumerate(datasets):
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([ox, oy, oz + k * sz], abs=1e-4)
    # one study, one series, one frame of reference; unique instances; 1 = most superior slice
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert int(datasets[-1].InstanceNumber) == 1
    assert first.PatientName == "PHANTOM^CHEST" and first.PatientID == "PHANTOM-000031"
    assert first.Manufacturer == phantom.scanner.manufacturer
    assert "not patient data" in first.ImageComments


def test_simpleitk_reads_the_series_with_the_phantoms_geometry(tmp_path):
    p = make_phantom(32, shape=SHAPE)
    write_ct_series(p, tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image), p.volume.hu)
    assert image.GetSpacing() == pytest.approx(p.volume.spacing, abs=1e-4)
    assert image.GetOrigin() == pytest.approx(p.volume.origin, abs=1e-4)
    assert image.GetDirection() == pytest.approx(p.volume.direction)


def test_uids_are_deterministic_and_can_be_given():
    p = make_phantom(33, shape=SHAPE)
    a = list(phantom_datasets(p))
    b = list(phantom_datasets(p))
    assert [ds.SOPInstanceUID for ds in a] == [ds.SOPInstanceUID for ds in b]
    assert a[0].StudyInstanceUID == b[0].StudyInstanceUID
    other = list(phantom_datasets(make_phantom(34, shape=SHAPE)))
    assert other[0].StudyInstanceUID != a[0].StudyInstanceUID
    assert not {ds.SOPInstanceUID for ds in other} & {ds.SOPInstanceUID for ds in a}
    given = list(
        phantom_datasets(
            p,
            study_instance_uid="1.2.3.4",
            series_instance_uid="1.2.3.4.5",
            patient_name="DOE^JANE",
            patient_id="X1",
        )
    )
    assert {ds.StudyInstanceUID for ds in given} == {"1.2.3.4"}
    assert {ds.SeriesInstanceUID for ds in given} == {"1.2.3.4.5"}
    assert given[0].PatientName == "DOE^JANE" and given[0].PatientID == "X1"
    assert not {ds.SOPInstanceUID for ds in given} & {ds.SOPInstanceUID for ds in a}
    with pytest.raises(ValueError, match="study_instance_uid"):
        list(phantom_datasets(p, study_instance_uid="not a uid"))
    with pytest.raises(ValueError, match="transfer_syntax"):
        list(phantom_datasets(p, transfer_syntax="1.2.3"))


@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, RLELossless])
def test_other_transfer_syntaxes_round_trip(tmp_path, transfer_syntax):
    p = make_phantom(35, shape=(8, 64, 64), scanner="hitachi-eclos")
    paths = write_ct_series(p, tmp_path, transfer_syntax=transfer_syntax)
    datasets, hu = read_series(paths)
    assert datasets[0].file_meta.TransferSyntaxUID == transfer_syntax
    assert np.array_equal(hu, p.volume.hu)
    assert dciodvfy_errors(paths[0]) == []


def test_write_nifti_keeps_image_labels_and_geometry(tmp_path):
    p = make_phantom(36, shape=SHAPE)
    image_path, mask_path = write_nifti(p, tmp_path)
    image = sitk.ReadImage(str(image_path))
    mask = sitk.ReadImage(str(mask_path))
    assert np.array_equal(sitk.GetArrayFromImage(image), p.volume.hu)
    assert np.array_equal(sitk.GetArrayFromImage(mask), p.class_map)
    assert image.GetSpacing() == pytest.approx(p.volume.spacing, abs=1e-4)
    assert image.GetOrigin() == pytest.approx(p.volume.origin, abs=1e-3)
    assert mask.GetOrigin() == pytest.approx(image.GetOrigin())


def test_hu_the_scanner_cannot_store_are_refused(tmp_path):
    import dataclasses

    from m2unet.phantom_scanners import SCANNERS

    ge = make_phantom(37, shape=(8, 64, 64), scanner="ge-brightspeed")  # pads with -2000 HU
    unsigned = dataclasses.replace(ge, scanner=SCANNERS["siemens-perspective"])  # stores >= -1024
    with pytest.raises(ValueError, match="do not fit"):
        write_ct_series(unsigned, tmp_path)
    assert not list(tmp_path.iterdir())
