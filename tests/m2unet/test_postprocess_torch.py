"""The torch clean-up (m2unet.postprocess_torch) gives the scipy clean-up's labels, voxel for voxel.

On the CPU, and on CUDA too where there is one (the same code); one torch thread, because the
arrays are tiny and a busy machine makes OpenMP's threads wait on each other."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from m2unet import postprocess_torch as pt
from m2unet.postprocess import fill_lungs, network_lungs, postprocess, remove_islands
from tests.m2unet.test_postprocess import SPACING, two_lobes

SPACINGS = [(1.0, 1.0, 1.0), (0.72, 0.72, 0.94), (0.7, 0.7, 5.0), (1.5, 1.5, 3.3)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_clean_up(m: np.ndarray, spacing=SPACING) -> np.ndarray:
    expected = postprocess(m, network_lungs(m), spacing)
    for device in DEVICES:
        tensor = torch.from_numpy(m).to(device)
        got = pt.postprocess_tensor(tensor, spacing)
        assert got.dtype == torch.uint8 and got.device == tensor.device
        np.testing.assert_array_equal(got.cpu().numpy(), expected)
        np.testing.assert_array_equal(pt.network_lungs(tensor).cpu().numpy(), network_lungs(m))
    return expected


def blobby(seed: int, shape, classes: int = 6) -> np.ndarray:
    """A label map of smooth random regions (lobes) inside a smooth random body, with speckle:
    fragments of every class, unlabelled holes (cavities) and ragged borders."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(1.0, 2.5)
    fields = ndimage.gaussian_filter(rng.normal(size=(classes, *shape)), (0, sigma, sigma, sigma))
    body = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    m = (fields.argmax(axis=0) + 1).astype(np.uint8)
    m[body < np.quantile(body, rng.uniform(0.1, 0.6))] = 0
    speck = rng.random(shape) < rng.uniform(0.0, 0.08)
    m[speck] = rng.integers(0, classes + 1, int(speck.sum()))
    return m


# -- components and the feature transform -------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_components_are_scipys(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(tuple(rng.integers(4, 16, 3))) < rng.uniform(0.2, 0.6)
    for connectivity, structure in ((26, np.ones((3, 3, 3))), (6, None)):
        expected, count = ndimage.label(mask, structure=structure)
        for device in DEVICES:
            got, got_count = pt.label(torch.from_numpy(mask).to(device), connectivity)
            assert got_count == count
            np.testing.assert_array_equal(got.cpu().numpy(), expected)  # the same numbering, not only the same sets


