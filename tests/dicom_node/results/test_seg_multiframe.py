"""Results of a multi-frame source (one Enhanced CT image holding every slice as a frame).

The source is written with ingest's ``write_enhanced_ct`` (frames stored in any order) and goes
through the path the pipeline uses: ``reconstruct_series`` -> ``source_from_reconstruction`` ->
``build_result_set`` -> ``write_result_set``, with the made-up lobe map of ``results_data``.
Each SEG frame must reference the source instance and the frame it lies on; the expectations are
taken from the order the frames were written in, not from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage

from dicom_node.results.build import build_result_set, write_result_set
from dicom_node.results.seg import build_seg
from dicom_node.results.source import SourceSeries, source_from_reconstruction
from dicom_node.results.summary import slice_labels
from dicom_node.results.uids import ResultKind, result_identity
from m2unet.labels import Lobe
from tests.support.ct_series import phantom_hu, write_enhanced_ct
from tests.support.results_data import (
    CREATED,
    DCIODVFY,
    SEGIMAGE2ITKIMAGE,
    build_case,
    dciodvfy_errors,
    made_up_lobe_map,
    run_tool,
)

SLICES, SIZE = 12, 64
ORIGIN_Z, STEP = -100.0, 2.5  # write_enhanced_ct's defaults: slice k lies at z = -100 + 2.5 k
ORDERS = {
    "slice order": list(range(SLICES)),
    "reverse z": list(range(SLICES - 1, -1, -1)),
    "shuffled": [3, 0, 11, 1, 8, 2, 7, 4, 10, 6, 9, 5],
}
have_dciodvfy = pytest.mark.skipif(not Path(DCIODVFY).exists(), reason="dciodvfy (dicom3tools) not installed")


def enhanced_ct(path: Path, hu: np.ndarray, order: list[int], sop_class_uid: str = EnhancedCTImageStorage) -> Path:
    """``write_enhanced_ct``'s image with the Patient and General Study attributes a scanner
    writes (the SEG copies them), and the SOP Class asked for."""
    write_enhanced_ct(path, hu, frame_order=order)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20250101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.SeriesNumber = 3
    ds.save_as(path, enforce_file_format=True)
    return path


def frame_positions(path: Path) -> dict[int, list[float]]:
    """Image Position (Patient) of every frame, read from the file's Per-frame Functional Groups."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {
        n: [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence, 1)
    }


def seg_frame_references(seg: Dataset) -> list[tuple[int, str, str, int, list[float]]]:
    """Per SEG frame: segment number, referenced SOP Class and Instance, referenced frame, position."""
    found = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        [derivation] = frame.DerivationImageSequence
        [source] = derivation.SourceImageSequence
        found.append(
            (
                int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
                str(source.ReferencedSOPClassUID),
                str(source.ReferencedSOPInstanceUID),
                int(source.ReferencedFrameNumber),
                [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            )
        )
    return found


@pytest.fixture(scope="module")
def hu():
    return phantom_hu(n=SLICES, size=SIZE, seed=3)


@pytest.fixture(scope="module", params=list(ORDERS))
def multiframe(request, hu, tmp_path_factory):
    """A case per frame order (the shuffled one as Legacy Converted Enhanced CT) and its files."""
    order = ORDERS[request.param]
    sop_class = LegacyConvertedEnhancedCTImageStorage if request.param == "shuffled" else EnhancedCTImageStorage
    folder = tmp_path_factory.mktemp("multiframe")
    path = enhanced_ct(folder / "enhanced.dcm", hu, order, sop_class)
    case = build_case([path])
    written = write_result_set(case.result_set, folder / "results")
    return SimpleNamespace(order=order, path=path, case=case, written=written, sop_class=sop_class)


def test_source_maps_volume_slices_to_frames(multiframe):
    source = multiframe.case.source
    assert source.is_multiframe and len(source.headers) == 1
    # volume slice z (z = -100 + 2.5 z) was written as frame order.index(z) + 1
    assert source.frame_numbers == tuple(multiframe.order.index(z) + 1 for z in range(SLICES))
    assert source.slice_position(0)[2] == pytest.approx(ORIGIN_Z)


def test_seg_has_five_segments_and_a_frame_per_slice_and_segment(multiframe):
    seg = pydicom.dcmread(multiframe.written[ResultKind.SEG])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3, 4, 5]
    assert int(seg.NumberOfFrames) == 5 * SLICES
    source = pydicom.dcmread(multiframe.path, stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    [series] = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence] == [
        (multiframe.sop_class, source.SOPInstanceUID)
    ]


