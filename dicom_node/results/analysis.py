"""From a reconstructed series to the numbers and the lobe map the result objects report.

reconstruct (ingest) -> ``Predictor.predict`` (lobe map and severity) -> ``quantify`` (lobe
volumes, opacity, CT severity scores) -> ``m2unet.qc.quality_check`` (what not to trust) ->
:class:`Analysis`. The lobe map is predicted on the
volume's grid and mapped back onto the source images' grid (``to_source_grid``: it undoes the
in-plane shift of a tilted gantry), which is the grid the SEG frames lie on.

The seed of the predictor's bag sampling comes from the Series Instance UID
(``m2unet.preprocessing.series_seed``), so the same series gives the same answer every run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dicom_node.results.findings import Findings, findings_from
from dicom_node.results.source import SourceSeries, source_from_reconstruction


@dataclass(frozen=True)
class Analysis:
    source: SourceSeries
    hu: np.ndarray  # the volume's HU, for the summary image
    lobe_map: np.ndarray  # on the source images' grid, in volume slice order
    findings: Findings
    timings: dict[str, float]  # seconds: predict (the engine's stages), quantify


def analyse(reconstructed, predictor) -> Analysis:
    from m2unet.preprocessing import series_seed
    from m2unet.quantify import quantify

    source = source_from_reconstruction(reconstructed)
    volume = reconstructed.volume
    started = time.perf_counter()
    prediction = predictor.predict(volume, seed=series_seed(source.series_instance_uid))
    predicted = time.perf_counter()
    if prediction.lobe_map is None or prediction.probability_severe is None:
        raise ValueError(f"weights variant {prediction.variant!r} does not give both lobes and severity")
    quantification = quantify(volume, prediction.lobe_map)
    quantified = time.perf_counter()
    qc = check_result(reconstructed, prediction, quantification)
    checked = time.perf_counter()
    lobe_map = np.ascontiguousarray(reconstructed.to_source_grid(prediction.lobe_map, order=0), dtype=np.uint8)
    return Analysis(
        source=source,
        hu=volume.hu,
        lobe_map=lobe_map,
        findings=findings_from(prediction, quantification, qc),
        timings={
            "predict": predicted - started,
            "quantify": quantified - predicted,
            "qc": checked - quantified,
            **{f"predict.{k}": v for k, v in prediction.timings.items()},
        },
    )


# exclusions that leave nothing out of the scan (an identical image sent twice)
HARMLESS_EXCLUSIONS = frozenset({"exact_duplicate"})


def source_slice_thickness(datasets) -> float | None:
    """The source's Slice Thickness (mm): the median over single-frame images, or a multi-frame
    image's Pixel Measures (shared, else the first frame's); None when the source gives none."""
    values = []
    for ds in datasets:
        value = ds.get("SliceThickness")
        if value in (None, ""):
            for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
                try:
                    value = ds[groups][0].PixelMeasuresSequence[0].get("SliceThickness")
                except (KeyError, IndexError, AttributeError):
                    continue
                if value not in (None, ""):
                    break
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            continue
    values = [v for v in values if v > 0 and np.isfinite(v)]
    return float(np.median(values)) if values else None


def check_result(reconstructed, prediction, quantification):
    """The quality check (``m2unet.qc``) of one result: the lobe map on the volume's grid, the
    source's slice thickness and the images reconstruction left out (duplicates aside)."""
    from collections import Counter

    from m2unet.qc import quality_check

    stated = getattr(reconstructed, "stated_exclusions", None)  # ingest's own list, where it has one
    if callable(stated):
        excluded = list(stated())
    else:
        excluded = [e for e in getattr(reconstructed, "excluded", []) if e.reason not in HARMLESS_EXCLUSIONS]
    return quality_check(
        reconstructed.volume,
        prediction.lobe_map,
        quantification,
        str(prediction.severity),
        float(prediction.probability_severe),
        slice_thickness_mm=source_slice_thickness(reconstructed.datasets),
        excluded_instances=len(excluded),
        total_instances=len(reconstructed.instances) + len(excluded),
        excluded_reasons=dict(Counter(e.reason for e in excluded)),
    )
