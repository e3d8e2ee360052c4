"""Training on a lent GPU (train.demo_device), run here on the CPU with tiny settings: the phantom
feed grows during the run, snapshots come out at the due fractions and at the end, and a
snapshot unpacks into a run folder that exports to weights the predictor loads."""

import json
import time

import numpy as np
import pytest
import torch

from m2unet.phantom import make_phantom
from m2unet.predictor import Predictor
from tests.train.conftest import tiny_cases
from train import demo_device
from train.export import export_run
from train.fit import fit
from train.prepared import save_prepared
from train.recipe import SMOKE


def test_fit_takes_in_cases_appended_by_the_epoch_hook(tmp_path):
    cases = tiny_cases(2)
    extra = tiny_cases(4)[2:]
    seen_counts = []

    def on_epoch_end(model, record):
        seen_counts.append(len(cases))
        if extra:
            cases.append(extra.pop(0))

    recipe = SMOKE.replace(epochs=3, steps_per_epoch=2, scale_jitter=0.1, rotation_jitter_deg=5.0)
    result = fit(recipe, cases, tmp_path / "run", progress=False, on_epoch_end=on_epoch_end)
    assert result.steps == 6
    assert seen_counts == [2, 3, 4]
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_case_feed_loads_only_finished_files(tmp_path):
    feed = demo_device.CaseFeed(tmp_path)
    case = tiny_cases(1)[0]
    save_prepared(case, tmp_path / "phantom000000.npz")
    (tmp_path / "phantom000001.npz.tmp.npz").write_bytes(b"half written")
    assert feed.take_new() == 1
    assert feed.take_new() == 0
    assert [c.case_id for c in feed.cases] == [case.case_id]


def test_snapshot_unpacks_to_a_run_that_exports_and_predicts(tmp_path, capsys):
    cases = tiny_cases(2)
    feed = demo_device.CaseFeed(tmp_path / "cache")
    feed.cases.extend(cases)
    recipe = SMOKE
    result = fit(recipe, cases, tmp_path / "fit", progress=False)
    path = demo_device.snapshot(result.model, recipe, {"step": result.steps}, feed, tmp_path / "a-3.pt",
                                result.history, time.monotonic())
    payload = torch.load(path, weights_only=False)
    assert payload["format"] == demo_device.SNAPSHOT_FORMAT
    assert all(v.dtype == torch.float16 for v in payload["model"].values() if v.is_floating_point())

    assert demo_device.main(["unpack", str(path), "--out", str(tmp_path / "run")]) == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["cases"] == 2 and info["steps"] == result.steps and "Synthetic" in info["training_data"]
    exported = export_run(tmp_path / "run", tmp_path / "w.pt", version="0.0.1")
    predictor = Predictor.from_weights(exported.weights, device="cpu", bags=1)
    phantom = make_phantom(3, shape=(16, 64, 64))
    prediction = predictor.predict(phantom.volume, seed=0)
    assert prediction.lobe_map.shape == phantom.volume.shape
    assert 0.0 <= prediction.probability_severe <= 1.0


def test_unpack_refuses_a_file_that_is_not_a_snapshot(tmp_path):
    bogus = tmp_path / "x.pt"
    torch.save({"model": {}}, bogus)
    with pytest.raises(SystemExit, match="not a training snapshot"):
        demo_device.main(["unpack", str(bogus), "--out", str(tmp_path / "run")])
