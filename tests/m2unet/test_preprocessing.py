import numpy as np
import pytest
import torch

from m2unet.preprocessing import (
    BodyBox,
    PreprocessingConfig,
    body_box,
    resample_in_plane,
    resampled_shape,
    restore_in_plane_labels,
    restore_in_plane_logits,
    sample_bag,
    series_seed,
    window,
)


def chest(depth=6, height=300, width=320, body=((40, 260), (60, 280))):
    """Air everywhere, a rectangular 'body' of soft tissue with a lung-like air pocket, and a
    thin table below the body, not touching it."""
    hu = np.full((depth, height, width), -1000, dtype=np.int16)
    (y0, y1), (x0, x1) = body
    hu[:, y0:y1, x0:x1] = 40
    hu[:, y0 + 20 : y1 - 20, x0 + 20 : x1 - 20] = -850  # lungs: air inside the body
    hu[:, height - 8 : height - 6, :] = 200  # table: a thin plate, largest extent in x
    return hu


def test_window_matches_section_iii_f():
    hu = np.array([-3000, -1200, -600, 0, 500], dtype=np.int16)
    out = window(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 127.5, 255, 255])
    assert hu[0] == -3000  # input untouched


def test_config_validation_and_round_trip():
    cfg = PreprocessingConfig(in_plane_spacing_mm=1.0)
    assert PreprocessingConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="window_high"):
        PreprocessingConfig(window_low=0, window_high=-1200)
    with pytest.raises(ValueError, match="patch_size"):
        PreprocessingConfig(patch_size=100)
    with pytest.raises(ValueError, match="in_plane_spacing_mm"):
        PreprocessingConfig(in_plane_spacing_mm=0.0)
    with pytest.raises(ValueError, match="unknown keys"):
        PreprocessingConfig.from_dict({"window": 3})


def test_body_box_is_the_body_not_the_table():
    hu = chest()
    box = body_box(hu)
    # the body spans y 40..260 (220 rows), x 60..280 (220 columns); grown to 256 about its centre
    assert (box.z0, box.z1) == (0, 6)
    assert box.y1 - box.y0 == 256 and box.x1 - box.x0 == 256
    assert box.y0 <= 40 and box.y1 >= 260 and box.x0 <= 60 and box.x1 >= 280
    assert box.y1 < 292  # the table at rows 292-293 is outside


def test_body_box_of_a_large_body_is_tight():
    hu = chest(height=512, width=512, body=((100, 420), (50, 470)))
    box = body_box(hu)
    # contains the body, with at most two 4-pixel blocks of margin
    assert 92 <= box.y0 <= 100 and 420 <= box.y1 <= 428
    assert 42 <= box.x0 <= 50 and 470 <= box.x1 <= 478


def test_body_box_grows_clamped_to_the_image():
    hu = np.full((3, 300, 300), -1000, dtype=np.int16)
    hu[:, 0:50, 250:300] = 0  # a small body in a corner
    box = body_box(hu)
    assert (box.y0, box.y1) == (0, 256) and (box.x0, box.x1) == (44, 300)
    small = np.zeros((2, 100, 120), dtype=np.int16)  # image smaller than 256: the whole image
    assert body_box(small) == BodyBox(0, 2, 0, 100, 0, 120)


def test_body_box_without_body_is_the_whole_volume():
    hu = np.full((2, 64, 64), -1000, dtype=np.int16)
    assert body_box(hu) == BodyBox(0, 2, 0, 64, 0, 64)


def test_series_seed_is_stable_and_distinct():
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert series_seed(uid) == series_seed(uid.encode())
    assert series_seed(uid) != series_seed(uid + "0")
    # sha256-based: stable across processes and versions
    assert series_seed("abc") == 0x3A7816BF8F01CFEA  # FIPS 180-2 vector ba7816bf8f01cfea.., top bit cleared
    with pytest.raises(ValueError):
        series_seed(123)


def _bag(seed, hu, box, **kw):
    return sample_bag(window(hu), box, PreprocessingConfig(bag_size=40), np.random.default_rng(seed), **kw)


