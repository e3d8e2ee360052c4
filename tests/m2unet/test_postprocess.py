import numpy as np
import pytest
from scipy import ndimage

from m2unet.postprocess import fill_lungs, network_lungs, postprocess, remove_islands, restrict_to_lungs

SPACING = (1.0, 1.0, 1.0)


def two_lobes(shape=(10, 20, 20)):
    """Class 1 in x < 10, class 3 in x >= 10, the whole volume is lung."""
    m = np.zeros(shape, dtype=np.uint8)
    m[:, :, :10] = 1
    m[:, :, 10:] = 3
    return m


def components(mask):
    return ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]


def test_island_is_handed_to_the_class_around_it():
    m = two_lobes()
    m[4:6, 8:10, 14:16] = 1  # an island of class 1 inside class 3
    out = postprocess(m, np.ones(m.shape, bool), SPACING)
    assert np.all(out[4:6, 8:10, 14:16] == 3)
    np.testing.assert_array_equal(out, two_lobes())


def test_fragment_goes_to_the_neighbour_touching_it_most():
    m = two_lobes()
    m[:, :, 18:] = 0  # background at the right edge
    # a class-5 fragment at the boundary: 2 columns in class 1 land, 1 column in class 3 land,
    # next to the main class-5 component? no: the main one is far away
    m[0:2, 0:2, 0:2] = 5  # the main (largest) class-5 component
    m[5, 5, 8:11] = 5  # 3 voxels: faces touch class 1 mostly (x 8, 9) and class 3 (x 10)
    m[5, 15, 2] = 5  # a single voxel inside class 1
    out = remove_islands(m)
    assert out[5, 5, 8] == 1 and out[5, 5, 9] == 1 and out[5, 5, 10] == 1
    assert out[5, 15, 2] == 1
    assert np.all(out[0:2, 0:2, 0:2] == 5)
    for c in (1, 3, 5):
        assert components(out == c) == 1


def test_fragment_touching_mostly_background_is_removed_without_a_lung_mask():
    m = np.zeros((6, 20, 20), dtype=np.uint8)
    m[:, :8, :8] = 2
    m[2, 15, 15] = 2  # a floating island
    m[2, 15, 16] = 4  # a neighbour it touches on one face; background on five
    out = postprocess(m, None, SPACING)
    assert out[2, 15, 15] == 0
    assert np.all(out[:, :8, :8] == 2)


def test_labels_outside_the_lungs_are_removed():
    m = two_lobes()
    lung = np.zeros(m.shape, bool)
    lung[:, 2:18, 2:18] = True
    out = postprocess(m, lung, SPACING)
    assert np.all(out[~lung] == 0)
    assert np.all(out[lung] > 0)


def test_margin_keeps_labels_near_the_lungs():
    m = two_lobes()
    lung = np.zeros(m.shape, bool)
    lung[:, 5:15, 5:15] = True
    out = restrict_to_lungs(m, lung, SPACING, margin_mm=2.0)
    assert np.all(out[:, 3:17, 5:15] > 0) and np.all(out[:, 5:15, 3:17] > 0)  # within 2 mm in-plane
    assert np.all(out[:, 3, 3] == 0)  # the corner is 2.8 mm away
    assert np.all(out[:, :2, :] == 0) and np.all(out[:, :, 18:] == 0)


def test_unlabelled_lung_voxels_get_the_nearest_lobe():
    m = two_lobes()
    m[:, :, 6:14] = 0  # a gap in the middle of the lung
    out = fill_lungs(m, np.ones(m.shape, bool), SPACING)
    assert np.all(out[:, :, :10] == 1) and np.all(out[:, :, 10:] == 3)


def test_fill_respects_anisotropic_spacing():
    m = np.zeros((9, 5, 9), dtype=np.uint8)
    m[0] = 1  # class 1 on the first slice, 8 slices * 5 mm = 40 mm away from the last
    m[:, :, 8] = 2  # class 2 in the last column: 8 pixels * 1 mm away from the first column
    out = fill_lungs(m, np.ones(m.shape, bool), (1.0, 1.0, 5.0))
    assert out[8, 2, 0] == 2  # 8 mm to class 2, 40 mm to class 1
    assert out[1, 2, 0] == 1  # 5 mm to class 1, 8 mm to class 2


def test_island_in_unlabelled_lung_ends_up_with_the_nearest_main_lobe():
    m = two_lobes()
    m[:, :, 5:15] = 0
    m[5, 10, 6] = 3  # a class-3 speck nearer to class 1
    lung = np.ones(m.shape, bool)
    out = postprocess(m, lung, SPACING)
    assert out[5, 10, 6] == 1
    assert components(out == 1) == 1 and components(out == 3) == 1
    assert np.all(out > 0)


def test_postprocess_refuses_bad_input():
    with pytest.raises(ValueError, match="beyond"):
        postprocess(np.full((2, 2, 2), 7, np.uint8), None, SPACING)
    with pytest.raises(ValueError, match="lung mask shape"):
        postprocess(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), bool), SPACING)


def test_random_label_noise_becomes_one_component_per_class():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 7, size=(8, 24, 24)).astype(np.uint8)
    lung = np.zeros(m.shape, bool)
    lung[:, 4:20, 4:20] = True
    out = postprocess(m, lung, SPACING)
    assert np.all(out[~lung] == 0)
    for c in range(1, 7):
        assert components(out == c) <= 1


def test_the_network_lungs_take_in_enclosed_cavities_and_nothing_open():
    m = np.zeros((12, 24, 30), dtype=np.uint8)
    m[1:11, 2:22, 2:12] = 2  # a right lung
    m[1:11, 2:22, 18:28] = 5  # a left lung, apart: the gap between them is open
    m[4:7, 8:12, 5:9] = 0  # a cavity inside the right lung (a nodule left unlabelled)
    m[0:6, 10:14, 22:25] = 0  # a well reaching the left lung's top: open
    region = network_lungs(m)
    assert region[4:7, 8:12, 5:9].all()
    assert not region[0:6, 10:14, 22:25].any()
    assert not region[:, :, 12:18].any()
    np.testing.assert_array_equal(region & ~(m > 0), np.pad(np.ones((3, 4, 4), bool), ((4, 5), (8, 12), (5, 21))))
    out = postprocess(m, region, SPACING)
    assert np.all(out[4:7, 8:12, 5:9] == 2)  # the cavity takes the lobe around it
    assert not out[0:6, 10:14, 22:25].any()


def test_a_consolidated_region_the_network_paints_stays_a_lobe():
    """Lobes are no longer cut to a Hounsfield mask: the clean-up inside the network's own lungs
    keeps every labelled voxel of a single component, dense or not."""
    m = two_lobes()
    region = network_lungs(m)
    np.testing.assert_array_equal(postprocess(m, region, SPACING), m)
    assert not network_lungs(np.zeros((3, 4, 4), np.uint8)).any()
