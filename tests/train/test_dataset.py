"""Datasets: the label CSV, NIfTI and DICOM images, NIfTI and DICOM SEG masks, and bad input."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from m2unet.labels import SegmentationClass
from m2unet.phantom import make_phantom
from m2unet.phantom_dicom import write_ct_series, write_nifti
from m2unet.preprocessing import PreprocessingConfig
from train.dataset import load_cases, parse_label, read_dicom_series, read_label_table
from train.prepared import load_prepared, prepare_case, save_prepared
from train.seg_masks import read_seg_class_map

SHAPE = (16, 48, 48)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, shape=SHAPE)


def _csv(path, rows, header=("case", "label", "mask")):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    "text, severe",
    [("severe", True), ("Critical", True), ("non-severe", False), ("Non severe", False), ("mild", False),
     ("MODERATE", False), ("non_severe", False)],
)
def test_labels_map_as_the_paper(text, severe):
    assert parse_label(text) is severe


def test_nifti_cases_load_with_their_masks(tmp_path, phantom):
    image, mask = write_nifti(phantom, tmp_path, stem="a")
    table = _csv(tmp_path / "labels.csv", [[image.name, "critical", mask.name]])
    records = read_label_table(table)
    assert records[0].severe is True and records[0].row == 2
    config = PreprocessingConfig(in_plane_spacing_mm=4.0, patch_size=16)
    (case,) = load_cases(records, config)
    assert case.image.dtype == np.uint8 and case.class_map.shape == case.image.shape
    assert set(np.unique(case.class_map)) == set(range(7))  # all seven classes survive the 4 mm grid
    assert case.spacing[:2] == (4.0, 4.0)
    saved = load_prepared(save_prepared(case, tmp_path / "case.npz"))
    assert np.array_equal(saved.image, case.image) and np.array_equal(saved.class_map, case.class_map)
    assert saved.severe is True and saved.case_id == case.case_id


def test_missing_case_names_file_and_row(tmp_path, phantom):
    image, _ = write_nifti(phantom, tmp_path, stem="a")
    table = _csv(tmp_path / "labels.csv", [[image.name, "mild", ""], ["nowhere.nii.gz", "severe", ""]])
    with pytest.raises(ValueError, match=r"labels\.csv: row 3: case 'nowhere\.nii\.gz' not found"):
        read_label_table(table)


def test_unknown_label_names_file_and_row(tmp_path, phantom):
    image, _ = write_nifti(phantom, tmp_path, stem="a")
    table = _csv(tmp_path / "labels.csv", [[image.name, "very bad", ""]])
    with pytest.raises(ValueError, match=r"labels\.csv: row 2 .*'very bad' is not one of severe, non-severe, mild"):
        read_label_table(table)


def test_empty_dataset_is_refused(tmp_path):
    table = _csv(tmp_path / "labels.csv", [])
    with pytest.raises(ValueError, match=r"labels\.csv: the dataset is empty"):
        read_label_table(table)


def test_mask_of_another_shape_names_file_and_row_before_training(tmp_path, phantom):
    image, mask = write_nifti(phantom, tmp_path, stem="a")
    small = sitk.GetImageFromArray(np.zeros((SHAPE[0], 40, 48), dtype=np.uint8))
    sitk.WriteImage(small, str(tmp_path / "small.nii.gz"))
    table = _csv(tmp_path / "labels.csv", [[image.name, "severe", mask.name], [image.name.replace("a", "b"), "mild", ""]])
    (tmp_path / "b.nii.gz").write_bytes(image.read_bytes())
    table = _csv(tmp_path / "labels.csv", [[image.name, "severe", mask.name], ["b.nii.gz", "mild", "small.nii.gz"]])
    records = read_label_table(table)
    with pytest.raises(ValueError, match=r"labels\.csv: row 3 \(case 'b\.nii\.gz'\): mask shape \(16, 40, 48\) differs"):
        load_cases(records, PreprocessingConfig(in_plane_spacing_mm=4.0, patch_size=16))


def test_mask_with_unknown_labels_is_refused(tmp_path, phantom):
    image, _ = write_nifti(phantom, tmp_path, stem="a")
    bad = sitk.GetImageFromArray(np.full(SHAPE, 9, dtype=np.uint8))
    sitk.WriteImage(bad, str(tmp_path / "bad.nii.gz"))
    records = read_label_table(_csv(tmp_path / "labels.csv", [[image.name, "severe", "bad.nii.gz"]]))
    with pytest.raises(ValueError, match=r"row 2 .*labels outside 0\.\.6"):
        load_cases(records, PreprocessingConfig())


def test_dicom_series_matches_the_phantom(tmp_path, phantom):
    write_ct_series(phantom, tmp_path / "series")
    series = read_dicom_series(tmp_path / "series")
    assert series.volume.shape == phantom.volume.shape
    assert np.allclose(series.volume.spacing, phantom.volume.spacing, atol=1e-3)
    assert np.allclose(series.volume.origin, phantom.volume.origin, atol=1e-3)
    assert np.array_equal(series.volume.hu.astype(np.int32), np.asarray(phantom.volume.hu).astype(np.int32))


def _write_seg(tmp_path, phantom, source_folder):
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(p) for p in sorted(source_folder.glob("*.dcm"))]
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    lobes = [
        (SegmentationClass.RIGHT_UPPER_LOBE, "right upper lobe"),
        (SegmentationClass.RIGHT_MIDDLE_LOBE, "right middle lobe"),
        (SegmentationClass.RIGHT_LOWER_LOBE, "right lower lobe"),
        (SegmentationClass.LEFT_UPPER_LOBE_UPPER_DIVISION, "left upper lobe"),
        (SegmentationClass.LINGULA, "lingula"),
        (SegmentationClass.LEFT_LOWER_LOBE, "left lower lobe"),
    ]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="test", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, (_, label) in enumerate(lobes)
    ]
    masks = np.stack([phantom.class_map == int(cls) for cls, _ in lobes], axis=-1)  # (z, y, x, segments)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    path = tmp_path / "lobes.seg.dcm"
    seg.save_as(path)
    return path


def test_dicom_seg_becomes_the_seven_class_map(tmp_path, phantom):
    write_ct_series(phantom, tmp_path / "series")
    seg_path = _write_seg(tmp_path, phantom, tmp_path / "series")
    volume = read_dicom_series(tmp_path / "series").volume
    class_map = read_seg_class_map(seg_path, volume)
    assert np.array_equal(class_map, phantom.class_map)
    # and as a dataset row: a DICOM series with a SEG mask
    records = read_label_table(_csv(tmp_path / "labels.csv", [["series", "moderate", seg_path.name]]))
    (case,) = load_cases(records, PreprocessingConfig(in_plane_spacing_mm=4.0, patch_size=16))
    assert case.severe is False and case.has_mask
    expected = prepare_case("x", phantom.volume, phantom.class_map, False, PreprocessingConfig(in_plane_spacing_mm=4.0, patch_size=16))
    assert np.array_equal(case.class_map, expected.class_map)
