"""The lobe SEG built from the real series in shared: validators, coding, geometry, determinism."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.results import codes
from dicom_node.results.build import build_result_set, write_result_set
from dicom_node.results.sanitize import sanitized_header
from dicom_node.results.seg import build_seg
from dicom_node.results.source import SourceSeries
from dicom_node.results.uids import ResultKind, result_identity
from m2unet.labels import Lobe
from tests.support.paths import REAL_CT
from tests.support.results_data import CREATED, SEGIMAGE2ITKIMAGE, dciodvfy_errors, run_tool

pytestmark = pytest.mark.skipif(not REAL_CT.exists(), reason="shared/data/real-ct is absent")


def test_codes_match_pydicom_dictionary():
    assert codes.check_codes() == []


def test_seg_has_no_dciodvfy_error(written):
    assert dciodvfy_errors(written[ResultKind.SEG]) == []


def test_unsanitised_source_would_give_dciodvfy_errors(case, tmp_path):
    """The check above means something: the real series' broken reference fails dciodvfy when copied."""
    raw = [pydicom.dcmread(i.path, stop_before_pixels=True) for i in case.reconstructed.instances]
    assert any("ReferencedSOPClassUID" not in item for item in raw[0].ReferencedStudySequence)
    identity = result_identity(ResultKind.SEG, "1.2.3", ["1.2.3.4"], "x")
    seg = build_seg(SourceSeries(tuple(raw)), case.lobe_map, case.findings, identity, "M2UNET")
    seg.save_as(tmp_path / "raw.dcm", enforce_file_format=True)
    errors = dciodvfy_errors(tmp_path / "raw.dcm")
    assert any("Referenced SOP Class UID" in e or "ReferencedSOPClassUID" in e for e in errors), errors


def test_sanitised_header_drops_broken_reference_and_keeps_source(case):
    path = case.reconstructed.instances[0].path
    raw = pydicom.dcmread(path, stop_before_pixels=True)
    clean = sanitized_header(raw)
    assert "ReferencedStudySequence" not in clean  # its only item lacked ReferencedSOPClassUID
    assert len(clean.ReferencedPerformedProcedureStepSequence) == 1  # a complete reference stays
    assert len(clean.DeidentificationMethodCodeSequence) == len(raw.DeidentificationMethodCodeSequence)
    assert "ReferencedStudySequence" in raw  # the source dataset is untouched
    assert not any(element.tag.is_private for element in clean)


def test_seg_segments_are_the_five_lobes_with_codes_and_algorithm(case):
    seg = case.result_set.seg
    assert seg.SegmentationType == "BINARY"
    segments = seg.SegmentSequence
    assert [int(s.SegmentNumber) for s in segments] == [1, 2, 3, 4, 5]
    expected = {
        Lobe.RIGHT_UPPER: ("45653009", "24028007"),
        Lobe.RIGHT_MIDDLE: ("72481006", "24028007"),
        Lobe.RIGHT_LOWER: ("90572001", "24028007"),
        Lobe.LEFT_UPPER: ("45653009", "7771000"),
        Lobe.LEFT_LOWER: ("90572001", "7771000"),
    }
    for segment in segments:
        lobe = Lobe(int(segment.SegmentNumber))
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
        kind = segment.SegmentedPropertyTypeCodeSequence[0]
        modifier = kind.SegmentedPropertyTypeModifierCodeSequence[0]
        assert (kind.CodeValue, modifier.CodeValue) == expected[lobe]
        assert kind.CodingSchemeDesignator == modifier.CodingSchemeDesignator == "SCT"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "M2UNet"
        assert algorithm.AlgorithmVersion == "test-1"
        assert case.findings.weights_sha256 in algorithm.AlgorithmParameters
        assert segment.SegmentLabel == lobe.display_name


def test_seg_references_every_source_image_in_study_and_frame_of_reference(case):
    seg = case.result_set.seg
    first = case.reconstructed.datasets[0]
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {i.sop_instance_uid for i in case.reconstructed.instances}
    assert len(referenced) == 64


def test_seg_keeps_empty_frames_so_frames_follow_source_images(case):
    seg = case.result_set.seg
    assert int(seg.NumberOfFrames) == 5 * 64
    assert not case.lobe_map[0].any() or not case.lobe_map[:, :, 0].any()  # some frames are empty indeed
    empty_frames = sum(1 for z in range(64) for lobe in Lobe if not (case.lobe_map[z] == lobe).any())
    assert empty_frames > 0


