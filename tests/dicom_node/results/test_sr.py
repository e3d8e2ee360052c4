"""The TID 1500 SR built from the real series in shared: dciodvfy, dcmqi, content and references."""

from __future__ import annotations

import json

import pytest

from dicom_node.results import codes
from dicom_node.results.sr import device_uid
from dicom_node.results.uids import ResultKind
from m2unet.labels import Lobe
from tests.support.paths import REAL_CT
from tests.support.results_data import TID1500READER, dciodvfy_errors, run_tool

pytestmark = pytest.mark.skipif(not REAL_CT.exists(), reason="shared/data/real-ct is absent")


@pytest.fixture(scope="module")
def dcmqi_json(written, tmp_path_factory):
    out = tmp_path_factory.mktemp("dcmqi") / "sr.json"
    result = run_tool([TID1500READER, "--inputDICOM", written[ResultKind.SR], "--outputMetadata", out])
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text())


def test_sr_has_no_dciodvfy_error(written):
    assert dciodvfy_errors(written[ResultKind.SR]) == []


def test_sr_is_comprehensive_3d_in_source_study(case):
    sr = case.result_set.sr
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == case.reconstructed.datasets[0].StudyInstanceUID
    assert sr.Modality == "SR"
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert case.result_set.seg.SOPInstanceUID in evidence


def test_dcmqi_reads_severity_and_lobe_groups(case, dcmqi_json):
    groups = dcmqi_json["Measurements"]
    assert len(groups) == 6
    severity = groups[0]
    evaluation = severity["qualitativeEvaluations"][0]
    assert evaluation["conceptCode"]["CodeValue"] == codes.SEVERITY.value
    assert evaluation["conceptValue"]["CodeValue"] == "24484000"  # severe
    items = {m["quantity"]["CodeMeaning"]: float(m["value"]) for m in severity["measurementItems"]}
    assert items["Probability"] == pytest.approx(case.findings.probability_severe)
    assert items["Total CT severity score"] == case.findings.total_score

    lobe_groups = groups[1:]
    assert [g["ReferencedSegment"] for g in lobe_groups] == [1, 2, 3, 4, 5]
    for group in lobe_groups:
        lobe = Lobe(group["ReferencedSegment"])
        finding = case.findings.lobe(lobe)
        lobe_type, laterality = codes.LOBE_CODES[lobe]
        assert group["Finding"]["CodeValue"] == lobe_type.value
        assert group["Laterality"]["CodeValue"] == laterality.value
        assert group["SourceSeriesForImageSegmentation"] == case.source.series_instance_uid
        values = {m["quantity"]["CodeMeaning"]: (float(m["value"]), m["units"]["CodeValue"]) for m in group["measurementItems"]}
        assert values["Volume"][0] == pytest.approx(finding.volume_ml, abs=1e-3)
        assert values["Volume"][1] == "mL"
        assert values[codes.OPACITY_PERCENTAGE.meaning] == (pytest.approx(finding.opacity_percent, abs=1e-3), "%")
        assert values[codes.CT_SEVERITY_SCORE.meaning] == (finding.severity_score, "1")


def test_lobe_groups_reference_the_seg_instance(case):
    sr = case.result_set.sr
    seg_uid = case.result_set.seg.SOPInstanceUID
    found = []

    def walk(items):
        for item in items:
            if "ReferencedSOPSequence" in item and item.ValueType == "IMAGE":
                ref = item.ReferencedSOPSequence[0]
                if "ReferencedSegmentNumber" in ref:
                    found.append((ref.ReferencedSOPInstanceUID, int(ref.ReferencedSegmentNumber)))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert sorted(found) == [(seg_uid, n) for n in (1, 2, 3, 4, 5)]


def test_observer_is_the_node_as_a_device(case):
    sr = case.result_set.sr
    concepts = {
        item.ConceptNameCodeSequence[0].CodeValue: item
        for item in sr.ContentSequence
        if "ConceptNameCodeSequence" in item
    }
    assert concepts["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # observer type: device
    assert concepts["121012"].UID == device_uid("M2UNET")  # device observer UID
    assert concepts["121013"].TextValue == "M2UNET"  # device observer name


def test_private_codes_are_declared(case):
    schemes = [item.CodingSchemeDesignator for item in case.result_set.sr.CodingSchemeIdentificationSequence]
    assert codes.PRIVATE_SCHEME in schemes


def _severity_group_items(sr):
    """The content items of the severity group (the first Measurement Group)."""
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    return measurements.ContentSequence[0].ContentSequence


def test_quality_check_verdict_and_failed_checks_are_in_the_sr(case, written):
    import pydicom

    sr = pydicom.dcmread(written[ResultKind.SR])
    items = _severity_group_items(sr)
    verdicts = [
        i.ConceptCodeSequence[0].CodeValue
        for i in items
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == codes.QUALITY_CONTROL.value
    ]
    qc = case.findings.qc
    assert not qc.passed  # the made-up lobe map is not real anatomy
    assert verdicts == [codes.FAILED.value]
    texts = [
        i.TextValue for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == codes.FAILED_QUALITY_CHECK.value
    ]
    assert len(texts) == len(qc.failed) >= 1
    assert texts[0].startswith(qc.failed[0].name.replace("_", " ") + ": ")
    assert qc.failed[0].detail in texts[0]


@pytest.mark.filterwarnings("ignore:.*unlikely to represent the intended person name")
def test_passed_quality_check_reads_succeeded_without_text(case):
    from dataclasses import replace

    from dicom_node.results.sr import build_sr
    from dicom_node.results.uids import result_identity
    from m2unet.qc import Check, QualityCheck

    passed = replace(case.findings, qc=QualityCheck([Check("lung_coverage", True, "inside")]))
    identity = result_identity(ResultKind.SR, case.source.series_instance_uid, case.source.sop_instance_uids, "ab" * 32, 1, None)
    items = _severity_group_items(build_sr(case.source, case.result_set.seg, passed, identity, "M2UNET"))
    codes_found = {i.ConceptNameCodeSequence[0].CodeValue: i for i in items if i.ValueType == "CODE"}
    assert codes_found[codes.QUALITY_CONTROL.value].ConceptCodeSequence[0].CodeValue == codes.SUCCEEDED.value
    assert not [i for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == codes.FAILED_QUALITY_CHECK.value]