def test_a_winding_component_is_one():
    """A serpentine whose first voxel in raster order lies at one end of a long winding path: the
    keys must travel along the whole path (the merge step takes them across each bend)."""
    mask = np.zeros((5, 21, 21), bool)
    for z in range(0, 5, 2):
        for y in range(0, 21, 2):
            mask[z, y, :] = True  # rows
            if y + 2 < 21:
                mask[z, y + 1, 20 if (y // 2 + z // 2) % 2 == 0 else 0] = True  # bends, alternating sides
        if z + 2 < 5:
            mask[z + 1, 20, 20 if z % 4 == 0 else 0] = True
    assert ndimage.label(mask, np.ones((3, 3, 3)))[1] == 1
    for connectivity in (6, 26):
        labels, count = pt.label(torch.from_numpy(mask), connectivity)
        assert count == ndimage.label(mask, np.ones((3, 3, 3)) if connectivity == 26 else None)[1]
        np.testing.assert_array_equal(labels.numpy() > 0, mask)


@pytest.mark.parametrize("seed", range(8))
def test_nearest_feature_is_scipys_with_its_tie_breaks(seed):
    rng = np.random.default_rng(100 + seed)
    features = rng.random(tuple(rng.integers(3, 18, 3))) < rng.choice([0.005, 0.03, 0.2])
    features.flat[0] = True
    spacing = SPACINGS[seed % len(SPACINGS)][::-1]  # (z, y, x)
    expected = ndimage.distance_transform_edt(~features, sampling=spacing, return_distances=False, return_indices=True)
    for device in DEVICES:
        got = pt.nearest_feature(torch.from_numpy(features).to(device), spacing)
        for axis in range(3):
            np.testing.assert_array_equal(got[axis].cpu().numpy(), expected[axis])
    # a part of the slices and of their voxels only
    lo, hi = 1, max(2, features.shape[0] - 1)
    wanted = rng.random((hi - lo, *features.shape[1:])) < 0.2
    part = pt.nearest_feature(torch.from_numpy(features), spacing, rows=slice(lo, hi), wanted=torch.from_numpy(wanted))
    for axis in range(3):
        np.testing.assert_array_equal(part[axis].numpy()[wanted], expected[axis][lo:hi][wanted])
        assert (part[axis].numpy()[~wanted] == -1).all()


# -- the crafted cases of test_postprocess.py ---------------------------------------------------


def test_crafted_islands_are_handed_over_as_by_scipy():
    m = two_lobes()
    m[4:6, 8:10, 14:16] = 1  # an island of class 1 inside class 3
    np.testing.assert_array_equal(assert_same_clean_up(m), two_lobes())

    m = two_lobes()
    m[:, :, 18:] = 0
    m[0:2, 0:2, 0:2] = 5
    m[5, 5, 8:11] = 5  # touches class 1 on more faces than class 3
    m[5, 15, 2] = 5
    np.testing.assert_array_equal(pt.remove_islands(torch.from_numpy(m)).numpy(), remove_islands(m))
    assert_same_clean_up(m)

    m = np.zeros((6, 20, 20), dtype=np.uint8)
    m[:, :8, :8] = 2
    m[2, 15, 15] = 2  # floats in background, touching class 4 on one face
    m[2, 15, 16] = 4
    islands = pt.remove_islands(torch.from_numpy(m)).numpy()
    np.testing.assert_array_equal(islands, remove_islands(m))
    assert islands[2, 15, 15] == 0
    assert_same_clean_up(m)  # in the network's lungs the voxel is lung: filled again from class 4


def test_crafted_fills_are_scipys():
    lung = np.ones((10, 20, 20), bool)
    m = two_lobes()
    m[:, :, 6:14] = 0  # a gap through the lung
    np.testing.assert_array_equal(pt.fill_lungs(torch.from_numpy(m), torch.from_numpy(lung), SPACING).numpy(),
                                  fill_lungs(m, lung, SPACING))
    m = np.zeros((9, 5, 9), dtype=np.uint8)
    m[0] = 1
    m[:, :, 8] = 2
    for spacing in ((1.0, 1.0, 5.0), (1.0, 1.0, 1.0)):  # anisotropic, and a tie
        np.testing.assert_array_equal(
            pt.fill_lungs(torch.from_numpy(m), torch.from_numpy(np.ones(m.shape, bool)), spacing).numpy(),
            fill_lungs(m, np.ones(m.shape, bool), spacing),
        )


def test_enclosed_gaps_take_the_nearest_lobe_as_by_scipy():
    m = two_lobes((12, 24, 24))
    m[2:10, 3:21, 5:19] = 0  # a wide cavity: propagation leaves its core to the distance transform
    m[6, 12, 7] = 3  # a class-3 speck nearer to class 1
    for spacing in SPACINGS:
        out = assert_same_clean_up(m, spacing)
        assert np.all(out > 0)


def test_cavities_and_an_open_well_as_by_scipy():
    m = np.zeros((12, 24, 30), dtype=np.uint8)
    m[1:11, 2:22, 2:12] = 2
    m[1:11, 2:22, 18:28] = 5
    m[4:7, 8:12, 5:9] = 0  # an enclosed cavity
    m[0:6, 10:14, 22:25] = 0  # a well open at the top
    out = assert_same_clean_up(m)
    assert np.all(out[4:7, 8:12, 5:9] == 2) and not out[0:6, 10:14, 22:25].any()


def test_a_single_component_map_is_unchanged_and_empty_maps_stay_empty():
    m = two_lobes()
    np.testing.assert_array_equal(assert_same_clean_up(m), m)
    assert not pt.postprocess_tensor(torch.zeros((3, 4, 4), dtype=torch.uint8), SPACING).any()


def test_random_label_noise_as_by_scipy():
    rng = np.random.default_rng(0)
    assert_same_clean_up(rng.integers(0, 7, size=(8, 24, 24)).astype(np.uint8))


# -- random blobby label maps -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_blobby_label_maps_as_by_scipy(seed):
    shape = tuple(int(s) for s in np.random.default_rng(seed).integers(10, 26, 3))
    m = blobby(seed, shape)
    m[: shape[0] // 2, shape[1] // 2 - 2 : shape[1] // 2 + 2, 3:6] = 0  # an open well from the top
    assert_same_clean_up(m, SPACINGS[seed % len(SPACINGS)])


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="beyond"):
        pt.postprocess_tensor(torch.full((2, 2, 2), 7, dtype=torch.uint8), SPACING)
    with pytest.raises(ValueError, match="integer"):
        pt.postprocess_tensor(torch.zeros((2, 2, 2)), SPACING)
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        pt.postprocess_tensor(torch.zeros((2, 2), dtype=torch.uint8), SPACING)
