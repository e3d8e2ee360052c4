"""The training input pipeline: batches drawn ahead in worker processes, reproducibly."""

import math
from itertools import islice

import numpy as np
import pytest
import torch

from train.distributed import SINGLE
from train.fit import fit, preprocessing_config, same_recipe
from train.loader import BagFeed, BagStream, bag_generator, case_order
from train.recipe import SMOKE, Recipe
from train.sampling import draw_bag

RECIPE = SMOKE.replace(epochs=3, steps_per_epoch=3, bags_per_step=2, bag_size=3, intensity_jitter_hu=20.0)


def _batches(recipe, cases, epochs=(0, 1)):
    feed = BagFeed(recipe, cases, preprocessing_config(recipe), recipe.steps_per_epoch)
    try:
        return [feed.batch(e, i) for e in epochs for i in range(recipe.steps_per_epoch)]
    finally:
        feed.close()


def _same(a, b):
    return a.step == b.step and torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) \
        and torch.equal(a.severity, b.severity) and torch.equal(a.has_mask, b.has_mask)


def test_a_batch_is_one_step_of_bags_with_uint8_class_maps(tiny):
    no_mask = type(tiny[1])(tiny[1].case_id, tiny[1].image, None, tiny[1].severe, tiny[1].spacing)
    cases = [tiny[0], no_mask]
    stream = BagStream(RECIPE, cases, preprocessing_config(RECIPE), RECIPE.steps_per_epoch)
    batches = list(islice(iter(stream), 4))
    assert [b.step for b in batches] == [0, 1, 2, 3]
    for b in batches:
        assert b.images.shape == (2, 3, 1, 32, 32) and b.images.dtype == torch.float32
        assert b.severity.shape == (2,) and b.severity.dtype == torch.int64
        assert b.targets.shape == (2, 3, 32, 32) and b.targets.dtype == torch.uint8
        assert b.has_mask.dtype == torch.bool and b.has_mask.shape == (2,)
        assert not b.targets[~b.has_mask].any()  # a bag without masks has all-background targets
    assert {bool(m) for b in batches for m in b.has_mask} == {True, False}


def test_in_process_the_stream_draws_what_the_loop_drew(tiny):
    config = preprocessing_config(RECIPE)
    order = case_order(RECIPE, tiny, 0, RECIPE.steps_per_epoch, SINGLE)
    rng = bag_generator(RECIPE.seed, 0, 0)
    for batch in _batches(RECIPE, tiny, epochs=(0,)):
        picks = order[batch.step * 2 : batch.step * 2 + 2]
        expected = [draw_bag(tiny[j], config, rng, RECIPE.bag_size, RECIPE.intensity_jitter_hu) for j in picks]
        assert np.array_equal(batch.images.numpy(), np.stack([b.patches for b in expected]))
        assert np.array_equal(batch.targets.numpy(), np.stack([b.targets for b in expected]))


def test_a_worker_count_and_seed_give_the_same_batches_and_one_worker_is_in_process(tiny):
    two = _batches(RECIPE.replace(loader_workers=2), tiny)
    assert [b.step for b in two] == list(range(6))  # handed back in step order across the epoch's end
    assert all(_same(a, b) for a, b in zip(two, _batches(RECIPE.replace(loader_workers=2), tiny)))
    assert all(_same(a, b) for a, b in zip(_batches(RECIPE, tiny), _batches(RECIPE.replace(loader_workers=1), tiny)))
    other_seed = _batches(RECIPE.replace(loader_workers=2, seed=1), tiny)
    assert not torch.equal(two[0].images, other_seed[0].images)


def test_workers_draw_different_bags(tiny):
    one_case = [tiny[0]]  # every step draws from the same case: only the Generators differ
    batches = _batches(RECIPE.replace(loader_workers=2), one_case, epochs=(0,))
    assert not torch.equal(batches[0].images, batches[1].images)  # worker 0's first batch, worker 1's first
    assert not torch.equal(batches[0].images, batches[2].images)


def test_the_feed_restarts_with_cases_added_between_epochs(tiny):
    recipe = RECIPE.replace(loader_workers=1, bags_per_step=4)
    config = preprocessing_config(recipe)
    cases = list(tiny[:3])
    feed = BagFeed(recipe, cases, config, recipe.steps_per_epoch)
    try:
        first = [feed.batch(0, i) for i in range(recipe.steps_per_epoch)]
        cases.append(tiny[3])
        second = [feed.batch(1, i) for i in range(recipe.steps_per_epoch)]
    finally:
        feed.close()
    expected = BagStream(recipe, tiny, config, recipe.steps_per_epoch, first_epoch=1)
    assert all(_same(a, b) for a, b in zip(second, islice(iter(expected), recipe.steps_per_epoch)))
    assert [b.step for b in first + second] == list(range(6))


def test_fit_with_a_loader_worker_trains_and_sees_added_cases(tmp_path, tiny):
    cases = list(tiny[:3])
    added = []

    def on_epoch_end(model, record):
        if not added:
            added.append(tiny[3])
            cases.append(tiny[3])

    recipe = SMOKE.replace(epochs=2, steps_per_epoch=2, bags_per_step=2, loader_workers=1)
    result = fit(recipe, cases, tmp_path, progress=False, on_epoch_end=on_epoch_end)
    assert result.steps == 4 and [h["epoch"] for h in result.history] == [1, 2]
    for record in result.history:
        assert all(math.isfinite(record[k]) for k in ("loss", "mil", "seg"))


def test_checkpoints_of_recipes_without_newer_settings_still_resume():
    stored = SMOKE.to_dict()
    del stored["loader_workers"]  # written before the setting existed
    assert same_recipe(stored, SMOKE)
    assert not same_recipe(stored, SMOKE.replace(loader_workers=2))
    assert not same_recipe({**SMOKE.to_dict(), "retired_setting": 1}, SMOKE)
    assert not same_recipe(None, SMOKE)
    with pytest.raises(ValueError, match="loader_workers must be >= 0, got -1"):
        Recipe(loader_workers=-1)
