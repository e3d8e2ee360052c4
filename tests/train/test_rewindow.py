"""Weights carried over to another intensity window, and caches that say their window."""

import numpy as np
import pytest
import torch

from m2unet.model import M2UNet
from m2unet.preprocessing import PreprocessingConfig, window
from m2unet.weights import WeightsMetadata, calibrate_batch_norm, save_weights
from train.fit import fit, initial_state, preprocessing_config
from train.prepared import PAPER_WINDOW, check_window, load_prepared, save_prepared
from train.recipe import SMOKE
from train.rewindow import FIRST_CONVOLUTION, rewindow_first_convolution

from .conftest import tiny_cases

WIDE = (-1200.0, 400.0)


def _model(seed: int = 0) -> M2UNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = M2UNet()
        calibrate_batch_norm(model, seed=seed)
    return model.eval()


def _images(hu: np.ndarray, w: tuple[float, float]) -> torch.Tensor:
    return torch.from_numpy(window(hu, PreprocessingConfig(window_low=w[0], window_high=w[1])))[:, None]


def test_same_low_end_gives_the_same_network_for_hu_inside_the_old_window():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1200, 0, (2, 64, 64)).astype(np.float32)
    old = _model()
    new = M2UNet().eval()
    new.load_state_dict(rewindow_first_convolution(old.state_dict(), PAPER_WINDOW, WIDE))
    with torch.inference_mode():
        a = old(_images(hu, PAPER_WINDOW)[None])
        b = new(_images(hu, WIDE)[None])
        # without the rescaling the wider window changes the outputs
        unscaled = old(_images(hu, WIDE)[None])
    assert torch.allclose(a.segmentation_logits, b.segmentation_logits, atol=1e-3)
    assert torch.allclose(a.severity_logits, b.severity_logits, atol=1e-4)
    assert not torch.allclose(a.segmentation_logits, unscaled.segmentation_logits, atol=1e-2)


def test_hu_above_the_old_top_now_reach_the_network():
    hu = np.full((1, 32, 32), -600.0, dtype=np.float32)
    bright = hu.copy()
    bright[:, 12:20, 12:20] = 300.0  # bone: clipped to the top of the old window, apart in the new
    muscle = hu.copy()
    muscle[:, 12:20, 12:20] = 40.0
    new = M2UNet().eval()
    new.load_state_dict(rewindow_first_convolution(_model().state_dict(), PAPER_WINDOW, WIDE))
    old = _model()
    with torch.inference_mode():
        assert torch.equal(old.encoding_block1(_images(bright, PAPER_WINDOW)), old.encoding_block1(_images(muscle, PAPER_WINDOW)))
        assert not torch.allclose(new.encoding_block1(_images(bright, WIDE)), new.encoding_block1(_images(muscle, WIDE)))


def test_another_low_end_is_exact_away_from_the_padding():
    rng = np.random.default_rng(1)
    hu = rng.uniform(-1000, -100, (1, 24, 24)).astype(np.float32)
    conv = _model().encoding_block1[0]
    state = {f"{FIRST_CONVOLUTION}.{k}": v for k, v in conv.state_dict().items()}
    moved = rewindow_first_convolution(state, (-1200.0, 0.0), (-1000.0, 200.0))
    other = torch.nn.Conv2d(1, conv.out_channels, 3, padding=1)
    other.load_state_dict({k.rsplit(".", 1)[1]: v for k, v in moved.items()})
    with torch.inference_mode():
        a = conv(_images(hu, (-1200.0, 0.0)))[..., 1:-1, 1:-1]
        b = other(_images(hu, (-1000.0, 200.0)))[..., 1:-1, 1:-1]
    assert torch.allclose(a, b, atol=1e-3)


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="low < high"):
        rewindow_first_convolution(_model().state_dict(), PAPER_WINDOW, (0.0, -1200.0))


def test_initial_state_rewindows_a_weights_file_and_not_a_bare_state_dict(tmp_path):
    model = _model()
    path = tmp_path / "w.pt"
    save_weights(path, model, WeightsMetadata(version="0.0.0-test", preprocessing=PreprocessingConfig().to_dict()))
    key = f"{FIRST_CONVOLUTION}.weight"
    same = initial_state(path, PAPER_WINDOW)
    assert torch.allclose(same[key], model.state_dict()[key])
    wide = initial_state(path, WIDE)
    assert torch.allclose(wide[key], model.state_dict()[key] * 1600.0 / 1200.0)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert torch.allclose(initial_state(bare, WIDE)[key], model.state_dict()[key])


def test_prepared_cases_keep_their_window_and_old_caches_read_as_the_papers(tmp_path):
    wide_config = preprocessing_config(SMOKE.replace(window=WIDE))
    case = tiny_cases(1, wide_config)[0]
    assert case.window == WIDE
    back = load_prepared(save_prepared(case, tmp_path / "c.npz"))
    assert back.window == WIDE
    with np.load(tmp_path / "c.npz") as d:
        legacy = {k: d[k] for k in d.files if k != "window"}
    np.savez(tmp_path / "legacy.npz", **legacy)
    assert load_prepared(tmp_path / "legacy.npz").window == PAPER_WINDOW
    check_window([back], WIDE)
    with pytest.raises(ValueError, match="windowed with"):
        check_window([back], PAPER_WINDOW)


def test_fit_refuses_cases_of_another_window(tmp_path):
    cases = tiny_cases(2, preprocessing_config(SMOKE.replace(window=WIDE)))
    with pytest.raises(ValueError, match="render the cases again"):
        fit(SMOKE, cases, tmp_path / "run", device="cpu", progress=False)
