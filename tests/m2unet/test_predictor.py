"""The predictor: volume in, lobe map on the source grid and the severity call out.

Small volumes (12 slices of 96 x 96 from the phantom) and weights with small bags (8 patches of
32 x 32, declared in the weights' preprocessing metadata) keep the module within seconds. The
weights are random: the tests check behaviour, never accuracy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from m2unet.labels import NUM_CLASSES, Lobe, to_lobe_map
from m2unet.lungs import lung_mask
from m2unet.postprocess import network_lungs
from m2unet.model import M2UNet
from m2unet.phantom import make_phantom
from m2unet.predictor import (
    NON_SEVERE,
    SEVERE,
    STAGES,
    InferenceOptions,
    Prediction,
    Predictor,
    content_seed,
)
from m2unet.preprocessing import PreprocessingConfig
from m2unet.runners import onnxruntime_available
from m2unet.volume import Volume
from m2unet.weights import WeightsMetadata, calibrate_batch_norm, load_weights, save_weights

SMALL_BAGS = PreprocessingConfig(patch_size=32, bag_size=8, min_body_size=64)
# PyTorch here (no per-predictor ONNX export); ONNX Runtime has its own test below
TORCH = InferenceOptions(runtime="torch")


def small_weights(path, variant="m2unet", threshold=0.5, preprocessing=SMALL_BAGS, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = M2UNet(variant)
        calibrate_batch_norm(model, seed=seed)
    metadata = WeightsMetadata(
        version="0.0.0-test", variant=variant, threshold=threshold, preprocessing=preprocessing.to_dict()
    )
    sha = save_weights(path, model, metadata)
    return path, sha


@pytest.fixture(scope="module")
def volume() -> Volume:
    return make_phantom(1, shape=(12, 96, 96)).volume


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return small_weights(tmp_path_factory.mktemp("weights") / "small.pt")


@pytest.fixture(scope="module")
def predictor(weights) -> Predictor:
    return Predictor.from_weights(weights[0], device="cpu", bags=2, options=TORCH, bag_margin=None)


@pytest.fixture(scope="module")
def prediction(predictor, volume) -> Prediction:
    return predictor.predict(volume, seed=7, keep_raw=True)


def test_lobe_map_is_on_the_source_grid_for_every_slice(prediction, volume):
    assert prediction.lobe_map.shape == volume.shape
    assert prediction.lobe_map.dtype == np.uint8
    assert prediction.class_map.shape == volume.shape
    assert set(np.unique(prediction.lobe_map)) <= {0, *[int(lobe) for lobe in Lobe]}
    assert int(prediction.class_map.max()) < NUM_CLASSES
    np.testing.assert_array_equal(prediction.lobe_map, to_lobe_map(prediction.class_map))


def test_lobes_only_inside_the_lungs_the_network_paints(prediction, volume):
    lungs = lung_mask(volume)
    assert lungs.any()
    raw = prediction.raw_class_map
    assert not prediction.lobe_map[~network_lungs(raw)].any()
    assert prediction.lung_slices == int(lungs.any(axis=(1, 2)).sum())
    # the decoder ran on the slices with HU lung and those within its reach, nowhere else
    reach = int(InferenceOptions().lung_reach_mm / volume.spacing[2] + 1e-9)  # slices within the reach
    with_lung = np.flatnonzero(lungs.any(axis=(1, 2)))
    beyond = np.ones(volume.shape[0], dtype=bool)
    beyond[max(with_lung[0] - reach, 0) : with_lung[-1] + reach + 1] = False
    assert not raw[beyond].any()
    assert not prediction.lobe_map[beyond].any()


def test_same_seed_same_answer(predictor, volume, prediction):
    again = predictor.predict(volume, seed=7)
    np.testing.assert_array_equal(again.lobe_map, prediction.lobe_map)
    assert again.bag_probabilities == prediction.bag_probabilities
    assert again.probability_severe == prediction.probability_severe


def test_same_volume_same_answer_without_a_seed(predictor, volume):
    copy = Volume(hu=volume.hu.copy(), spacing=volume.spacing, origin=volume.origin, direction=volume.direction)
    first, second = predictor.predict(volume), predictor.predict(copy)
    assert first.seed == second.seed == content_seed(volume.hu)
    assert first.bag_probabilities == second.bag_probabilities
    np.testing.assert_array_equal(first.lobe_map, second.lobe_map)


def test_content_seed_follows_the_content(volume):
    changed = volume.hu.copy()
    changed[0, 0, 0] += 1
    assert content_seed(volume.hu) == content_seed(volume.hu.copy())
    assert content_seed(changed) != content_seed(volume.hu)
    assert 0 <= content_seed(volume.hu) < 2**63


def test_probability_and_severity(prediction, predictor):
    p = prediction.probability_severe
    assert 0.0 <= p <= 1.0
    assert len(prediction.bag_probabilities) == prediction.bags == 2
    assert p == pytest.approx(float(np.mean(prediction.bag_probabilities)))
    assert all(0.0 <= q <= 1.0 for q in prediction.bag_probabilities)
    assert prediction.threshold == predictor.metadata.threshold == 0.5
    assert prediction.severity == (SEVERE if p >= prediction.threshold else NON_SEVERE)


def test_threshold_comes_from_the_weights(tmp_path, volume):
    path, sha = small_weights(tmp_path / "cls.pt", variant="cls_only")
    loaded = load_weights(path)
    p = Predictor(loaded.model, loaded.metadata, sha, "cpu", bags=1, options=TORCH).predict(volume, seed=7).probability_severe
    calls = {}
    for name, threshold in (("low", p / 2), ("high", (1 + p) / 2)):
        metadata = dataclasses.replace(loaded.metadata, threshold=threshold)
        result = Predictor(loaded.model, metadata, sha, "cpu", bags=1, options=TORCH).predict(volume, seed=7)
        assert result.threshold == pytest.approx(threshold)
        assert result.probability_severe == pytest.approx(p, abs=1e-6)
        calls[name] = result.severity
    assert calls == {"low": SEVERE, "high": NON_SEVERE}


def test_more_bags_only_near_the_threshold(tmp_path, volume):
    path, sha = small_weights(tmp_path / "cls.pt", variant="cls_only")
    loaded = load_weights(path)

    def bags(margin):
        predictor = Predictor(loaded.model, loaded.metadata, sha, "cpu", bags=3, options=TORCH, bag_margin=margin)
        return predictor.predict(volume, seed=9).bag_probabilities

    always, never = bags(1.0), bags(0.0)  # every mean is within 1.0 of the threshold, none within 0
    assert len(always) == 3 and len(never) == 1
    assert never[0] == always[0]  # the same first bag from the same seed
    p = always[0]
    near = bags(abs(p - 0.5) + 1e-3)  # the first bag is close enough to ask for a second
    assert len(near) >= 2 and near[:2] == always[:2]


def test_timings_and_provenance(prediction, weights):
    assert set(prediction.timings) == set(STAGES)
    assert all(isinstance(v, float) and v >= 0.0 for v in prediction.timings.values())
    assert prediction.timings["total"] >= max(v for k, v in prediction.timings.items() if k != "total")
    assert prediction.timings["segmentation"] > 0 and prediction.timings["classification"] > 0
    assert prediction.model_name == "M2UNet"
    assert prediction.model_version == "0.0.0-test"
    assert prediction.weights_sha256 == weights[1]
    assert prediction.device == "cpu"
    assert prediction.trained is False


def test_fast_path_matches_the_plain_forward_inside_the_lungs(weights, volume, prediction):
    """Whole slices one at a time, batch norm unfused, contiguous tensors: the plain reference
    (on the slices with lung, compared inside the HU lungs: the fast path's windows are planned on them)."""
    plain = InferenceOptions(
        crop_margin=None, decoder_margin=None, skip_empty_slices=True, batch_size=1,
        fuse_batch_norm=False, channels_last=False, runtime="torch",
    )
    reference = Predictor.from_weights(weights[0], device="cpu", bags=2, options=plain)
    lungs = lung_mask(volume)
    slices = np.flatnonzero(lungs.any(axis=(1, 2)))[::2]  # every other slice with lung keeps it short
    part = Volume(hu=volume.hu[slices], spacing=volume.spacing)
    ref = reference.segment(part, lungs[slices])
    fast = prediction.raw_class_map[slices]
    inside = lungs[slices]
    assert (fast[inside] == ref[inside]).mean() > 0.999


def test_the_decoder_reaches_lung_the_hu_mask_loses(weights, volume):
    """A basal slice consolidated throughout has no air, so the HU mask has no lung there; the
    decoder still runs on it when it lies within ``lung_reach_mm`` of the mask, and not without the reach."""
    lungs = lung_mask(volume)
    base = int(np.flatnonzero(lungs.any(axis=(1, 2)))[-1])
    hu = volume.hu.copy()
    hu[base][lungs[base]] = 0  # consolidation (0 HU) in place of the aerated lung
    consolidated = Volume(hu=hu, spacing=volume.spacing, origin=volume.origin)
    assert not lung_mask(consolidated)[base].any()
    answers = {}
    for reach in (0.0, volume.spacing[2] + 1.0):  # none; one slice
        options = dataclasses.replace(TORCH, lung_reach_mm=reach)
        predictor = Predictor.from_weights(weights[0], device="cpu", bags=1, options=options)
        answers[reach] = predictor.predict(consolidated, seed=7, keep_raw=True).raw_class_map[base]
    assert not answers[0.0].any()
    assert answers[volume.spacing[2] + 1.0].any()


def test_int16_and_float_volumes_give_the_same_answer(predictor, volume, prediction):
    as_float = Volume(hu=volume.hu.astype(np.float32), spacing=volume.spacing, origin=volume.origin)
    result = predictor.predict(as_float, seed=7)
    np.testing.assert_array_equal(result.lobe_map, prediction.lobe_map)
    assert result.probability_severe == pytest.approx(prediction.probability_severe, abs=1e-6)


def test_resampled_weights_still_answer_on_the_source_grid(tmp_path, volume):
    resampled = PreprocessingConfig(patch_size=32, bag_size=8, min_body_size=64, in_plane_spacing_mm=6.0)
    path, _ = small_weights(tmp_path / "resampled.pt", preprocessing=resampled)
    result = Predictor.from_weights(path, device="cpu", bags=1, options=TORCH).predict(volume, seed=3, keep_raw=True)
    assert result.lobe_map.shape == volume.shape
    assert not result.lobe_map[~network_lungs(result.raw_class_map)].any()
    assert 0.0 <= result.probability_severe <= 1.0


def test_seg_only_and_cls_only_weights(tmp_path, volume):
    seg_path, _ = small_weights(tmp_path / "seg.pt", variant="seg_only")
    seg = Predictor.from_weights(seg_path, device="cpu", options=TORCH)
    result = seg.predict(volume, seed=1)
    assert result.has_lobes and not result.has_severity
    assert result.probability_severe is None and result.severity is None and result.bag_probabilities == ()
    assert result.lobe_map.shape == volume.shape
    seg.require_variant(severity=False)
    with pytest.raises(ValueError, match="seg_only.*no classification"):
        seg.require_variant()

    cls_path, _ = small_weights(tmp_path / "cls.pt", variant="cls_only")
    cls = Predictor.from_weights(cls_path, device="cpu", bags=1, options=TORCH)
    result = cls.predict(volume, seed=1)
    assert result.has_severity and not result.has_lobes
    assert result.lobe_map is None and result.class_map is None
    assert result.severity in (SEVERE, NON_SEVERE)
    assert result.timings["segmentation"] == 0.0
    with pytest.raises(ValueError, match="cls_only.*no segmentation"):
        cls.require_variant()


def test_onnxruntime_gives_the_torch_answer(weights, volume, prediction):
    onnx = InferenceOptions(runtime="onnxruntime")
    if not onnxruntime_available():
        with pytest.raises(ValueError, match="onnxruntime"):
            Predictor.from_weights(weights[0], device="cpu", options=onnx)
        return
    predictor = Predictor.from_weights(weights[0], device="cpu", bags=2, options=onnx, bag_margin=None)
    assert predictor.runner.name == "onnxruntime"
    result = predictor.predict(volume, seed=7, keep_raw=True)
    lungs = lung_mask(volume)
    assert (result.raw_class_map[lungs] == prediction.raw_class_map[lungs]).mean() > 0.999
    assert result.probability_severe == pytest.approx(prediction.probability_severe, abs=1e-4)


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
@pytest.mark.parametrize("variant", ["cls_only", "seg_only"])
def test_onnxruntime_runs_the_single_task_variants(tmp_path, volume, variant):
    """The ablations' weights have one branch only; ONNX Runtime exports the parts they have."""
    path, _ = small_weights(tmp_path / f"{variant}.pt", variant=variant)
    torch_result = Predictor.from_weights(path, device="cpu", bags=1, options=TORCH).predict(volume, seed=3)
    onnx = Predictor.from_weights(path, device="cpu", bags=1, options=InferenceOptions(runtime="onnxruntime"))
    assert onnx.runner.name == "onnxruntime"
    result = onnx.predict(volume, seed=3)
    assert result.has_severity == (variant == "cls_only") and result.has_lobes == (variant == "seg_only")
    if variant == "cls_only":
        assert result.probability_severe == pytest.approx(torch_result.probability_severe, abs=1e-4)
    else:
        assert (result.lobe_map == torch_result.lobe_map).mean() > 0.999
