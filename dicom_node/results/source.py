"""The source series as the result objects see it: sanitised headers, one per volume slice.

The engine's lobe map is indexed like the reconstructed volume (z, y, x); ingest's
``reconstruct_series`` orders the source images by position along the slice normal, so header k
belongs to volume slice k and the SEG puts lobe-map slice k on that image. Multi-frame sources
(one instance, many slices) are not supported by the SEG builder and are refused here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicom_node.results.sanitize import sanitized_header


@dataclass(frozen=True)
class SourceSeries:
    """Sanitised source headers in volume slice order (index k is volume slice z = k)."""

    headers: tuple[Dataset, ...]

    def __post_init__(self) -> None:
        if not self.headers:
            raise ValueError("headers: the source series holds no image")
        series = {str(h.SeriesInstanceUID) for h in self.headers}
        if len(series) != 1:
            raise ValueError(f"SeriesInstanceUID: the headers come from {len(series)} series")

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


def source_from_reconstruction(reconstructed) -> SourceSeries:
    """From ``dicom_node.reconstruct.ReconstructedSeries``: its datasets, sanitised, in volume order."""
    instances = reconstructed.instances
    datasets = reconstructed.datasets
    if any(i.frame_number is not None for i in instances) or len(datasets) != len(instances):
        raise ValueError(
            f"NumberOfFrames: multi-frame source images are not supported for SEG "
            f"({len(instances)} slices from {len(datasets)} instances)"
        )
    for k, (instance, dataset) in enumerate(zip(instances, datasets)):
        if str(dataset.SOPInstanceUID) != instance.sop_instance_uid:
            raise ValueError(f"SOPInstanceUID: dataset {k} is not the source of volume slice {k}")
    return SourceSeries(headers=tuple(sanitized_header(d) for d in datasets))
