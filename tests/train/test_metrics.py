"""The paper's metrics and the CV report's mean ± std against values computed by hand."""

import json
import math

import numpy as np
import pytest

from train.cv import CrossValidation, FoldResult
from train.evaluate import CaseScore
from train.metrics import (
    auc_score,
    best_threshold,
    classification_metrics,
    dice,
    mean_std,
    roc_curve,
    segmentation_metrics,
)
from train.report import write_report


def test_classification_metrics_by_hand():
    # threshold 0.5: predicted severe = cases 0, 1, 4 -> TP 2 (0, 1), FP 1 (4), FN 1 (2), TN 2 (3, 5)
    y = [1, 1, 1, 0, 0, 0]
    p = [0.9, 0.6, 0.4, 0.3, 0.7, 0.1]
    m = classification_metrics(y, p, 0.5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # pairs (pos, neg) ranked correctly: 0.9 > all 3; 0.6 > 0.3, 0.1 (not 0.7); 0.4 > 0.3, 0.1 -> 7 of 9
    assert m["auc"] == pytest.approx(7 / 9)


def test_auc_counts_ties_as_half_and_is_nan_for_one_class():
    assert auc_score([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert auc_score([1, 1, 0], [0.8, 0.5, 0.5]) == pytest.approx((1 + 0.5) / 2)
    assert math.isnan(auc_score([1, 1], [0.2, 0.9]))


def test_no_positive_prediction_gives_zero_precision_and_f1():
    m = classification_metrics([1, 0], [0.1, 0.2], 0.5)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == 0.5


def test_roc_curve_runs_from_origin_to_one():
    fpr, tpr, _ = roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert list(tpr) == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_best_threshold_separates_a_separable_split():
    t = best_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8])
    assert 0.3 < t <= 0.6
    assert classification_metrics([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8], t)["accuracy"] == 1.0


def test_segmentation_metrics_by_hand():
    truth = np.zeros((1, 4, 5), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :, :2] = 1  # right upper lobe: 8 voxels
    pred[0, :, :3] = 1  # predicted: 12 voxels, 8 of them right
    truth[0, :, 4] = 5  # left lower lobe: 4 voxels, never predicted
    m = segmentation_metrics(pred, truth)
    assert m["dsc_right_upper"] == pytest.approx(2 * 8 / (12 + 8))
    assert m["sen_right_upper"] == pytest.approx(1.0)
    assert m["ppv_right_upper"] == pytest.approx(8 / 12)
    assert m["dsc_left_lower"] == 0.0
    assert m["dsc_right_middle"] == 1.0  # absent from both: agreement
    assert m["dsc"] == pytest.approx((0.8 + 1 + 1 + 1 + 0) / 5)
    assert dice(pred > 0, truth > 0) == pytest.approx(2 * 8 / (12 + 12))


def test_mean_std_is_the_population_std_and_ignores_nan():
    mean, std = mean_std([1.0, 2.0, 3.0, float("nan")])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(math.sqrt(2 / 3))


def _fold(variant, fold, metrics, scores=()):
    return FoldResult(variant=variant, fold=fold, threshold=0.5, selected_epoch=1, metrics=metrics, scores=list(scores))


def test_cv_report_tables_match_hand_computed_mean_and_std(tmp_path):
    folds = [
        {"accuracy": 0.9, "precision": 0.8, "recall": 1.0, "f1": 8 / 9, "auc": 0.95, "dsc": 0.70, "sen": 0.6, "ppv": 0.9},
        {"accuracy": 0.7, "precision": 0.6, "recall": 0.5, "f1": 6 / 11, "auc": 0.85, "dsc": 0.80, "sen": 0.8, "ppv": 0.8},
    ]
    for m in folds:
        for lobe in ("right_upper", "right_middle", "right_lower", "left_upper", "left_lower"):
            m[f"dsc_{lobe}"] = m["dsc"]
    scores = [CaseScore("a", True, 0.9, None), CaseScore("b", False, 0.2, None), CaseScore("c", True, 0.4, None)]
    cv = CrossValidation(
        folds=[[0, 1], [2, 3]],
        results=[
            _fold("m2unet", 1, folds[0], scores),
            _fold("m2unet", 2, folds[1], scores),
            _fold("cls_only", 1, {k: v for k, v in folds[0].items() if not k.startswith(("dsc", "sen", "ppv"))}, scores),
            _fold("cls_only", 2, {k: v for k, v in folds[1].items() if not k.startswith(("dsc", "sen", "ppv"))}, scores),
        ],
    )
    data = write_report(cv, tmp_path)
    accuracy_mean, accuracy_std = data["classification"]["m2unet"]["accuracy"]
    assert accuracy_mean == pytest.approx(0.8) and accuracy_std == pytest.approx(0.1)
    assert data["classification"]["m2unet"]["auc"] == pytest.approx([0.9, 0.05])
    assert data["segmentation"]["m2unet"]["dsc"] == pytest.approx([0.75, 0.05])
    assert "cls_only" not in data["segmentation"]  # Cls. Only has no lobes to report
    report = (tmp_path / "report.md").read_text()
    assert "| M2UNet | 0.800 ± 0.100 | 0.700 ± 0.100 | 0.750 ± 0.250 |" in report
    assert "| Cls. Only |" in report
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["folds"] == [[0, 1], [2, 3]]
