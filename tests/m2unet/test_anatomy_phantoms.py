"""Phantoms from real lobe annotations (m2unet.phantoms): labels, laterality, HU, truth."""

from __future__ import annotations

import numpy as np
import pytest

from m2unet.labels import Lobe, SegmentationClass
from m2unet.phantoms import HELD_OUT, HELD_OUT_FAMILY, TRAINING_FAMILIES, annotation_paths, load_annotation, make_anatomy_phantom
from m2unet.phantoms.annotations import Annotation, annotation_name, decode_labels, layout_problems
from m2unet.phantoms.deform import draw_warp, warp_annotation
from m2unet.phantoms.lesions import draw_lesions
from tests.support.paths import SHARED

LOBE_MASKS = SHARED / "data" / "lobe-masks"
COARSE = {"pixel_mm": (4.0, 4.0), "thickness_mm": 5.0}

pytestmark = pytest.mark.skipif(not LOBE_MASKS.is_dir(), reason=f"{LOBE_MASKS} is not present")


@pytest.fixture(scope="module")
def annotation():
    path = next(p for p in annotation_paths(LOBE_MASKS) if annotation_name(p) == HELD_OUT[0])
    return load_annotation(path)


def _mean_x(labels: np.ndarray, values) -> float:
    return float(np.argwhere(np.isin(labels, list(values)))[:, 2].mean())


def _mean(labels: np.ndarray, value, axis: int) -> float:
    return float(np.argwhere(labels == value)[:, axis].mean())


def test_the_annotation_decodes_to_five_lobes_in_lps(annotation):
    lobes = annotation.lobes
    assert set(np.unique(lobes)) == {0, 1, 2, 3, 4, 5}
    assert annotation.airway.any()
    # LPS: the patient's right at smaller x, the head at larger z, anterior at smaller y
    assert _mean_x(lobes, (1, 2, 3)) < _mean_x(lobes, (4, 5))
    assert _mean(lobes, Lobe.RIGHT_UPPER, 0) > _mean(lobes, Lobe.RIGHT_LOWER, 0)
    assert _mean(lobes, Lobe.RIGHT_MIDDLE, 1) < _mean(lobes, Lobe.RIGHT_LOWER, 1)


def test_unassigned_lung_takes_its_nearest_lobe_and_airway_bits_are_read():
    raw = np.zeros((1, 1, 6), dtype=np.int32)
    raw[0, 0] = [4, 1, 1, 8, 512 + 8, 0]
    lobes, airway = decode_labels(raw)
    assert lobes[0, 0].tolist() == [Lobe.RIGHT_UPPER, Lobe.RIGHT_UPPER, Lobe.LEFT_LOWER, Lobe.LEFT_LOWER, Lobe.LEFT_LOWER, 0]
    assert airway[0, 0].tolist() == [False, False, False, False, True, False]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_warp_never_swaps_sides_and_keeps_lobe_shares(annotation, seed):
    rng = np.random.default_rng(seed)
    warped = warp_annotation(annotation, draw_warp(rng, pixel_mm=(4.0, 4.0), plane_step_mm=4.0, strength=1.5), rng)
    lobes = warped.lobes
    assert _mean_x(lobes, (1, 2, 3)) < _mean_x(lobes, (4, 5))
    assert _mean(lobes, Lobe.LEFT_UPPER, 0) > _mean(lobes, Lobe.LEFT_LOWER, 0)
    assert _mean(lobes, Lobe.RIGHT_MIDDLE, 1) < _mean(lobes, Lobe.RIGHT_LOWER, 1)
    before = np.bincount(annotation.lobes.ravel(), minlength=6)[1:] / (annotation.lobes > 0).sum()
    after = np.bincount(lobes.ravel(), minlength=6)[1:] / (lobes > 0).sum()
    assert np.abs(after - before).max() < 0.03, (before.round(3), after.round(3))


