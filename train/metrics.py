"""The paper's metrics (Section IV-C).

Classification (Table II): Accuracy, Precision, Recall, F1 score and the area under the ROC curve,
with severe as the positive class. Precision (or F1) with no positive prediction is 0, as is recall
with no positive case. AUC is the Mann-Whitney statistic (ties count one half); it is undefined (NaN)
when only one class is present.

Segmentation (Table III): per lobe, DSC = 2TP / (2TP + FP + FN), SEN = TP / (TP + FN),
PPV = TP / (TP + FP), from voxel counts over a case; a lobe absent from both maps scores 1.
The case's score is the mean over the five lobes. Over folds: mean and standard deviation
(population, ``ddof=0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from m2unet.labels import Lobe

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "auc")
SEGMENTATION_METRICS = ("dsc", "sen", "ppv")


def _binary(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.isin(array, (0, 1, True, False)).all():
        raise ValueError(f"{name} must hold 0/1 labels, got values {sorted(set(array.tolist()))[:5]}")
    return array.astype(bool)


def auc_score(y_true, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U / (P * N)); NaN with a single class."""
    y = _binary(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores shape {s.shape} differs from y_true shape {y.shape}")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0  # average rank of the tie group
        i = j + 1
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and the thresholds (``score >= t`` is positive),
    from (0, 0) to (1, 1)."""
    y = _binary(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    positives, negatives = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.array([(s[y] >= t).sum() / positives for t in thresholds])
    fpr = np.array([(s[~y] >= t).sum() / negatives for t in thresholds])
    return fpr, tpr, thresholds


def classification_metrics(y_true, probabilities, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, Precision, Recall, F1 and AUC; a case is predicted severe when
    ``probability >= threshold``."""
    y = _binary(y_true, "y_true")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"probabilities shape {p.shape} differs from y_true shape {y.shape}")
    if not y.size:
        raise ValueError("no cases to score")
    predicted = p >= threshold
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    tn = int((~predicted & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / y.size,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": auc_score(y, p),
    }


def best_threshold(y_true, probabilities) -> float:
    """The threshold that maximises Youden's J (TPR - FPR) on a selection split, between the two
    probabilities it separates; 0.5 when the split has a single class."""
    y = _binary(y_true, "y_true")
    p = np.asarray(probabilities, dtype=np.float64)
    if y.all() or not y.any():
        return 0.5
    candidates = np.unique(p)
    best, best_j = 0.5, -math.inf
    for k, t in enumerate(candidates):
        j = (p[y] >= t).mean() - (p[~y] >= t).mean()
        if j > best_j:
            below = candidates[k - 1] if k else 0.0
            best, best_j = float((t + below) / 2.0), j
    return min(max(best, 1e-6), 1 - 1e-6)


@dataclass(frozen=True)
class OverlapCounts:
    tp: int
    fp: int
    fn: int

    @property
    def dsc(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator

    @property
    def sen(self) -> float:
        denominator = self.tp + self.fn
        return 1.0 if denominator == 0 else self.tp / denominator

    @property
    def ppv(self) -> float:
        denominator = self.tp + self.fp
        return 1.0 if denominator == 0 else self.tp / denominator


def overlap(predicted: np.ndarray, truth: np.ndarray, label: int) -> OverlapCounts:
    a = np.asarray(predicted) == label
    b = np.asarray(truth) == label
    return OverlapCounts(tp=int((a & b).sum()), fp=int((a & ~b).sum()), fn=int((~a & b).sum()))


def segmentation_metrics(predicted_lobes: np.ndarray, true_lobes: np.ndarray) -> dict[str, float]:
    """DSC, SEN and PPV per lobe (``dsc_right_upper`` ...) and their mean over the five lobes
    (``dsc``, ``sen``, ``ppv``), for two lobe maps (labels :class:`m2unet.labels.Lobe`)."""
    predicted_lobes, true_lobes = np.asarray(predicted_lobes), np.asarray(true_lobes)
    if predicted_lobes.shape != true_lobes.shape:
        raise ValueError(f"lobe maps differ in shape: {predicted_lobes.shape} vs {true_lobes.shape}")
    out: dict[str, float] = {}
    sums = dict.fromkeys(SEGMENTATION_METRICS, 0.0)
    for lobe in Lobe:
        counts = overlap(predicted_lobes, true_lobes, int(lobe))
        key = lobe.name.lower()
        for metric in SEGMENTATION_METRICS:
            value = getattr(counts, metric)
            out[f"{metric}_{key}"] = value
            sums[metric] += value
    for metric in SEGMENTATION_METRICS:
        out[metric] = sums[metric] / len(Lobe)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (1 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    denominator = int(a.sum()) + int(b.sum())
    return 1.0 if denominator == 0 else 2.0 * int((a & b).sum()) / denominator


def mean_std(values) -> tuple[float, float]:
    """Mean and population standard deviation, ignoring NaN (NaN, NaN when nothing is left)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if not array.size:
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std())
