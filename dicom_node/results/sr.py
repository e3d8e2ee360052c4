"""The TID 1500 Measurement Report (highdicom ``Comprehensive3DSR``) of one processed series.

Content:

- observer: the node as a device (DCM 121007), identified by a UID derived from its AE title,
  its AE title as name, and the node's manufacturer and model;
- procedure reported: CT chest report (LN 24627-2);
- one TID 1501 group "severity" holding the qualitative evaluation Severity (SCT 246112005) =
  Severe (SCT 24484000) or Mild to Moderate (SCT 371923003, the paper's "non-severe"), the
  probability of severe (DCM 122157, unit 1) and the total CT severity score (0..25, unit 1);
- in that group, the quality check of the result (``m2unet.qc``): the qualitative evaluation
  Quality Control (DCM 110002) = Succeeded (DCM 111222) or Failed (DCM 111224), and for each
  failed check a TEXT item "Failed quality check" (private code) naming the check and why;
- one TID 1411 volumetric group per lobe, referencing that lobe's segment of the SEG, with the
  lobe as finding type and finding site (with laterality), and three measurements: volume
  (SCT 118565006, mL), opacity percentage of the lobe volume (%) and CT severity score (0..5,
  unit 1). The last two have no standard code; they use private codes (``codes.PRIVATE_SCHEME``).

The SEG and the source images are the evidence (Current Requested Procedure Evidence Sequence).
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.results import codes
from dicom_node.results.equipment import MANUFACTURER, MODEL_NAME
from dicom_node.results.findings import Findings, series_description
from dicom_node.results.source import SourceSeries
from dicom_node.results.uids import ResultIdentity
from m2unet.labels import Lobe


def device_uid(ae_title: str) -> str:
    """The Device Observer UID of the node, the same for every report the node writes."""
    return generate_uid(entropy_srcs=["m2unet-node device", ae_title])


def observation_context(ae_title: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(ae_title),
        name=ae_title,
        manufacturer_name=MANUFACTURER,
        model_name=MODEL_NAME,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE,
            observer_identifying_attributes=device,
        )
    )


def _tracking(seg_sop_instance_uid: str, name: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(
        uid=generate_uid(entropy_srcs=["m2unet-node tracking", seg_sop_instance_uid, name]),
        identifier=name,
    )


def _algorithm(findings: Findings) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=findings.model_name,
        version=findings.model_version,
        parameters=[f"weights_sha256={findings.weights_sha256}"],
    )


def _measurement(name, value, unit, algorithm) -> hd.sr.Measurement:
    """One numeric measurement of the node's algorithm."""
    return hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algorithm)


def qc_text(check) -> str:
    """The TEXT of a failed check: its name in words and why (UT: no length limit to mind)."""
    return f"{check.name.replace('_', ' ')}: {check.detail}"


def severity_group(findings: Findings, seg: Dataset) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = _algorithm(findings)
    evaluations = [hd.sr.QualitativeEvaluation(codes.SEVERITY, codes.SEVERITY_VALUES[findings.severity])]
    qc = findings.qc
    if qc is not None:
        verdict = codes.SUCCEEDED if qc.passed else codes.FAILED
        evaluations.append(hd.sr.QualitativeEvaluation(codes.QUALITY_CONTROL, verdict))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(seg.SOPInstanceUID, "severity"),
        finding_type=codes.LUNG,
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations,
        measurements=[
            _measurement(codes.PROBABILITY, round(findings.probability_severe, 6), codes.NO_UNITS, algorithm),
            _measurement(codes.TOTAL_CT_SEVERITY_SCORE, int(findings.total_score), codes.NO_UNITS, algorithm),
        ],
    )
    for check in qc.failed if qc is not None else ():
        # TID 1501 takes TEXT qualitative evaluations beside the CODE ones; highdicom builds only
        # the CODE ones, so the TEXT items go into the group's container after them
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.FAILED_QUALITY_CHECK,
                value=qc_text(check),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def lobe_group(
    findings: Findings, lobe: Lobe, seg: Dataset, source: SourceSeries
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    lobe_type, laterality = codes.LOBE_CODES[lobe]
    finding = findings.lobe(lobe)
    algorithm = _algorithm(findings)
    site = hd.sr.FindingSite(anatomic_location=lobe_type, laterality=laterality)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(seg.SOPInstanceUID, lobe.display_name),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=int(lobe),
            source_series=hd.sr.SourceSeriesForSegmentation(source.series_instance_uid),
        ),
        finding_type=lobe_type,
        finding_sites=[site],
        algorithm_id=algorithm,
        measurements=[
            _measurement(codes.VOLUME, round(finding.volume_ml, 3), codes.MILLILITER, algorithm),
            _measurement(codes.OPACITY_PERCENTAGE, round(finding.opacity_percent, 3), codes.PERCENT, algorithm),
            _measurement(codes.CT_SEVERITY_SCORE, int(finding.severity_score), codes.NO_UNITS, algorithm),
        ],
    )


def build_sr(
    source: SourceSeries,
    seg: Dataset,
    findings: Findings,
    identity: ResultIdentity,
    ae_title: str,
) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(ae_title),
        procedure_reported=codes.CT_CHEST_REPORT,
        imaging_measurements=[
            severity_group(findings, seg),
            *(lobe_group(findings, lobe, seg, source) for lobe in Lobe),
        ],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source.headers, seg],
        content=report,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = series_description("Lung lobes and COVID-19 severity (M2UNet)", findings)
    sr.CodingSchemeIdentificationSequence = [codes.private_scheme_item()]
    return sr
