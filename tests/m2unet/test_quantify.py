import json

import numpy as np
import pytest

from m2unet.labels import Lobe
from m2unet.quantify import OpacityBand, quantify, severity_score
from m2unet.volume import Volume

SPACING = (0.5, 0.8, 2.5)  # one voxel = 1 mm3 = 0.001 mL


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
def test_severity_score_boundaries(percent, score):
    assert severity_score(percent) == score


def test_severity_score_refuses_nonsense():
    for bad in (-1, 101, float("nan")):
        with pytest.raises(ValueError, match="opacity_percent"):
            severity_score(bad)


def test_quantify_hand_built_volume():
    volume, lobe_map = build([0, 4, 5, 25, 26])
    q = quantify(volume, lobe_map)
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
    q = quantify(volume, lobe_map)
    assert [q.lobes[lobe].severity_score for lobe in Lobe] == [3, 4, 4, 5, 5]
    volume, lobe_map = build([100] * 5)
    assert quantify(volume, lobe_map).total_score == 25


def test_band_edges_and_absent_lobe():
    hu = np.array([[[-701, -700, 99, 100, 500, -1000]], [[-850] * 6]], dtype=np.int16)
    lobe_map = np.zeros(hu.shape, dtype=np.uint8)
    lobe_map[0] = Lobe.RIGHT_LOWER
    q = quantify(Volume(hu, (1.0, 1.0, 1.0)), lobe_map)
    assert q.lobes[Lobe.RIGHT_LOWER].opacity_ml == pytest.approx(0.002)  # -700 and 99 only
    assert q.lobes[Lobe.RIGHT_LOWER].opacity_percent == pytest.approx(100 * 2 / 6)
    absent = q.lobes[Lobe.LEFT_UPPER]
    assert absent.volume_ml == 0 and absent.opacity_percent == 0 and absent.severity_score == 0
    # another published band can be chosen
    narrow = quantify(Volume(hu, (1.0, 1.0, 1.0)), lobe_map, OpacityBand(-500, 100))
    assert narrow.lobes[Lobe.RIGHT_LOWER].opacity_ml == pytest.approx(0.001)


def test_to_dict_is_json():
    volume, lobe_map = build([0, 4, 5, 25, 26])
    data = json.loads(json.dumps(quantify(volume, lobe_map).to_dict()))
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
