"""One series through the model: instance files -> volume -> predictor -> quantification and
quality check -> findings -> result objects.

The one implementation of these steps, used by the pipeline job (:mod:`dicom_node.pipeline.worker`)
and by ``m2unet-node process`` (:mod:`dicom_node.pipeline.offline`). It builds the objects and
writes nothing: where they go (the results folder and the outbox, or ``--out``), what a failure
means (a ``failed`` series or exit 2) and how long to wait after a full disk are the callers'.

:func:`process_series` runs three steps and reports each one to ``on_step`` before starting it:

- ``"read"``: ``reconstruct_series`` on the files (raises ``UnusableSeries``, a
  ``ValueError`` with a ``reason``, for a series it refuses);
- ``"analyse"``: the predictor, ``quantify`` and ``m2unet.qc`` (``results.analysis.analyse``);
  with no predictor given, :func:`load_predictor` loads ``[model]``'s here, once the series is
  known to be usable;
- ``"build"``: SEG, SR and (``[results] summary_image``) the summary image
  (``results.build.build_result_set``), for ``version`` and stamped with ``created``.

From ``"analyse"`` on, ``on_step`` also gets the reconstructed series, so that a caller can keep
its patient and study values out of the text of a later failure (``results.sanitize.scrub_text``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dicom_node.results.analysis import Analysis, analyse
from dicom_node.results.build import ResultSet, build_result_set
from dicom_node.results.findings import findings_dict

STEPS = ("read", "analyse", "build")


def load_predictor(config):
    """The predictor of ``[model]`` (``weights``, ``device``, and ``bags`` when the config has
    that key; else the engine's default number of bags); raises ``ValueError`` when the weights
    are unusable or lack the lobes or the severity."""
    from m2unet.predictor import Predictor

    bags = getattr(config.model, "bags", None)  # [model] bags, once the config has it
    options = {"bags": int(bags)} if bags else {}
    predictor = Predictor.from_weights(config.model.weights, config.model.device, **options)
    predictor.require_variant(lobes=True, severity=True)
    return predictor


@dataclass(frozen=True)
class Processed:
    """What one series gave: the reconstruction (``volume``, the images used and left out), the
    analysis (lobe map on the source grid, ``findings``) and the result objects."""

    reconstructed: object  # series.reconstruct.ReconstructedSeries
    analysis: Analysis
    result_set: ResultSet
    timings: dict[str, float]  # seconds: reconstruct, load_weights (when loaded here), the analysis', build

    @property
    def volume(self):
        return self.reconstructed.volume

    @property
    def findings(self):
        return self.analysis.findings

    def findings_json(self) -> dict:
        """``findings.json``: :func:`~dicom_node.results.findings.findings_dict` with the images
        reconstruction left out."""
        return with_exclusions(findings_dict(self.analysis.findings), self.reconstructed)


def with_exclusions(findings: dict, reconstructed) -> dict:
    """``findings["excluded_instances"] = {"count", "of", "reasons", "details"}`` when reconstruction
    left images out (duplicates aside)."""
    summary = reconstructed.exclusion_summary()
    if summary is not None:
        findings["excluded_instances"] = summary
    return findings


def process_series(
    paths: Sequence[str | Path],
    predictor,
    config,
    *,
    version: int = 1,
    created: datetime | None = None,
    on_step: Callable[[str, object], None] | None = None,
) -> Processed:
    """The result set of the series in ``paths`` (see the module's docstring).

    ``predictor``: a loaded predictor, or None to load ``[model]``'s after reading the series.
    ``created``: the creation time stamped on every object (default: now, whole seconds); the
    same ``created`` and ``version`` rebuild the same objects byte for byte.
    ``on_step(step, reconstructed)``: called before each of :data:`STEPS` (``reconstructed`` is
    None before ``"read"``)."""
    from dicom_node.series.reconstruct import reconstruct_series

    step = on_step or (lambda name, reconstructed: None)
    timings: dict[str, float] = {}
    step("read", None)
    started = time.perf_counter()
    reconstructed = reconstruct_series(list(paths))
    timings["reconstruct"] = time.perf_counter() - started
    step("analyse", reconstructed)
    if predictor is None:
        started = time.perf_counter()
        predictor = load_predictor(config)
        timings["load_weights"] = time.perf_counter() - started
    analysis = analyse(reconstructed, predictor)
    timings.update(analysis.timings)
    step("build", reconstructed)
    started = time.perf_counter()
    result_set = build_result_set(
        analysis.source,
        analysis.hu,
        analysis.lobe_map,
        analysis.findings,
        version=version,
        ae_title=config.node.ae_title,
        created=created if created is not None else datetime.now().replace(microsecond=0),
        summary_image=config.results.summary_image,
    )
    timings["build"] = time.perf_counter() - started
    return Processed(reconstructed=reconstructed, analysis=analysis, result_set=result_set, timings=timings)


__all__ = ["STEPS", "Processed", "load_predictor", "process_series", "with_exclusions"]