def test_each_seg_frame_references_the_source_frame_it_lies_on(multiframe):
    seg = pydicom.dcmread(multiframe.written[ResultKind.SEG])
    source = pydicom.dcmread(multiframe.path, stop_before_pixels=True)
    positions = frame_positions(multiframe.path)
    references = seg_frame_references(seg)
    for segment, sop_class, sop_instance, frame, position in references:
        assert (sop_class, sop_instance) == (multiframe.sop_class, source.SOPInstanceUID)
        assert position == pytest.approx(positions[frame], abs=1e-4)
        # frame n was written from slice order[n - 1], at z = -100 + 2.5 * order[n - 1]
        assert position[2] == pytest.approx(ORIGIN_Z + STEP * multiframe.order[frame - 1], abs=1e-4)
    for lobe in Lobe:
        assert sorted(f for s, _, _, f, _ in references if s == lobe) == list(range(1, SLICES + 1))


def test_seg_pixels_of_each_source_frame_are_the_lobes_of_that_slice(multiframe, hu):
    seg = hd.seg.segread(multiframe.written[ResultKind.SEG])
    source_uid = str(pydicom.dcmread(multiframe.path, stop_before_pixels=True).SOPInstanceUID)
    expected = made_up_lobe_map(hu)  # in slice order, the order the phantom was made in
    assert expected.any()
    frames = list(range(1, SLICES + 1))
    labels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source_uid, source_frame_numbers=frames, combine_segments=True, relabel=False
    )
    for n, plane in zip(frames, labels):
        np.testing.assert_array_equal(plane, expected[multiframe.order[n - 1]], err_msg=f"frame {n}")


@have_dciodvfy
def test_dciodvfy_finds_no_error_in_the_results(multiframe):
    for kind in (ResultKind.SEG, ResultKind.SR, ResultKind.SUMMARY):
        assert dciodvfy_errors(multiframe.written[kind]) == [], kind.name


@pytest.mark.skipif(not SEGIMAGE2ITKIMAGE.exists(), reason="dcmqi not installed")
def test_dcmqi_reads_the_lobes_onto_the_source_geometry(multiframe, tmp_path):
    import SimpleITK as sitk

    result = run_tool(
        [SEGIMAGE2ITKIMAGE, "--inputDICOM", multiframe.written[ResultKind.SEG], "--outputDirectory", tmp_path,
         "--outputType", "nrrd"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert sorted(a["labelID"] for group in meta["segmentAttributes"] for a in group) == [1, 2, 3, 4, 5]
    lobe_map = multiframe.case.lobe_map
    for lobe in Lobe:
        image = sitk.ReadImage(str(tmp_path / f"{int(lobe)}.nrrd"))
        assert image.GetOrigin() == pytest.approx(multiframe.case.reconstructed.volume.origin, abs=1e-3)
        # dcmqi places the frames by their plane positions: voxel for voxel the lobe map, in volume order
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image).astype(bool), lobe_map == lobe)


def test_sr_references_the_multiframe_source_and_the_seg(multiframe):
    sr = multiframe.case.result_set.sr
    seg = multiframe.case.result_set.seg
    source = multiframe.case.source.headers[0]
    evidence = {
        (str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID))
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {(multiframe.sop_class, str(source.SOPInstanceUID)), (str(seg.SOPClassUID), str(seg.SOPInstanceUID))}
    images = []

    def walk(items):
        for item in items:
            if item.get("ValueType") == "IMAGE":
                images.append(item.ReferencedSOPSequence[0])
            if item.get("ValueType") == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == "121232":
                assert item.UID == source.SeriesInstanceUID  # Source series for segmentation
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    # image references are the five segments of the SEG (no source image referenced without its frame)
    assert sorted((r.ReferencedSOPInstanceUID, int(r.ReferencedSegmentNumber)) for r in images) == [
        (seg.SOPInstanceUID, n) for n in (1, 2, 3, 4, 5)
    ]


def test_summary_names_the_frames_of_its_panels(multiframe):
    summary = pydicom.dcmread(multiframe.written[ResultKind.SUMMARY])
    assert summary.StudyInstanceUID == multiframe.case.source.study_instance_uid
    labels = slice_labels(multiframe.case.source)
    assert len(labels) == SLICES
    assert labels[0] == f"image 1 frame {multiframe.order.index(0) + 1}, z {ORIGIN_Z:.1f} mm"


def test_multiframe_result_set_is_deterministic(multiframe, hu):
    case = multiframe.case
    again = build_result_set(
        case.source, case.reconstructed.volume.hu, case.lobe_map, case.findings, version=1, ae_title="M2UNET",
        created=CREATED,
    )
    from io import BytesIO

    def raw(ds):
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    for kind, dataset in case.result_set.objects().items():
        assert raw(dataset) == raw(again.objects()[kind]), kind.name