def test_seg_pixels_round_trip_per_source_image(case, written):
    seg = hd.seg.segread(written[ResultKind.SEG])
    uids = [i.sop_instance_uid for i in case.reconstructed.instances]
    for z in (5, 30, 60):
        labels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uids[z]], combine_segments=True, relabel=False
        )[0]
        np.testing.assert_array_equal(labels, case.lobe_map[z])


def test_dcmqi_reads_five_segments_with_the_lobe_voxels(case, written, tmp_path):
    import SimpleITK as sitk

    result = run_tool(
        [SEGIMAGE2ITKIMAGE, "--inputDICOM", written[ResultKind.SEG], "--outputDirectory", tmp_path, "--outputType", "nrrd"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    attributes = [a for group in meta["segmentAttributes"] for a in group]
    assert sorted(a["labelID"] for a in attributes) == [1, 2, 3, 4, 5]
    assert {a["SegmentedPropertyTypeCodeSequence"]["CodeValue"] for a in attributes} == {"45653009", "72481006", "90572001"}
    for lobe in Lobe:
        image = sitk.ReadImage(str(tmp_path / f"{int(lobe)}.nrrd"))
        assert int(sitk.GetArrayFromImage(image).astype(bool).sum()) == int((case.lobe_map == lobe).sum())
        assert image.GetOrigin() == pytest.approx(case.reconstructed.volume.origin, abs=1e-3)


def test_result_set_is_deterministic_and_versioned(case):
    again = build_result_set(
        case.source, case.reconstructed.volume.hu, case.lobe_map, case.findings, version=1, ae_title="M2UNET", created=CREATED
    )
    for first, second in zip(case.result_set.objects().values(), again.objects().values()):
        assert first.SOPInstanceUID == second.SOPInstanceUID
        assert first.SeriesInstanceUID == second.SeriesInstanceUID
    from io import BytesIO

    def raw(ds):
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    assert raw(case.result_set.seg) == raw(again.seg)
    assert raw(case.result_set.sr) == raw(again.sr)
    assert raw(case.result_set.summary) == raw(again.summary)

    version2 = build_result_set(
        case.source, case.reconstructed.volume.hu, case.lobe_map, case.findings, version=2, ae_title="M2UNET",
        created=CREATED, summary_image=False,
    )
    assert version2.seg.SOPInstanceUID != case.result_set.seg.SOPInstanceUID
    assert version2.sr.SOPInstanceUID != case.result_set.sr.SOPInstanceUID
    assert version2.seg.SeriesNumber > case.result_set.seg.SeriesNumber
    assert version2.sr.SeriesNumber > case.result_set.sr.SeriesNumber


def test_uids_depend_on_content_and_weights():
    base = result_identity(ResultKind.SEG, "1.2.3", ["1.2.3.1", "1.2.3.2"], "aa")
    assert result_identity(ResultKind.SEG, "1.2.3", ["1.2.3.2", "1.2.3.1"], "aa") == base  # order-free
    assert result_identity(ResultKind.SEG, "1.2.3", ["1.2.3.1"], "aa").sop_instance_uid != base.sop_instance_uid
    assert result_identity(ResultKind.SEG, "1.2.3", ["1.2.3.1", "1.2.3.2"], "bb").sop_instance_uid != base.sop_instance_uid
    assert result_identity(ResultKind.SR, "1.2.3", ["1.2.3.1", "1.2.3.2"], "aa").sop_instance_uid != base.sop_instance_uid
    with pytest.raises(ValueError, match="version"):
        result_identity(ResultKind.SEG, "1.2.3", ["1.2.3.1"], "aa", version=0)


def test_lobe_map_of_wrong_shape_is_refused(case):
    identity = result_identity(ResultKind.SEG, "1.2.3", ["1.2.3.4"], "x")
    with pytest.raises(ValueError, match="lobe_map shape"):
        build_seg(case.source, case.lobe_map[:10], case.findings, identity, "M2UNET")


def test_tilted_gantry_series_gives_a_valid_seg_on_the_source_planes(tmp_path):
    """A tilted acquisition (origins drift in-plane along the table): the SEG frames sit on the
    source images' planes and dciodvfy accepts it."""
    from tests.support.results_data import small_case

    case = small_case(tmp_path, slices=12, size=48, tilt_deg=12.0)
    written = write_result_set(case.result_set, tmp_path / "out")
    assert dciodvfy_errors(written[ResultKind.SEG]) == []
    seg = case.result_set.seg
    sources = {str(h.SOPInstanceUID): h for h in case.source.headers}
    for frame in seg.PerFrameFunctionalGroupsSequence[:12]:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in sources[source_uid].ImagePositionPatient], abs=1e-3)
