"""The severity label of a synthetic case: CT severity score and a clinical-style rule.

CT severity score after Pan et al. 2020 (Radiology 295:715, "Time course of lung changes on chest
CT during recovery from 2019 novel coronavirus (COVID-19) pneumonia"): each of the five lobes
scores 0 to 5 by the percentage of its volume involved (ground-glass or consolidation), and the
total is 0 to 25:

    0: none, 1: < 5 %, 2: 5-25 %, 3: 26-49 %, 4: 50-75 %, 5: > 75 %

The phantom's label is **severe when the total score is 18 or more**. Francone et al. 2020
(Eur Radiol 30:6808, "Chest CT score in COVID-19 patients: correlation with disease severity and
short-term prognosis") scored the same 25-point scale and found a total of 18 or more to mark the
patients at high risk (severe and critical disease, mortality). The paper we follow labels by the
clinical types of China's guideline (mild and moderate non-severe; severe and critical severe),
which imaging alone cannot give; this rule is the imaging proxy that lets synthetic data carry a
label consistent with what it shows. It is a training device, not a clinical criterion.

The per-lobe scale is the engine's (:func:`m2unet.quantify.severity_score`); the phantom scores
the lesion masks it drew, the node scores the opacity it measures in HU.
"""

from __future__ import annotations

import numpy as np

from m2unet.labels import to_lobe_map
from m2unet.quantify import severity_score

SEVERE_TOTAL_SCORE = 18
MAX_LOBE_SCORE = 5


def lobe_severity_score(involvement_percent: float) -> int:
    """Pan et al. 2020 lobe score (0-5): the engine's :func:`m2unet.quantify.severity_score`, so
    the phantom's truth and the node's measurement use one scale; read literally (any lesion voxel
    is involvement), since the phantom knows its lesions exactly and has no measurement noise."""
    return severity_score(involvement_percent, none_below=0.0)


def is_severe(total_score: int) -> bool:
    """The phantom's clinical-style rule: severe when the CT severity score is 18 of 25 or more."""
    if not 0 <= total_score <= 25:
        raise ValueError(f"total_score = {total_score!r} is outside 0..25")
    return total_score >= SEVERE_TOTAL_SCORE


class LabelledCase:
    """What every phantom case says of itself from its ``severe`` flag and 7-class ``class_map``
    (a mixin of :class:`m2unet.phantom.Phantom` and :class:`m2unet.phantoms.AnatomyPhantom`)."""

    severe: bool
    class_map: np.ndarray

    @property
    def severity(self) -> str:
        return "severe" if self.severe else "non-severe"

    @property
    def lobe_map(self) -> np.ndarray:
        """The 5-lobe map (:class:`m2unet.labels.Lobe` labels; the lingula merged into the left upper lobe)."""
        return to_lobe_map(self.class_map)