def test_same_seed_same_bag_and_other_seed_other_bag():
    rng = np.random.default_rng(0)
    hu = rng.integers(-1200, 100, size=(8, 300, 300)).astype(np.int16)
    box = BodyBox(1, 7, 20, 280, 10, 290)
    a, b, c = _bag(5, hu, box), _bag(5, hu, box), _bag(6, hu, box)
    np.testing.assert_array_equal(a.patches, b.patches)
    np.testing.assert_array_equal(a.origin_yx, b.origin_yx)
    assert not np.array_equal(a.origin_yx, c.origin_yx)
    # windowing only the patches gives the same bag as windowing the volume first
    d = sample_bag(hu, box, PreprocessingConfig(bag_size=40), np.random.default_rng(5), hu=True)
    np.testing.assert_array_equal(a.patches, d.patches)


def test_patches_lie_in_the_box_and_each_comes_from_one_slice():
    depth, height, width = 8, 300, 300
    # every voxel encodes its slice: value = 10 * z + 5 (windowed values stay below 255)
    windowed = np.broadcast_to(np.arange(depth, dtype=np.float32)[:, None, None] * 10 + 5, (depth, height, width))
    box = BodyBox(2, 6, 20, 280, 10, 290)
    bag = sample_bag(windowed, box, PreprocessingConfig(bag_size=200), np.random.default_rng(1))
    assert bag.patches.shape == (200, 1, 128, 128) and bag.patches.dtype == np.float32
    assert bag.slice_index.shape == (200,) and bag.origin_yx.shape == (200, 2)
    assert set(np.unique(bag.slice_index)) <= set(range(2, 6))
    for patch, z in zip(bag.patches, bag.slice_index):
        assert np.all(patch == 10 * z + 5)  # one slice, no padding
    y, x = bag.origin_yx[:, 0], bag.origin_yx[:, 1]
    assert np.all(y >= 20) and np.all(y + 128 <= 280) and np.all(x >= 10) and np.all(x + 128 <= 290)


def test_region_smaller_than_a_patch_is_padded_with_zero():
    windowed = np.full((3, 100, 90), 200, dtype=np.float32)
    box = BodyBox(0, 3, 0, 100, 0, 90)
    bag = sample_bag(windowed, box, PreprocessingConfig(bag_size=5), np.random.default_rng(0))
    assert np.all(bag.origin_yx == 0)
    assert np.all(bag.patches[:, 0, :100, :90] == 200)
    assert np.all(bag.patches[:, 0, 100:, :] == 0) and np.all(bag.patches[:, 0, :, 90:] == 0)


def test_sample_bag_needs_an_rng_and_a_box_inside_the_volume():
    windowed = np.zeros((3, 200, 200), dtype=np.float32)
    with pytest.raises(ValueError, match="rng"):
        sample_bag(windowed, BodyBox(0, 3, 0, 200, 0, 200))
    with pytest.raises(ValueError, match="exceeds"):
        sample_bag(windowed, BodyBox(0, 4, 0, 200, 0, 200), rng=np.random.default_rng(0))


def test_resample_in_plane_and_back():
    assert resampled_shape((512, 400), (0.7, 0.7), 1.4) == (256, 200)
    assert resampled_shape((100, 100), (0.5, 1.0), 1.0) == (100, 50)
    images = np.zeros((2, 64, 64), dtype=np.float32)
    images[:, 16:48, 16:48] = 100
    half = resample_in_plane(images, (0.5, 0.5), 1.0)
    assert half.shape == (2, 32, 32)
    assert half[0, 16, 16] == pytest.approx(100) and half[0, 2, 2] == pytest.approx(0)
    labels = (half > 50).astype(np.uint8)
    back = restore_in_plane_labels(labels, (64, 64))
    assert back.shape == (2, 64, 64)
    assert (back == (images > 50)).mean() > 0.98
    logits = torch.from_numpy(np.stack([1 - labels[0], labels[0]])[None].astype(np.float32))
    restored = restore_in_plane_logits(logits, (64, 64))
    assert restored.shape == (1, 2, 64, 64)
    assert (restored.argmax(1)[0].numpy() == (images[0] > 50)).mean() > 0.98


def test_body_box_cuts_a_thin_table_touching_the_body():
    hu = chest(height=320, width=320, body=((40, 260), (60, 280)))
    hu[:, 260:263, :] = 200  # a plate 3 pixels thick, full width, touching the body's back
    box = body_box(hu, PreprocessingConfig(min_body_size=1))
    assert 52 <= box.x0 <= 60 and 280 <= box.x1 <= 288
    assert box.y1 <= 272
