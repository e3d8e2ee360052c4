"""The real-anatomy training run's bookkeeping: fixed held-out split, forced severity, comparison."""

from __future__ import annotations

import pytest

from m2unet.phantoms import HELD_OUT, annotation_name, split_annotations
from train.anatomy_data import forced_severity, training_seed
from train.anatomy_run import LOBE_KEYS, card_metrics, compare
from tests.support.paths import SHARED


def _row(case, value):
    return {"case": case, "severe": False, "probability_severe": 0.01, **{k: value for k in LOBE_KEYS}}


def test_compare_uses_only_the_cases_every_weights_file_scored():
    real = {"all_pass": True, "probability_severe": 0.01}
    results = {
        "old": {"holdout-anatomy": [_row("a", 0.5), _row("b", 0.7)], "real_ct": real},
        "new": {"holdout-anatomy": [_row("a", 0.9), _row("b", 0.9), _row("c", 0.1)], "real_ct": real},
    }
    table = compare(results)
    assert table["cases"] == 2
    assert table["mean"]["old"]["dsc"] == 0.6 and table["mean"]["new"]["dsc"] == 0.9  # "c" left out
    assert table["mean"]["old"]["worst_lobe_case"] == 0.5
    # each file's own summary covers all its renders; rows naming no annotation are not layout-checked
    assert table["mean"]["new"]["summary"]["dsc"] == pytest.approx(0.6333, abs=1e-4)
    assert table["mean"]["new"]["summary"]["layout_consistent_cases"] == 0


def test_the_card_figures_come_from_the_measurement():
    real = {"all_pass": False, "probability_severe": 0.2, "lobe_union_dice_vs_hu_lung_mask": 0.95,
            "network_union_dice_vs_hu_lung_mask": 0.94, "lobe_volumes_ml": {"right_upper": 900.0}}
    anatomy = [_row("a", 0.8), {**_row("b", 0.9), "severe": True, "probability_severe": 0.7}]
    anatomy[0]["dsc_right_middle"] = 0.3
    look = [{**_row(f"l{i}", 0.5), "ct_severity_score": i, "probability_severe": p, "severe": i > 2}
            for i, p in enumerate([0.01, 0.05, 0.02, 0.6, 0.9])]
    metrics = card_metrics({"holdout-anatomy": anatomy, "holdout-look": look, "real_ct": real})
    assert metrics["holdout_anatomy_cases"] == 2 and metrics["holdout_anatomy_dsc"] == 0.85
    assert metrics["holdout_anatomy_dsc_right_middle"] == 0.6 and metrics["holdout_anatomy_worst_lobe_case"] == 0.3
    assert metrics["holdout_anatomy_auc"] == 1.0 and metrics["crazy_paving_auc"] == 1.0
    assert metrics["crazy_paving_spearman_probability_vs_ct_severity_score"] == 0.9  # one pair out of order
    assert metrics["real_ct_anatomy_checks_pass"] is False and metrics["real_ct_probability_severe"] == 0.2
    assert metrics["real_ct_lobe_volumes_ml"] == {"right_upper": 900.0}
    assert "holdout_anatomy_dsc_layout_consistent" not in metrics  # no row names an annotation


def test_seeds_and_severity_are_fixed_and_about_two_in_five_severe():
    assert training_seed(3, 2) == 3002 and training_seed(3, 2) != training_seed(2, 3)
    labels = [forced_severity(s) for s in range(2000)]
    assert labels == [forced_severity(s) for s in range(2000)]
    assert 0.35 < labels.count("severe") / 2000 < 0.45
    richer = [forced_severity(s, 0.6) for s in range(2000)]
    assert 0.55 < richer.count("severe") / 2000 < 0.65  # render --severe-share
    assert all(r == "severe" for r, l in zip(richer, labels) if l == "severe")  # a case only turns severe


def test_the_held_out_chests_are_never_in_the_training_split():
    folder = SHARED / "data" / "lobe-masks"
    paths = sorted(folder.glob("*_LobeSegmentation.nrrd"))
    train, held = split_annotations(paths)
    assert {annotation_name(p) for p in train}.isdisjoint(HELD_OUT)
    if paths:
        assert len(held) == 8 and len(train) == 32
