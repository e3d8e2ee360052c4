"""The node's inputs to the quality check: source slice thickness and the images ingest left out."""

from __future__ import annotations

from types import SimpleNamespace

from pydicom.dataset import Dataset

from dicom_node.results.analysis import check_result, source_slice_thickness
from dicom_node.series.selection import Exclusion
from m2unet.quantify import quantify
from tests.m2unet.test_qc import clean_lobe_map, volume_for


def _ds(**attrs) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_slice_thickness_from_single_and_multi_frame_headers():
    assert source_slice_thickness([_ds(SliceThickness="5.0"), _ds(SliceThickness="5.0"), _ds(SliceThickness="1.0")]) == 5.0
    measures = _ds(PixelMeasuresSequence=[_ds(SliceThickness="8", PixelSpacing=[0.7, 0.7])])
    assert source_slice_thickness([_ds(SharedFunctionalGroupsSequence=[measures])]) == 8.0
    assert source_slice_thickness([_ds(), _ds(SliceThickness="")]) is None


def test_check_result_names_the_left_out_images_but_not_duplicates():
    lobe_map = clean_lobe_map()
    volume = volume_for(lobe_map)
    excluded = [Exclusion("1.2.3", None, "localizer"), Exclusion("1.2.4", None, "exact_duplicate")]
    reconstructed = SimpleNamespace(
        volume=volume,
        datasets=[_ds(SliceThickness="8")],
        instances=[object()] * volume.shape[0],
        excluded=excluded,
    )
    prediction = SimpleNamespace(lobe_map=lobe_map, severity="non-severe", probability_severe=0.1)
    qc = check_result(reconstructed, prediction, quantify(volume, lobe_map))
    assert {c.name for c in qc.failed} == {"slice_thickness", "excluded_instances"}
    assert "1 of 41" in qc.check("excluded_instances").detail and "localizer" in qc.check("excluded_instances").detail
    reconstructed.excluded = excluded[1:]
    assert check_result(reconstructed, prediction, quantify(volume, lobe_map)).check("excluded_instances") is None