def test_frames_left_out_of_the_volume_are_not_referenced(hu, tmp_path):
    """A 13th frame (DERIVED, at the next position) stays out of the volume; each slice's SEG frame
    still references its own frame, found by position since the volume no longer uses all frames."""
    order = [12, *ORDERS["reverse z"]]  # frame 1 is the extra slice, frames 2..13 slices 11..0
    extra = np.concatenate([hu, hu[-1:]])
    path = enhanced_ct(tmp_path / "enhanced.dcm", extra, order)
    ds = pydicom.dcmread(path)
    frame_type = Dataset()
    frame_type.FrameType = ["DERIVED", "SECONDARY", "AXIAL", "NONE"]
    ds.PerFrameFunctionalGroupsSequence[0].CTImageFrameTypeSequence = Sequence([frame_type])
    ds.save_as(path, enforce_file_format=True)

    case = build_case([path])
    assert [e.frame_number for e in case.reconstructed.excluded] == [1]
    assert case.source.frame_numbers == tuple(range(SLICES + 1, 1, -1))
    written = write_result_set(case.result_set, tmp_path / "results")
    seg = pydicom.dcmread(written[ResultKind.SEG])
    assert int(seg.NumberOfFrames) == 5 * SLICES
    for _, _, sop_instance, frame, position in seg_frame_references(seg):
        assert sop_instance == ds.SOPInstanceUID
        assert frame != 1
        assert position[2] == pytest.approx(ORIGIN_Z + STEP * order[frame - 1], abs=1e-4)
    labels = hd.seg.segread(written[ResultKind.SEG]).get_pixels_by_source_frame(
        source_sop_instance_uid=str(ds.SOPInstanceUID), source_frame_numbers=[2, 7, 13],
        combine_segments=True, relabel=False,
    )
    expected = made_up_lobe_map(hu)  # the volume holds slices 0..11 only
    for plane, n in zip(labels, (2, 7, 13)):
        np.testing.assert_array_equal(plane, expected[order[n - 1]])
    if Path(DCIODVFY).exists():
        assert dciodvfy_errors(written[ResultKind.SEG]) == []


def test_groups_repeated_in_every_frame_are_shared_in_the_copy_only(hu, tmp_path):
    """Pixel Measures and Plane Orientation repeated per frame (allowed; highdicom reads them only
    from the shared item): the SEG is still built, and the source file keeps its layout."""
    path = enhanced_ct(tmp_path / "enhanced.dcm", hu, ORDERS["reverse z"])
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PixelMeasuresSequence = shared.PixelMeasuresSequence
        item.PlaneOrientationSequence = shared.PlaneOrientationSequence
    del shared.PixelMeasuresSequence, shared.PlaneOrientationSequence
    ds.save_as(path, enforce_file_format=True)

    case = build_case([path])
    header = case.source.headers[0]
    assert "PlaneOrientationSequence" in header.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" in header.SharedFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" not in header.PerFrameFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" in case.reconstructed.datasets[0].PerFrameFunctionalGroupsSequence[0]
    references = seg_frame_references(case.result_set.seg)
    assert {f for _, _, _, f, _ in references} == set(range(1, SLICES + 1))
    for _, _, _, frame, position in references:
        assert position[2] == pytest.approx(ORIGIN_Z + STEP * ORDERS["reverse z"][frame - 1], abs=1e-4)


def test_several_multiframe_instances_or_a_mix_are_refused():
    header = Dataset()
    header.SOPInstanceUID, header.SeriesInstanceUID = "1.2.3.1", "1.2.3"
    other = Dataset()
    other.SOPInstanceUID, other.SeriesInstanceUID = "1.2.3.2", "1.2.3"

    def instance(uid, frame):
        return SimpleNamespace(sop_instance_uid=uid, frame_number=frame)

    mixed = SimpleNamespace(instances=[instance("1.2.3.1", 1), instance("1.2.3.2", None)], datasets=[header, other])
    two = SimpleNamespace(instances=[instance("1.2.3.1", 1), instance("1.2.3.2", 1)], datasets=[header, other])
    for reconstructed in (mixed, two):
        with pytest.raises(ValueError, match="NumberOfFrames: a SEG derives from single-frame images or from one"):
            source_from_reconstruction(reconstructed)


def test_frame_numbers_are_checked(multiframe):
    header = multiframe.case.source.headers[0]
    with pytest.raises(ValueError, match="not all in 1..12"):
        SourceSeries((header,), frame_numbers=(0, 1))
    with pytest.raises(ValueError, match="more than one volume slice"):
        SourceSeries((header,), frame_numbers=(1, 1))
    with pytest.raises(ValueError, match="lobe_map shape"):
        build_seg(
            multiframe.case.source, multiframe.case.lobe_map[:5], multiframe.case.findings,
            result_identity(ResultKind.SEG, "1.2.3", ["1.2.3.4"], "x"), "M2UNET",
        )
