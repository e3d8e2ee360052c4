"""From a reconstructed series to the numbers and the lobe map the result objects report.

reconstruct (ingest) -> ``Predictor.predict`` (lobe map and severity) -> ``quantify`` (lobe
volumes, opacity, CT severity scores) -> :class:`Analysis`. The lobe map is predicted on the
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
    lobe_map = np.ascontiguousarray(reconstructed.to_source_grid(prediction.lobe_map, order=0), dtype=np.uint8)
    return Analysis(
        source=source,
        hu=volume.hu,
        lobe_map=lobe_map,
        findings=findings_from(prediction, quantification),
        timings={"predict": predicted - started, "quantify": quantified - predicted, **{f"predict.{k}": v for k, v in prediction.timings.items()}},
    )