def test_a_phantom_keeps_the_lobes_and_has_each_tissue_at_its_hu(annotation):
    phantom = make_anatomy_phantom(annotation, 11, severity="non-severe", family="ground_glass", **COARSE)
    hu, classes = phantom.volume.hu, phantom.class_map
    assert hu.dtype == np.int16 and classes.shape == hu.shape
    assert phantom.volume.spacing[2] == 5.0
    assert set(np.unique(classes)) == set(range(7))  # every class, the lingula included
    assert _mean_x(classes, (1, 2, 3)) < _mean_x(classes, (4, 5, 6))
    assert _mean(classes, SegmentationClass.LINGULA, 0) < _mean(classes, SegmentationClass.LEFT_UPPER_LOBE_UPPER_DIVISION, 0)
    clear_lung = (classes > 0) & ~phantom.lesion_mask
    assert -950 < np.median(hu[clear_lung]) < -750
    body = hu[(classes == 0) & (hu > -500)]
    assert np.percentile(body, 99) > 250  # bone
    assert -150 < np.median(body) < 120  # soft tissue and fat
    if phantom.lesion_mask.any():
        assert -760 < np.median(hu[phantom.lesion_mask]) < -250  # ground glass


def test_forced_severity_holds_and_the_truth_is_the_lesion_mask(annotation):
    phantom = make_anatomy_phantom(annotation, 5, severity="severe", family="consolidation", **COARSE)
    assert phantom.severe and phantom.ct_severity_score >= 18
    assert -200 < np.median(phantom.volume.hu[phantom.lesion_mask]) < 150  # mostly solid
    lobe_map = phantom.lobe_map
    for lobe in Lobe:  # the thick slices' labels agree with the thin-plane truth to a few points
        share = 100 * phantom.lesion_mask[lobe_map == lobe].mean()
        assert abs(share - phantom.involvement_percent[lobe]) < 8, (lobe, share, phantom.involvement_percent[lobe])
    clean = make_anatomy_phantom(annotation, 5, severity="non-severe", **COARSE)
    assert not clean.severe and clean.ct_severity_score < 18


def test_training_never_draws_the_held_out_family():
    rng = np.random.default_rng(0)
    families = {draw_lesions(rng).family for _ in range(300)}
    assert families == set(TRAINING_FAMILIES) and HELD_OUT_FAMILY not in families
    assert draw_lesions(rng, family=HELD_OUT_FAMILY).family == HELD_OUT_FAMILY
    with pytest.raises(ValueError, match="lesion family"):
        draw_lesions(rng, family="tree_in_bud")



def _right_lung(middle_at: str) -> Annotation:
    """A box of right lung (z towards the head, y towards the back): upper lobe on top, lower lobe
    behind, the middle lobe in front below (anatomy) or elsewhere."""
    lobes = np.zeros((40, 40, 20), dtype=np.uint8)
    lobes[20:, :, :] = Lobe.RIGHT_UPPER
    lobes[:, 20:, :] = Lobe.RIGHT_LOWER
    if middle_at == "anterior-inferior":
        lobes[:20, :20, :] = Lobe.RIGHT_MIDDLE
    elif middle_at == "posterior":  # as held-out chest 32: where the lower lobe's superior segment lies
        lobes[:20, :20, :] = Lobe.RIGHT_LOWER
        lobes[20:30, 20:, :] = Lobe.RIGHT_MIDDLE
    elif middle_at == "apex":  # as held-out chest 07: above the upper lobe's centre
        lobes[:20, :20, :] = Lobe.RIGHT_UPPER
        lobes[34:, 10:30, :] = Lobe.RIGHT_MIDDLE
    return Annotation("crafted", lobes, np.zeros(lobes.shape, bool), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))


def test_the_layout_check_passes_anatomy_and_names_a_misplaced_middle_lobe():
    assert layout_problems(_right_lung("anterior-inferior")) == []
    assert any("anterior to the right lower lobe" in p for p in layout_problems(_right_lung("posterior")))
    assert any("below the right upper lobe" in p for p in layout_problems(_right_lung("apex")))
    assert layout_problems(Annotation("empty", np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), bool), (1, 1, 1), (0, 0, 0)))


def test_the_layout_check_flags_the_two_mislabelled_held_out_maps_and_no_other():
    """Of the eight held-out maps (the 32 training maps pass too; too slow to read all here)."""
    paths = annotation_paths(LOBE_MASKS)
    held = [i for i, p in enumerate(paths) if annotation_name(p) in HELD_OUT]
    flagged = [i for i in held if layout_problems(load_annotation(paths[i]))]
    assert flagged == [7, 32]
