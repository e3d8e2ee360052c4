"""Bad input to the predictor and bad device names: a ValueError that names the problem, raised
before any tensor reaches torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2unet.device import precision_policy, resolve_device
from m2unet.predictor import InferenceOptions, Predictor
from m2unet.volume import Volume
from tests.m2unet.test_predictor import small_weights


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    return small_weights(tmp_path_factory.mktemp("weights") / "small.pt")[0]


@pytest.fixture(scope="module")
def predictor(weights_path) -> Predictor:
    return Predictor.from_weights(weights_path, device="cpu", bags=1, options=InferenceOptions(runtime="torch"))


def unchecked_volume(hu, spacing=(1.0, 1.0, 2.0)) -> Volume:
    """A Volume that skipped its constructor's checks, as one built by hand or changed later."""
    volume = object.__new__(Volume)
    object.__setattr__(volume, "hu", hu)
    object.__setattr__(volume, "spacing", spacing)
    object.__setattr__(volume, "origin", (0.0, 0.0, 0.0))
    object.__setattr__(volume, "direction", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return volume


def chest_like(slices=4, size=32) -> np.ndarray:
    hu = np.full((slices, size, size), -1000, dtype=np.int16)
    hu[:, 4:-4, 4:-4] = 40
    hu[:, 8:-8, 8:-8] = -850
    return hu


@pytest.mark.parametrize(
    ("hu", "spacing", "message"),
    [
        (np.zeros((0, 32, 32), dtype=np.int16), (1.0, 1.0, 2.0), "empty"),
        (np.zeros((4, 0, 32), dtype=np.int16), (1.0, 1.0, 2.0), "empty"),
        (chest_like(slices=1), (1.0, 1.0, 2.0), "1 slice"),
        (chest_like()[0], (1.0, 1.0, 2.0), "3 dimensions"),
        (chest_like().astype(np.complex64), (1.0, 1.0, 2.0), "dtype"),
        (chest_like().astype(bool), (1.0, 1.0, 2.0), "dtype"),
        (chest_like().astype(object), (1.0, 1.0, 2.0), "dtype"),
        (chest_like(), (0.0, 1.0, 2.0), "spacing x"),
        (chest_like(), (1.0, 1.0, -2.0), "spacing z"),
        (chest_like(), (1.0, 1e6, 2.0), "spacing y"),
        (chest_like(), (1.0, float("nan"), 2.0), "spacing y"),
        (chest_like(), (1.0, 1.0), "spacing must have 3"),
        ([[[0.0]]], (1.0, 1.0, 2.0), "numpy array"),
    ],
)
def test_bad_volumes_are_refused_with_a_named_problem(predictor, hu, spacing, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(unchecked_volume(hu, spacing), seed=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(predictor, bad):
    hu = chest_like().astype(np.float32)
    volume = Volume(hu=hu, spacing=(1.0, 1.0, 2.0))
    hu[2, 10, 10] = bad  # changed after the Volume checked it
    with pytest.raises(ValueError, match="NaN or infinite"):
        predictor.predict(volume, seed=0)


def test_the_volume_constructor_refuses_too():
    with pytest.raises(ValueError, match="empty"):
        Volume(hu=np.zeros((0, 8, 8), dtype=np.int16), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        Volume(hu=np.full((2, 8, 8), np.nan, dtype=np.float32), spacing=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, "7", True])
def test_bad_seeds_are_refused(predictor, seed):
    volume = Volume(hu=chest_like(), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="seed"):
        predictor.predict(volume, seed=seed)


def test_not_a_volume_is_refused(predictor):
    with pytest.raises(ValueError, match="Volume"):
        predictor.predict(chest_like(), seed=0)


def test_a_tiny_volume_without_lungs_still_answers(predictor):
    """Smaller than a patch and than the network's 16-pixel grid, no lung: padded, not a crash."""
    hu = np.full((3, 10, 13), 40, dtype=np.int16)
    result = predictor.predict(Volume(hu=hu, spacing=(1.0, 1.0, 2.0)), seed=0)
    assert result.lobe_map.shape == hu.shape and not result.lobe_map.any()
    assert result.lung_slices == 0
    assert 0.0 <= result.probability_severe <= 1.0


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected_auto = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected_auto
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:-1", "", None, 3):
        with pytest.raises(ValueError, match="device must be one of"):
            resolve_device(bad)


def test_cuda_is_refused_when_absent_or_out_of_range(weights_path):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"index {count} out of range" if count else "no usable CUDA"):
        resolve_device(f"cuda:{count}")
    if count == 0:
        with pytest.raises(ValueError, match="no usable CUDA"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="no usable CUDA"):
            Predictor.from_weights(weights_path, device="cuda")


def test_precision_policy_autocasts_on_cuda_only():
    cpu = precision_policy(torch.device("cpu"))
    assert cpu.autocast_dtype is None
    with cpu.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert precision_policy(torch.device("cuda", 0)).autocast_dtype == torch.float16


def test_bad_options_and_bags_are_refused(weights_path):
    with pytest.raises(ValueError, match="bags"):
        Predictor.from_weights(weights_path, device="cpu", bags=0)
    with pytest.raises(ValueError, match="crop_margin"):
        InferenceOptions(crop_margin=-1)
    with pytest.raises(ValueError, match="batch_size"):
        InferenceOptions(batch_size=0)
    with pytest.raises(ValueError, match="runtime"):
        InferenceOptions(runtime="tensorrt")
