"""The training loop: recipe, schedule, balancing, resumable checkpoints."""

import json

import numpy as np
import pytest
import torch

from train.fit import CHECKPOINT, fit, poly_learning_rate, preprocessing_config
from train.recipe import PAPER, SMOKE, Recipe, preset
from train.sampling import balanced_case_order, collate, draw_bag


def test_paper_recipe_is_the_default():
    r = Recipe()
    assert (r.optimizer, r.learning_rate, r.poly_power, r.momentum, r.weight_decay) == ("sgd", 0.01, 0.75, 0.9, 1e-4)
    assert (r.epochs, r.mil_weight, r.bag_size, r.patch_size, r.duplicate_severe) == (100, 0.01, 200, 128, True)
    assert r.in_plane_spacing_mm is None and r == PAPER
    assert preset("cpu-demo").preset == "cpu-demo"
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        preset("fast")


def test_recipe_round_trips_and_refuses_bad_settings(tmp_path):
    recipe = SMOKE.replace(seed=3)
    assert Recipe.load(recipe.save(tmp_path / "r.json")) == recipe
    with pytest.raises(ValueError, match="patch_size must be a positive multiple of 16, got 100"):
        Recipe(patch_size=100)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Recipe(optimizer="lbfgs")
    (tmp_path / "bad.json").write_text(json.dumps({"bag_sise": 3}))
    with pytest.raises(ValueError, match=r"bad\.json: recipe has unknown settings: bag_sise"):
        Recipe.load(tmp_path / "bad.json")


def test_poly_schedule():
    r = Recipe()
    assert poly_learning_rate(r, 0, 100) == pytest.approx(0.01)
    assert poly_learning_rate(r, 50, 100) == pytest.approx(0.01 * 0.5**0.75)
    assert poly_learning_rate(r, 100, 100) == 0.0
    warm = Recipe(warmup_steps=10)
    assert poly_learning_rate(warm, 4, 100) == pytest.approx(0.005)


def test_severe_cases_are_duplicated_to_balance():
    severe = [True] + [False] * 4
    order = balanced_case_order(severe, True, np.random.default_rng(0))
    assert sorted(order) == [0, 0, 0, 0, 1, 2, 3, 4]
    assert sorted(balanced_case_order(severe, False, np.random.default_rng(0))) == [0, 1, 2, 3, 4]


def test_bags_carry_the_class_map_cut_at_the_same_places(tiny):
    config = preprocessing_config(SMOKE.replace(patch_size=32))
    case = tiny[0]
    bag = draw_bag(case, config, np.random.default_rng(1), 6)
    assert bag.patches.shape == (6, 1, 32, 32) and bag.targets.shape == (6, 32, 32)
    images, severity, targets, has_mask = collate([bag, bag])
    assert images.shape == (2, 6, 1, 32, 32) and targets.shape == (2, 6, 32, 32) and has_mask.all()
    # a patch's lung pixels are dark in the window, its background mostly not: the cut is aligned
    lung = bag.targets > 0
    assert lung.any()
    assert bag.patches[:, 0][lung].mean() < bag.patches[:, 0][~lung].mean()


def test_segmentation_loss_only_where_masks_exist(tiny):
    no_mask = [type(c)(c.case_id, c.image, None, c.severe, c.spacing) for c in tiny]
    config = preprocessing_config(SMOKE)
    bags = [draw_bag(c, config, np.random.default_rng(0), 2) for c in no_mask[:2]]
    images, severity, targets, has_mask = collate(bags)
    assert targets is None and not has_mask.any()


def test_fit_resumes_from_its_checkpoint(tmp_path, tiny):
    recipe = SMOKE.replace(epochs=2, steps_per_epoch=2)
    straight = fit(recipe, tiny, tmp_path / "straight", progress=False)

    class Interrupt(Exception):
        pass

    def interrupt_in_epoch_2(model, cases, rc):
        raise Interrupt  # after epoch 2's steps, before its checkpoint: epoch 1's checkpoint stays

    recipe_v = recipe.replace(validate_every=2)
    with pytest.raises(Interrupt):
        fit(recipe_v, tiny, tmp_path / "resumed", progress=False, validation=tiny[:1], validate=interrupt_in_epoch_2)
    state = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 1 and state["step"] == 2
    resumed = fit(recipe_v, tiny, tmp_path / "resumed", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert json.loads((tmp_path / "resumed" / "recipe.json").read_text())["validate_every"] == 2
    with pytest.raises(ValueError, match="written with another recipe"):
        fit(recipe_v.replace(seed=9), tiny, tmp_path / "resumed", progress=False)


def test_empty_dataset_stops_before_training(tmp_path):
    with pytest.raises(ValueError, match="the dataset is empty"):
        fit(SMOKE, [], tmp_path, progress=False)


def test_time_budget_ends_the_schedule_and_the_run(tmp_path, tiny):
    recipe = SMOKE.replace(epochs=1000, steps_per_epoch=2, time_budget_minutes=0.02)
    result = fit(recipe, tiny[:2], tmp_path, progress=False)
    assert result.history[-1]["stopped"] == "time budget spent"
    assert result.steps < 2000
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 1000 and state["trained_seconds"] >= 1.2
    again = fit(recipe, tiny[:2], tmp_path, progress=False)  # a finished run resumes as finished
    assert again.steps == result.steps


def test_cpu_bfloat16_only_where_the_cpu_has_bfloat16_kernels(monkeypatch):
    from structlog.testing import capture_logs

    from train import fit as fit_module

    cpu = torch.device("cpu")
    asked = SMOKE.replace(cpu_bfloat16=True)
    monkeypatch.setattr(fit_module, "cpu_native_bfloat16", lambda: True)
    assert fit_module._autocast_dtype(asked, cpu) is torch.bfloat16
    assert fit_module._autocast_dtype(SMOKE, cpu) is None  # not asked
    monkeypatch.setattr(fit_module, "cpu_native_bfloat16", lambda: False)
    with capture_logs() as logs:
        assert fit_module._autocast_dtype(asked, cpu) is None  # AVX2 only: float32, many times faster there
    assert [entry["event"] for entry in logs] == ["cpu_bfloat16_unavailable"]
    with fit_module._autocast(None, cpu):
        assert not torch.is_autocast_enabled("cpu")
