import json

import numpy as np
import pytest

from m2unet.labels import Lobe
from m2unet.quantify import NO_INVOLVEMENT_BELOW_PERCENT, VESSEL_RADIUS_MM, OpacityBand, quantify, severity_score
from m2unet.volume import Volume

SPACING = (0.5, 0.8, 2.5)  # one voxel = 1 mm3 = 0.001 mL
# The hand-built volumes below are one voxel thick in y: they check the HU band and the score bins,
# so they switch the vessel exclusion off (the opening would rightly remove such 0.8 mm-thin strips
# as vessels); the exclusion has its own tests at the end.
PLAIN = {"vessel_radius_mm": 0}


def build(percentages, per_lobe=200):
    """A volume with one block of ``per_lobe`` voxels per lobe; in lobe i the first
    ``percentages[i] * per_lobe / 100`` voxels lie in the opacity band, the rest are aerated lung."""
    hu = np.full((2, 10, 5 * per_lobe // 2), -1000, dtype=np.int16)  # outside: air, unlabelled
    lobe_map = np.zeros(hu.shape, dtype=np.uint8)
    for i, (lobe, percent) in enumerate(zip(Lobe, percentages)):
        block = np.full(per_lobe, -850, dtype=np.int16)
        k = round(percent * per_lobe / 100)
        block[:k] = np.resize(np.array([-700, -300, 0, 99], dtype=np.int16), k)  # band values
        cols = slice(i * per_lobe // 2, (i + 1) * per_lobe // 2)
        hu[:, 3, cols] = block.reshape(2, per_lobe // 2)
        lobe_map[:, 3, cols] = lobe
    return Volume(hu, SPACING), lobe_map


@pytest.mark.parametrize(
    "percent, score",
    [(0, 0), (0.01, 1), (4.99, 1), (5, 2), (25, 2), (25.01, 3), (26, 3), (49, 3), (49.99, 3),
     (50, 4), (75, 4), (75.01, 5), (100, 5)],
)
def test_severity_score_boundaries_read_literally(percent, score):
    assert severity_score(percent, none_below=0) == score


@pytest.mark.parametrize("percent, score", [(0, 0), (0.5, 0), (0.99, 0), (1.0, 1), (4.99, 1), (5, 2), (100, 5)])
def test_a_measured_involvement_below_the_noise_floor_is_none(percent, score):
    assert NO_INVOLVEMENT_BELOW_PERCENT == 1.0
    assert severity_score(percent) == score


def test_severity_score_refuses_nonsense():
    for bad in (-1, 101, float("nan")):
        with pytest.raises(ValueError, match="opacity_percent"):
            severity_score(bad)
    with pytest.raises(ValueError, match="none_below"):
        severity_score(3.0, none_below=5.0)


def test_quantify_hand_built_volume():
    volume, lobe_map = build([0, 4, 5, 25, 26])
    q = quantify(volume, lobe_map, **PLAIN)
    expected = {
        Lobe.RIGHT_UPPER: (0.0, 0),
        Lobe.RIGHT_MIDDLE: (4.0, 1),
        Lobe.RIGHT_LOWER: (5.0, 2),
        Lobe.LEFT_UPPER: (25.0, 2),
        Lobe.LEFT_LOWER: (26.0, 3),
    }
    for lobe, (percent, score) in expected.items():
        m = q.lobes[lobe]
        assert m.volume_ml == pytest.approx(0.2)  # 200 voxels of 1 mm3
        assert m.opacity_ml == pytest.approx(0.2 * percent / 100)
        assert m.opacity_percent == pytest.approx(percent)
        assert m.severity_score == score
    assert q.total_score == 0 + 1 + 2 + 2 + 3
    assert q.lung_volume_ml == pytest.approx(1.0)
    assert q.opacity_percent == pytest.approx((0 + 4 + 5 + 25 + 26) / 5)


def test_quantify_upper_bins_and_total_of_25():
    volume, lobe_map = build([49, 50, 75, 76, 100])
    q = quantify(volume, lobe_map, **PLAIN)
    assert [q.lobes[lobe].severity_score for lobe in Lobe] == [3, 4, 4, 5, 5]
    volume, lobe_map = build([100] * 5)
    assert quantify(volume, lobe_map, **PLAIN).total_score == 25


def test_band_edges_and_absent_lobe():
    hu = np.array([[[-701, -700, 99, 100, 500, -1000]], [[-850] * 6]], dtype=np.int16)
    lobe_map = np.zeros(hu.shape, dtype=np.uint8)
    lobe_map[0] = Lobe.RIGHT_LOWER
    q = quantify(Volume(hu, (1.0, 1.0, 1.0)), lobe_map, **PLAIN)
    assert q.lobes[Lobe.RIGHT_LOWER].opacity_ml == pytest.approx(0.002)  # -700 and 99 only
    assert q.lobes[Lobe.RIGHT_LOWER].opacity_percent == pytest.approx(100 * 2 / 6)
    absent = q.lobes[Lobe.LEFT_UPPER]
    assert absent.volume_ml == 0 and absent.opacity_percent == 0 and absent.severity_score == 0
    # another published band can be chosen
    narrow = quantify(Volume(hu, (1.0, 1.0, 1.0)), lobe_map, OpacityBand(-500, 100), **PLAIN)
    assert narrow.lobes[Lobe.RIGHT_LOWER].opacity_ml == pytest.approx(0.001)


def test_to_dict_is_json():
    volume, lobe_map = build([0, 4, 5, 25, 26])
    data = json.loads(json.dumps(quantify(volume, lobe_map, **PLAIN).to_dict()))
    assert data["total_score"] == 8
    assert data["lobes"]["left_lower"]["severity_score"] == 3
    assert data["lobes"]["right_middle"]["name"] == "right middle lobe"
    assert data["lobes"]["right_middle"]["label"] == 2
    assert data["lobes"]["right_middle"]["opacity_percent"] == pytest.approx(4.0)
    assert data["opacity_band_hu"] == [-700.0, 100.0]


def test_quantify_refuses_bad_maps():
    volume, lobe_map = build([0] * 5)
    with pytest.raises(ValueError, match="shape"):
        quantify(volume, lobe_map[:, :5])
    with pytest.raises(ValueError, match="outside 0..5"):
        quantify(volume, np.full(lobe_map.shape, 6, np.uint8))
    with pytest.raises(ValueError, match="integer"):
        quantify(volume, lobe_map.astype(np.float32))
    with pytest.raises(ValueError, match="opacity band"):
        OpacityBand(100, -700)
    with pytest.raises(ValueError, match="vessel_radius_mm"):
        quantify(volume, lobe_map, vessel_radius_mm=-1)


# --- vessel exclusion -------------------------------------------------------------------------

VESSEL_SPACING = (0.7, 0.7, 1.25)


def lung_block(shape=(24, 96, 96), hu=-850):
    """A single lobe (left lower) of aerated lung filling the whole volume, with a little noise."""
    rng = np.random.default_rng(0)
    volume_hu = (hu + rng.normal(0, 15, shape)).astype(np.int16)
    return volume_hu, np.full(shape, Lobe.LEFT_LOWER, dtype=np.uint8)


def grid_mm(shape, spacing=VESSEL_SPACING):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return z * spacing[2], y * spacing[1], x * spacing[0]


def test_thin_soft_tissue_tubes_add_almost_no_opacity():
    hu, lobe_map = lung_block()
    z, y, x = grid_mm(hu.shape)
    # a 3 mm-wide vessel along z, and one lying in-plane along x (a vessel seen lengthwise)
    along_z = (y - 30) ** 2 + (x - 30) ** 2 <= 1.5**2
    in_plane = ((y - 45) ** 2 + (z - 15) ** 2 <= 1.5**2) & (x >= 0)
    hu[np.broadcast_to(along_z | in_plane, hu.shape)] = 40
    volume = Volume(hu, VESSEL_SPACING)
    plain = quantify(volume, lobe_map, vessel_radius_mm=0).lobes[Lobe.LEFT_LOWER]
    m = quantify(volume, lobe_map).lobes[Lobe.LEFT_LOWER]
    assert plain.opacity_percent > 0.4  # the plain band counts the tubes
    assert m.opacity_percent < 0.05 * plain.opacity_percent
    assert m.severity_score <= 1


def test_large_ground_glass_blob_is_still_counted():
    hu, lobe_map = lung_block()
    z, y, x = grid_mm(hu.shape)
    blob = (z - 15) ** 2 + (y - 34) ** 2 + (x - 34) ** 2 <= 12**2  # a 24 mm ground-glass patch
    hu[blob] = -550 + hu[blob] + 850  # keeps the noise
    vessel = np.broadcast_to((y - 34) ** 2 + (x - 55) ** 2 <= 1.5**2, hu.shape)  # one vessel beside it
    hu[vessel] = 40
    volume = Volume(hu, VESSEL_SPACING)
    m = quantify(volume, lobe_map).lobes[Lobe.LEFT_LOWER]
    truth = 100 * blob.sum() / blob.size
    assert m.opacity_percent == pytest.approx(truth, rel=0.05)
    assert m.opacity_ml == pytest.approx(blob.sum() * volume.voxel_volume_ml, rel=0.05)


def test_consolidation_crossing_a_fissure_stays_whole():
    hu, lobe_map = lung_block()
    z, y, x = grid_mm(hu.shape)
    lobe_map[:, :, 48:] = Lobe.LEFT_UPPER
    patch = (z - 15) ** 2 + (y - 34) ** 2 + (x - 48 * 0.7) ** 2 <= 10**2  # straddles the boundary
    hu[patch] = 20
    q = quantify(Volume(hu, VESSEL_SPACING), lobe_map)
    for lobe, part in ((Lobe.LEFT_LOWER, patch & (lobe_map == Lobe.LEFT_LOWER)),
                       (Lobe.LEFT_UPPER, patch & (lobe_map == Lobe.LEFT_UPPER))):
        assert q.lobes[lobe].opacity_ml == pytest.approx(part.sum() * 0.7 * 0.7 * 1.25 / 1000, rel=0.05)


def test_pixels_coarser_than_the_radius_mean_no_opening():
    hu, lobe_map = lung_block(shape=(4, 12, 12))
    hu[:, 5, :] = 40
    volume = Volume(hu, (2.5 * VESSEL_RADIUS_MM, 2.5 * VESSEL_RADIUS_MM, 5.0))  # radius < half a pixel
    assert quantify(volume, lobe_map).lobes[Lobe.LEFT_LOWER].opacity_percent == pytest.approx(100 / 12)
