"""Where the predictor runs the network: slab planning and the nested decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2unet.device import precision_policy
from m2unet.model import M2UNet
from m2unet.predictor import InferenceOptions
from m2unet.regions import plan_slabs, segment_region
from m2unet.runners import TorchRunner, fold_batch_norm
from m2unet.weights import calibrate_batch_norm


def two_lungs(depth=6, height=200, width=240) -> np.ndarray:
    mask = np.zeros((depth, height, width), dtype=bool)
    mask[1:5, 60:150, 30:100] = True  # right lung
    mask[2:5, 70:140, 150:215] = True  # left lung, 50 columns of mediastinum between
    return mask


def covered_by(slab, shape=(200, 240)) -> np.ndarray:
    covered = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in slab.inner:
        covered[y0:y1, x0:x1] = True
    return covered


def test_slabs_skip_slices_without_lung_and_hold_the_lungs():
    mask = two_lungs()
    options = InferenceOptions(crop_margin=32, decoder_margin=4, batch_size=2)
    slabs = plan_slabs(mask, options)
    assert [z for slab in slabs for z in slab.z] == [1, 2, 3, 4]
    for slab in slabs:
        oy0, oy1, ox0, ox1 = slab.outer
        assert all(v % 16 == 0 for v in slab.outer)
        assert oy1 <= 208 and ox1 <= 240  # the slice zero-padded to multiples of 16
        for y0, y1, x0, x1 in slab.inner:
            assert all(v % 2 == 0 for v in (y0, y1, x0, x1))
            assert oy0 <= y0 < y1 <= oy1 and ox0 <= x0 < x1 <= ox1
        covered = covered_by(slab)
        lungs = mask[list(slab.z)].any(axis=0)
        grown = np.zeros_like(lungs)  # the lungs grown by the decoder margin, inside the image
        ys, xs = np.nonzero(lungs)
        for dy in (-4, 0, 4):
            for dx in (-4, 0, 4):
                grown[np.clip(ys + dy, 0, 199), np.clip(xs + dx, 0, 239)] = True
        assert covered[grown].all()
    # the mediastinum is wide enough: two boxes, and the gap between the lungs is left out
    assert len(slabs[-1].inner) == 2
    assert all(not (x0 < 125 < x1) for _, _, x0, x1 in slabs[-1].inner)


def test_the_reach_takes_in_neighbouring_slices_and_grows_the_boxes():
    """Consolidated lung the HU mask loses (at the base, along the pleura) stays in the windows."""
    mask = two_lungs()  # right lung in slices 1-4, left lung in 2-4
    options = InferenceOptions(crop_margin=32, decoder_margin=4, batch_size=1)
    plain = {slab.z[0]: slab for slab in plan_slabs(mask, options)}
    reached = {slab.z[0]: slab for slab in plan_slabs(mask, options, extra_margin=10, extra_slices=1)}
    assert sorted(plain) == [1, 2, 3, 4] and sorted(reached) == [0, 1, 2, 3, 4, 5]
    assert reached[5].inner == reached[4].inner  # slice 5 takes the boxes of the lung one slice away
    assert not covered_by(reached[0])[:, 150:].any()  # slice 0 reaches slice 1: the right lung only
    assert covered_by(reached[1])[70:140, 150:215].all()  # slice 1 reaches slice 2: the left lung too
    assert not covered_by(plain[1])[:, 150:].any()
    for z, slab in plain.items():
        grown = np.zeros((200, 240), dtype=bool)
        for y0, y1, x0, x1 in slab.inner:
            grown[max(y0 - 10, 0) : y1 + 10, max(x0 - 10, 0) : x1 + 10] = True
        assert covered_by(reached[z])[grown].all()
    with pytest.raises(ValueError, match="extra_slices"):
        plan_slabs(mask, options, extra_slices=-1)


def test_lung_reach_must_be_a_finite_distance():
    with pytest.raises(ValueError, match="lung_reach_mm"):
        InferenceOptions(lung_reach_mm=-1.0)
    with pytest.raises(ValueError, match="lung_reach_mm"):
        InferenceOptions(lung_reach_mm=float("nan"))


def test_whole_slices_when_cropping_is_off():
    mask = two_lungs()
    options = InferenceOptions(crop_margin=None, decoder_margin=None, skip_empty_slices=False, batch_size=4)
    slabs = plan_slabs(mask, options)
    assert [slab.z for slab in slabs] == [(0, 1, 2, 3), (4, 5)]
    assert all(slab.outer == (0, 208, 0, 240) and slab.inner == ((0, 208, 0, 240),) for slab in slabs)


@pytest.fixture(scope="module")
def network() -> M2UNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = M2UNet("seg_only")
        calibrate_batch_norm(model, seed=3)
    return fold_batch_norm(model)


def test_nested_decoder_equals_the_whole_forward_inside_its_boxes(network):
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(2, 1, 96, 128, generator=generator) * 255.0
    with torch.inference_mode():
        logits = network.segment(images)
    expected = logits.argmax(dim=1).numpy()
    top2 = logits.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]).numpy() > 1e-3  # leave out float-rounding ties
    cpu = torch.device("cpu")
    runner = TorchRunner(network, cpu, precision_policy(cpu), channels_last=True)
    boxes = [(20, 60, 10, 50), (0, 96, 90, 128), (32, 34, 60, 64)]  # inside, at two edges, tiny
    results = segment_region(runner, images.numpy(), boxes)
    for (y0, y1, x0, x1), labels in zip(boxes, results):
        assert labels.shape == (2, y1 - y0, x1 - x0) and labels.dtype == np.uint8
        # exact away from the box's edges that are not the image's (3 pixels: the block's convolutions)
        ty0 = y0 if y0 == 0 else y0 + 3
        ty1 = y1 if y1 == 96 else y1 - 3
        tx0 = x0 if x0 == 0 else x0 + 3
        tx1 = x1 if x1 == 128 else x1 - 3
        if ty1 <= ty0 or tx1 <= tx0:
            continue
        got = labels[:, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
        want = expected[:, ty0:ty1, tx0:tx1]
        sure = decided[:, ty0:ty1, tx0:tx1]
        np.testing.assert_array_equal(got[sure], want[sure])
    whole = segment_region(runner, images.numpy(), (0, 96, 0, 128))
    np.testing.assert_array_equal(whole[decided], expected[decided])


def test_bfloat16_trunk_keeps_nearly_every_label_and_is_a_cpu_torch_option(network, monkeypatch):
    from m2unet import runners
    from m2unet.runners import make_runner

    monkeypatch.setattr(runners, "cpu_native_bfloat16", lambda: True)  # the numerics, on any CPU
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(2, 1, 96, 128, generator=generator).numpy() * 255.0
    with torch.inference_mode():
        logits = network.segment(torch.from_numpy(images))
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]).numpy() > 0.2  # random weights: many pixels are near-ties
    cpu = torch.device("cpu")
    exact = segment_region(make_runner(network, cpu, "torch", True), images, (0, 96, 0, 128))
    runner = make_runner(network, cpu, "torch", True, bfloat16_trunk=True)
    skips = runner("trunk", images)
    assert all(t.dtype == torch.float32 for t in skips)  # the finer blocks run in float32
    fast = segment_region(runner, images, (0, 96, 0, 128))
    assert fast.shape == exact.shape and clear.mean() > 0.2
    assert (fast == exact)[clear].mean() > 0.98  # bfloat16 keeps 8 bits of mantissa
    with pytest.raises(ValueError, match="CPU option"):
        make_runner(network, cpu, "onnxruntime", True, bfloat16_trunk=True)


def test_bfloat16_trunk_is_dropped_with_a_warning_where_the_cpu_has_no_bfloat16_kernels(network, monkeypatch):
    from m2unet import runners

    monkeypatch.setattr(runners, "cpu_native_bfloat16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no AVX-512 or AMX bfloat16"):
        runner = runners.make_runner(network, torch.device("cpu"), "torch", True, bfloat16_trunk=True)
    assert runner.bfloat16_trunk is False
    images = torch.rand(1, 1, 96, 128, generator=torch.Generator().manual_seed(3)).numpy() * 255.0
    exact = segment_region(runners.make_runner(network, torch.device("cpu"), "torch", True), images, (0, 96, 0, 128))
    np.testing.assert_array_equal(segment_region(runner, images, (0, 96, 0, 128)), exact)  # float32 throughout
