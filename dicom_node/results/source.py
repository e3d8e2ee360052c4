"""The source series as the result objects see it: sanitised headers and where each volume slice lies.

The engine's lobe map is indexed like the reconstructed volume (z, y, x); ingest's
``reconstruct_series`` orders the source images by position along the slice normal. Two kinds
of source are supported:

- single-frame images (CT Image Storage): one header per volume slice, header k belongs to volume
  slice k, and the SEG puts lobe-map slice k on that image;
- one multi-frame image (Enhanced CT, Legacy Converted Enhanced CT): one header holding every
  slice as a frame, and ``frame_numbers[k]`` is the frame (1-based, as Referenced Frame Number)
  that volume slice k comes from. Frames are stored in any order, so the volume's order and the
  frame order may differ; some frames may not be in the volume at all (selection left them out).

A series made of several multi-frame images, or of single- and multi-frame images mixed, is
refused: a SEG derives from either single-frame images or one multi-frame image.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from pydicom.dataset import Dataset

from dicom_node.results.functional_groups import frame_position, number_of_frames, share_identical_groups
from dicom_node.results.sanitize import HeaderRepairs, sanitized_header

log = structlog.get_logger()


@dataclass(frozen=True)
class SourceSeries:
    """Sanitised source headers; volume slice k lies on ``headers[k]`` (single-frame source) or
    on frame ``frame_numbers[k]`` of ``headers[0]`` (multi-frame source)."""

    headers: tuple[Dataset, ...]
    frame_numbers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.headers:
            raise ValueError("headers: the source series holds no image")
        series = {str(h.SeriesInstanceUID) for h in self.headers}
        if len(series) != 1:
            raise ValueError(f"SeriesInstanceUID: the headers come from {len(series)} series")
        if self.frame_numbers is None:
            return
        if len(self.headers) != 1:
            raise ValueError(f"frame_numbers: given for {len(self.headers)} images; a multi-frame source is one image")
        if not self.frame_numbers:
            raise ValueError("frame_numbers: the multi-frame source holds no volume slice")
        frames = number_of_frames(self.headers[0])
        if not all(1 <= n <= frames for n in self.frame_numbers):
            raise ValueError(f"frame_numbers: {list(self.frame_numbers)} are not all in 1..{frames} (NumberOfFrames)")
        if len(set(self.frame_numbers)) != len(self.frame_numbers):
            raise ValueError("frame_numbers: a frame belongs to more than one volume slice")

    @property
    def is_multiframe(self) -> bool:
        return self.frame_numbers is not None

    @property
    def slice_count(self) -> int:
        """The number of volume slices (lobe-map slices) the source covers."""
        return len(self.frame_numbers) if self.frame_numbers is not None else len(self.headers)

    @property
    def study_instance_uid(self) -> str:
        return str(self.headers[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def series_number(self) -> int | None:
        value = self.headers[0].get("SeriesNumber")
        return int(value) if value not in (None, "") else None

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(str(h.SOPInstanceUID) for h in self.headers)

    def slice_position(self, k: int) -> tuple[float, float, float] | None:
        """Image Position (Patient) of the source image (or frame) of volume slice k."""
        if self.frame_numbers is not None:
            return frame_position(self.headers[0], self.frame_numbers[k])
        position = self.headers[k].get("ImagePositionPatient")
        return tuple(float(v) for v in position) if position is not None and len(position) == 3 else None


def _warn_repairs(repairs: HeaderRepairs, datasets) -> None:
    """One warning per series naming the patient/study attributes copied empty (never a value)."""
    if repairs:
        log.warning(
            "source_attributes_repaired",
            series_uid=str(datasets[0].get("SeriesInstanceUID", "")),
            invalid_copied_empty=sorted(repairs.invalid),
            missing_added_empty=sorted(repairs.missing),
        )


def source_from_reconstruction(reconstructed) -> SourceSeries:
    """From ``dicom_node.series.reconstruct.ReconstructedSeries``: its datasets, sanitised, in volume order.
    Invalid or missing patient/study attributes are copied empty (``sanitize``) and logged once as
    ``source_attributes_repaired`` with their keywords."""
    repairs = HeaderRepairs()
    instances = reconstructed.instances
    datasets = reconstructed.datasets
    framed = [i.frame_number is not None for i in instances]
    if any(framed):
        if not all(framed) or len(datasets) != 1:
            raise ValueError(
                f"NumberOfFrames: a SEG derives from single-frame images or from one multi-frame image; "
                f"this series has {len(instances)} slices from {len(datasets)} instances, "
                f"{sum(framed)} of them frames of multi-frame instances"
            )
        uid = str(datasets[0].SOPInstanceUID)
        for k, instance in enumerate(instances):
            if instance.sop_instance_uid != uid:
                raise ValueError(f"SOPInstanceUID: dataset 0 is not the source of volume slice {k}")
        header = share_identical_groups(sanitized_header(datasets[0], repairs))
        _warn_repairs(repairs, datasets)
        return SourceSeries(headers=(header,), frame_numbers=tuple(int(i.frame_number) for i in instances))
    if len(datasets) != len(instances):
        raise ValueError(f"SOPInstanceUID: {len(instances)} slices from {len(datasets)} single-frame instances")
    for k, (instance, dataset) in enumerate(zip(instances, datasets)):
        if str(dataset.SOPInstanceUID) != instance.sop_instance_uid:
            raise ValueError(f"SOPInstanceUID: dataset {k} is not the source of volume slice {k}")
    headers = tuple(sanitized_header(d, repairs) for d in datasets)
    _warn_repairs(repairs, datasets)
    return SourceSeries(headers=headers)
