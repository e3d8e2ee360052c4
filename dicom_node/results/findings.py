"""The numbers a result set reports, gathered from the engine's prediction and quantification.

A plain record so the SEG, SR and summary builders need neither the predictor nor the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from m2unet.labels import Lobe
from m2unet.qc import QualityCheck

SEVERITIES = ("severe", "non-severe")


@dataclass(frozen=True)
class LobeFinding:
    lobe: Lobe
    volume_ml: float
    opacity_ml: float
    opacity_percent: float
    severity_score: int  # CT severity score of the lobe, 0..5


@dataclass(frozen=True)
class Findings:
    severity: str  # "severe" | "non-severe"
    probability_severe: float
    threshold: float
    lobes: tuple[LobeFinding, ...]  # in Lobe order, all five
    total_score: int  # 0..25
    model_name: str
    model_version: str
    weights_sha256: str
    trained: bool = True  # False: random-init weights (tests, demos): the numbers mean nothing
    caution: str = ""  # the weights' warning for every result (e.g. demo weights: not for clinical use)
    qc: QualityCheck | None = None  # the quality check of the result (m2unet.qc); None: not checked

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not 0.0 <= self.probability_severe <= 1.0:
            raise ValueError(f"probability_severe must be in [0, 1], got {self.probability_severe!r}")
        if tuple(f.lobe for f in self.lobes) != tuple(Lobe):
            raise ValueError(f"lobes must list the five lobes in order, got {[f.lobe for f in self.lobes]}")
        for f in self.lobes:
            if not 0 <= f.severity_score <= 5:
                raise ValueError(f"severity_score of {f.lobe.name} must be 0..5, got {f.severity_score!r}")
        if not 0 <= self.total_score <= 25:
            raise ValueError(f"total_score must be 0..25, got {self.total_score!r}")

    @property
    def for_clinical_use(self) -> bool:
        """False when the weights are untrained or carry a caution: every result object then says
        so where a reader looks first (series description, summary image)."""
        return self.trained and not self.caution

    def lobe(self, lobe: Lobe) -> LobeFinding:
        return self.lobes[int(lobe) - 1]


def findings_from(prediction, quantification, qc: QualityCheck | None = None) -> Findings:
    """Combine ``m2unet.predictor.Prediction``, ``m2unet.quantify.Quantification`` and the
    result's quality check (``m2unet.qc.quality_check``)."""
    lobes = tuple(
        LobeFinding(
            lobe=lobe,
            volume_ml=float(quantification.lobes[lobe].volume_ml),
            opacity_ml=float(quantification.lobes[lobe].opacity_ml),
            opacity_percent=float(quantification.lobes[lobe].opacity_percent),
            severity_score=int(quantification.lobes[lobe].severity_score),
        )
        for lobe in Lobe
    )
    return Findings(
        severity=str(prediction.severity),
        probability_severe=float(prediction.probability_severe),
        threshold=float(prediction.threshold),
        lobes=lobes,
        total_score=int(quantification.total_score),
        model_name=str(prediction.model_name),
        model_version=str(prediction.model_version),
        weights_sha256=str(prediction.weights_sha256),
        trained=bool(getattr(prediction, "trained", True)),
        caution=str(getattr(prediction, "caution", "")),
        qc=qc,
    )


NOT_FOR_CLINICAL_USE = " - NOT FOR CLINICAL USE"


def series_description(base: str, findings: Findings) -> str:
    """A result series' description: ``base``, marked when the results are not for clinical use
    (a PACS shows the description in its series list, before anyone opens the object)."""
    text = base if findings.for_clinical_use else base + NOT_FOR_CLINICAL_USE
    if len(text) > 64:
        raise ValueError(f"series description longer than 64 characters (LO): {text!r}")
    return text


def lobe_key(lobe: Lobe) -> str:
    """The lobe's key in JSON output: ``right_upper``, ``right_middle``, ... ``left_lower``."""
    return lobe.name.lower()


def findings_dict(findings: Findings) -> dict:
    """The findings as JSON (what ``m2unet-node process`` prints, see :mod:`dicom_node.pipeline.offline`,
    and ``findings.json`` beside each result set); ``qc``
    is ``{"passed", "checks": [{"name", "passed", "detail"}, ...]}`` (null when not checked)."""
    return {
        "severity": findings.severity,
        "probability_severe": round(findings.probability_severe, 6),
        "threshold": findings.threshold,
        "lobes": {
            lobe_key(f.lobe): {
                "name": f.lobe.display_name,
                "volume_ml": round(f.volume_ml, 3),
                "opacity_ml": round(f.opacity_ml, 3),
                "opacity_percent": round(f.opacity_percent, 3),
                "severity_score": f.severity_score,
            }
            for f in findings.lobes
        },
        "total_score": findings.total_score,
        "model": {
            "name": findings.model_name,
            "version": findings.model_version,
            "weights_sha256": findings.weights_sha256,
            "trained": findings.trained,
            "caution": findings.caution,
        },
        "qc": findings.qc.to_dict() if findings.qc is not None else None,
    }
