"""The DICOM Segmentation of the five lung lobes (highdicom ``Segmentation``).

Choices, and why:

- BINARY, one segment per lobe (1 right upper, 2 right middle, 3 right lower, 4 left upper with
  the lingula merged in, 5 left lower; segment number = ``Lobe`` value). Binary segmentations
  are what every SEG-capable viewer and dcmqi read; LABELMAP segmentations (2024) are not yet
  read by dcmqi 1.5 nor by most viewers, and FRACTIONAL would suggest a probability we do not
  report.
- Empty frames are kept (``omit_empty_frames=False``): every segment has one frame per source
  image, so frame k of each segment lies on source image k. Viewers that place frames by index
  rather than by Per-Frame Plane Position misalign a SEG whose empty frames were omitted (the
  upper lobes end where the lower lobes go on); with all frames present both ways agree. The cost
  is size (1 bit per voxel per segment: 300 slices of 512 x 512 make 49 MB), which we accept for
  correctness.
- A multi-frame source (one Enhanced CT image) is passed to highdicom as the single source image.
  When the volume uses every frame, the lobe map is put into the source's frame order (lobe-map
  slice k becomes plane ``frame_numbers[k] - 1``), and highdicom takes each plane's position and
  Referenced Frame Number from the source's Per-frame Functional Groups. When selection left
  frames out, each lobe-map slice is given the position of its own frame and highdicom finds the
  frame at that position. Either way each SEG frame references the source frame it lies on (in
  the second case also any left-out frame at the very same position, e.g. an exact duplicate).
- Category Anatomical Structure (SCT 91723000), types upper lobe of lung (SCT 45653009), middle
  lobe of right lung (SCT 72481006), lower lobe of lung (SCT 90572001), each with its laterality
  right (SCT 24028007) or left (SCT 7771000) as type modifier; algorithm type AUTOMATIC, the
  algorithm identified by the model's name and version, family Artificial Intelligence (DCM
  123110), and the weights' sha256 as a parameter.
- The source headers passed in are sanitised copies (``sanitize``), in volume order, so the SEG
  references every source image, takes the study, patient and Frame of Reference of the source,
  and dciodvfy finds no error in what it inherits.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np

from dicom_node.results import codes
from dicom_node.results.colours import LOBE_RGB
from dicom_node.results.equipment import MANUFACTURER, MODEL_NAME, software_version
from dicom_node.results.findings import Findings, series_description
from dicom_node.results.functional_groups import number_of_frames
from dicom_node.results.source import SourceSeries
from dicom_node.results.uids import ResultIdentity, derived_uid
from m2unet.labels import Lobe


def algorithm_identification(findings: Findings) -> hd.AlgorithmIdentificationSequence:
    """The model as the segmentation algorithm: name, version, family AI, weights' sha256."""
    return hd.AlgorithmIdentificationSequence(
        name=findings.model_name,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=findings.model_version,
        source=MANUFACTURER,
        parameters={"weights_sha256": findings.weights_sha256},
    )


def segment_descriptions(findings: Findings) -> list[hd.seg.SegmentDescription]:
    algorithm = algorithm_identification(findings)
    descriptions = []
    for lobe in Lobe:
        lobe_type, laterality = codes.LOBE_CODES[lobe]
        description = hd.seg.SegmentDescription(
            segment_number=int(lobe),
            segment_label=lobe.display_name,
            segmented_property_category=codes.ANATOMICAL_STRUCTURE,
            segmented_property_type=lobe_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.LUNG],
            display_color=hd.color.CIELabColor.from_rgb(*LOBE_RGB[lobe]),
        )
        # laterality is a type modifier (CID 244); highdicom's constructor has no argument for it
        modifier = hd.sr.CodedConcept.from_code(laterality)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
    return descriptions


def source_planes(
    source: SourceSeries, lobe_map: np.ndarray
) -> tuple[np.ndarray, list[hd.PlanePositionSequence] | None]:
    """The planes and plane positions to give highdicom for ``lobe_map`` (volume slice order).

    Single-frame source: the lobe map as it is (plane k on source image k), no positions.
    Multi-frame source using every frame: the lobe map in frame order (plane i on frame i + 1),
    no positions. Multi-frame source using some frames: the lobe map as it is, with the position
    of each slice's frame, which highdicom matches to the source frame at that position.
    """
    if source.frame_numbers is None:
        return lobe_map, None
    frames = number_of_frames(source.headers[0])
    indices = np.asarray(source.frame_numbers) - 1
    if len(indices) == frames:
        planes = np.empty_like(lobe_map)
        planes[indices] = lobe_map
        return planes, None
    positions = [
        hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, source.slice_position(k))
        for k in range(source.slice_count)
    ]
    return lobe_map, positions


def build_seg(
    source: SourceSeries,
    lobe_map: np.ndarray,
    findings: Findings,
    identity: ResultIdentity,
    device_serial_number: str,
) -> hd.seg.Segmentation:
    """The SEG of ``lobe_map`` (uint8, z-y-x, ``Lobe`` labels, indexed like the source volume)."""
    lobe_map = np.asarray(lobe_map)
    expected = (source.slice_count, int(source.headers[0].Rows), int(source.headers[0].Columns))
    if lobe_map.shape != expected:
        raise ValueError(f"lobe_map shape {lobe_map.shape} does not match the source images {expected}")
    if lobe_map.size and int(lobe_map.max()) > max(Lobe):
        raise ValueError(f"lobe_map holds label {int(lobe_map.max())}, beyond the five lobes")
    planes, plane_positions = source_planes(source, lobe_map.astype(np.uint8, copy=False))
    seg = hd.seg.Segmentation(
        source_images=list(source.headers),
        pixel_array=planes,
        plane_positions=plane_positions,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(findings),
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=software_version(),
        device_serial_number=device_serial_number,
        content_description="Lung lobes (M2UNet)",
        content_label="LUNG_LOBES",
        content_creator_name=None,
        omit_empty_frames=False,
    )
    seg.SeriesDescription = series_description("Lung lobes (M2UNet)", findings)
    # highdicom draws a random Dimension Organization UID; derive it so a rebuild is identical
    dimension_uid = derived_uid(identity.sop_instance_uid, "dimension organization")
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    return seg
