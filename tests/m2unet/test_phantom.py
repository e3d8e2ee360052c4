"""The phantom generator: labels where anatomy puts them, findings, severity rule, geometry."""

import numpy as np
import pytest
from scipy import ndimage

from m2unet.labels import CLASS_TO_LOBE, Lobe, SegmentationClass as C
from m2unet.phantom import draw_grid, make_phantom
from m2unet.phantom_geometry import (
    COLUMNS,
    IN_PLANE_SPACING_MM,
    ROWS,
    SLICE_COUNT,
    SLICE_SPACING_MM,
)
from m2unet.phantom_scanners import SCANNERS
from m2unet.phantom_severity import SEVERE_TOTAL_SCORE, is_severe, lobe_severity_score

SMALL = (32, 128, 128)


@pytest.fixture(scope="module", params=[0, 1, 2])
def phantom(request):
    return make_phantom(request.param, shape=SMALL)


def centroid_mm(phantom, mask):
    """Centroid (x, y, z) in LPS mm of a boolean mask on the phantom's grid."""
    z, y, x = np.nonzero(mask)
    sx, sy, sz = phantom.volume.spacing
    ox, oy, oz = phantom.volume.origin
    return np.array([ox + sx * x.mean(), oy + sy * y.mean(), oz + sz * z.mean()])


def test_every_class_present_and_lobes_where_anatomy_puts_them(phantom):
    cm = phantom.class_map
    assert cm.dtype == np.uint8
    assert set(np.unique(cm)) == set(range(7))
    c = {k: centroid_mm(phantom, cm == k) for k in C if k != C.BACKGROUND}
    x, y, z = 0, 1, 2
    # right lung on the patient's right: smaller x in LPS, and the lungs do not meet
    xs = phantom.volume.origin[0] + phantom.volume.spacing[0] * np.nonzero(cm)[2]
    right = np.isin(cm[np.nonzero(cm)], [1, 2, 3])
    assert xs[right].max() < xs[~right].min()
    # upper lobes above lower lobes (z towards the head)
    assert c[C.RIGHT_UPPER_LOBE][z] > c[C.RIGHT_MIDDLE_LOBE][z]
    assert c[C.RIGHT_UPPER_LOBE][z] > c[C.RIGHT_LOWER_LOBE][z]
    assert c[C.LEFT_UPPER_LOBE_UPPER_DIVISION][z] > c[C.LEFT_LOWER_LOBE][z]
    # the lower lobes are posterior (larger y), the middle lobe anterior to the right lower lobe
    assert c[C.RIGHT_MIDDLE_LOBE][y] < c[C.RIGHT_LOWER_LOBE][y]
    assert c[C.RIGHT_UPPER_LOBE][y] < c[C.RIGHT_LOWER_LOBE][y]
    assert c[C.LEFT_UPPER_LOBE_UPPER_DIVISION][y] < c[C.LEFT_LOWER_LOBE][y]
    # the lingula: the inferior, anterior part of the left upper lobe
    assert c[C.LINGULA][y] < c[C.LEFT_UPPER_LOBE_UPPER_DIVISION][y]
    assert c[C.LINGULA][z] < c[C.LEFT_UPPER_LOBE_UPPER_DIVISION][z]
    # lobe sizes in a plausible proportion of the lungs (middle lobe and lingula the smallest)
    share = np.bincount(cm.ravel(), minlength=7)[1:] / np.count_nonzero(cm)
    assert np.all(share > 0.02) and np.all(share < 0.4)
    assert share[C.RIGHT_MIDDLE_LOBE - 1] < share[C.RIGHT_LOWER_LOBE - 1]
    assert share[C.LINGULA - 1] < share[C.LEFT_LOWER_LOBE - 1]


def test_lobes_fill_the_air_filled_lungs():
    p = make_phantom(4, shape=SMALL, severity="non-severe")
    hu = p.volume.hu
    lobes = p.class_map > 0
    # air inside the body: below -500 HU and not connected to the outside of the body
    air = hu < -500
    labels, _ = ndimage.label(air)
    faces = [labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    inner_air = air & ~np.isin(labels, border[border > 0])
    healthy = lobes & ~p.lesion_mask
    assert np.mean(hu[healthy] < -500) > 0.9  # lobes hold lung, not tissue
    dice = 2 * np.count_nonzero(inner_air & lobes) / (np.count_nonzero(inner_air) + np.count_nonzero(lobes))
    assert dice > 0.85, dice


def test_anatomy_outside_the_lungs():
    p = make_phantom(5, shape=SMALL)
    hu = p.volume.hu.astype(float)
    body = hu > -300
    assert np.mean(hu[body & (hu > 300)] > 300) == 1.0
    bone = np.count_nonzero(hu > 300) / np.count_nonzero(body)
    fat = np.count_nonzero((hu > -150) & (hu < -60)) / np.count_nonzero(body)
    assert 0.01 < bone < 0.15  # ribs, spine, sternum
    assert 0.05 < fat < 0.6  # subcutaneous and mediastinal fat
    # the trachea: air in the upper mediastinum, in the middle of the body's width
    top = p.volume.shape[0] - 2
    cols = np.nonzero(hu[top] < -900)[1]
    inside = cols[(cols > 0.3 * hu.shape[2]) & (cols < 0.7 * hu.shape[2])]
    assert inside.size > 0


def test_same_seed_same_phantom_other_seed_other_phantom():
    a = make_phantom(11, shape=(24, 96, 96))
    b = make_phantom(11, shape=(24, 96, 96))
    c = make_phantom(12, shape=(24, 96, 96))
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.class_map, b.class_map)
    assert np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.volume.origin == b.volume.origin and a.volume.spacing == b.volume.spacing
    assert a.involvement_percent == b.involvement_percent and a.scanner == b.scanner
    assert not np.array_equal(a.volume.hu, c.volume.hu)


def test_severity_rule_matches_the_scores_and_one_case_in_five_is_severe():
    severe = 0
    for seed in range(30):
        p = make_phantom(seed, shape=(16, 64, 64))
        lobes = CLASS_TO_LOBE[p.class_map]
        for lobe in Lobe:
            in_lobe = lobes == lobe
            percent = 100 * np.count_nonzero(p.lesion_mask & in_lobe) / np.count_nonzero(in_lobe)
            assert p.involvement_percent[lobe] == pytest.approx(percent)
            assert p.lobe_scores[lobe] == lobe_severity_score(percent)
        assert p.ct_severity_score == sum(p.lobe_scores.values())
        assert p.severe == (p.ct_severity_score >= SEVERE_TOTAL_SCORE)
        assert p.severity == ("severe" if p.severe else "non-severe")
        assert not np.any(p.lesion_mask & (p.class_map == 0))
        assert not np.any(p.consolidation_mask & ~p.lesion_mask)
        severe += p.severe
    assert 3 <= severe <= 10, severe


def test_severity_can_be_asked_for():
    for seed in (3, 8):
        assert make_phantom(seed, shape=(16, 64, 64), severity="severe").severe
        assert not make_phantom(seed, shape=(16, 64, 64), severity="non-severe").severe


def test_lobe_score_bins_and_rule():
    assert [lobe_severity_score(p) for p in (0, 0.1, 4.9, 5, 25, 25.5, 49.9, 50, 75, 75.1, 100)] == [
        0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5
    ]
    assert not is_severe(17) and is_severe(18)
    with pytest.raises(ValueError, match="percent"):
        lobe_severity_score(101)


def test_findings_are_ground_glass_and_consolidation_mostly_peripheral_posterior_basal():
    offsets = []
    for seed in (21, 22, 23, 24):
        p = make_phantom(seed, shape=SMALL, severity="severe", scanner="philips-ingenuity")
        hu = p.volume.hu.astype(float)
        ggo = p.lesion_mask & ~p.consolidation_mask
        assert p.consolidation_mask.any() and ggo.any()
        assert -800 < np.median(hu[ggo]) < -350
        assert -150 < np.median(hu[p.consolidation_mask]) < 100
        lungs = p.class_map > 0
        # peripheral: closer to the lungs' boundary than lung tissue on average
        depth = ndimage.distance_transform_edt(lungs, sampling=p.volume.spacing[::-1])
        assert depth[p.lesion_mask].mean() < depth[lungs].mean()
        offsets.append(centroid_mm(p, p.lesion_mask) - centroid_mm(p, lungs))
    mean = np.mean(offsets, axis=0)
    assert mean[1] > 0  # posterior (y towards posterior)
    assert mean[2] < 0  # basal


def test_a_spread_from_none_to_extensive():
    totals = [make_phantom(s, shape=(16, 64, 64)).ct_severity_score for s in range(30, 42)]
    totals += [make_phantom(s, shape=(16, 64, 64), severity="severe").ct_severity_score for s in (1, 2)]
    assert min(totals) <= 2 and max(totals) >= 20
    assert len(set(totals)) >= 6


def test_default_geometry_follows_the_papers_range():
    grids = [draw_grid(seed) for seed in range(300)]
    for g in grids:
        nz, ny, nx = g.shape
        sx, sy, sz = g.spacing
        assert nx == COLUMNS and ROWS[0] <= ny <= ROWS[1]
        assert SLICE_COUNT[0] <= nz <= SLICE_COUNT[1]
        assert sx == sy and IN_PLANE_SPACING_MM[0] <= sx <= IN_PLANE_SPACING_MM[1]
        assert SLICE_SPACING_MM[0] <= sz <= SLICE_SPACING_MM[1]
    spacings = [g.spacing[2] for g in grids]
    assert min(spacings) < 0.5 and max(spacings) >= 10.0
    assert any(g.shape[1] > 512 for g in grids)
    assert min(g.shape[0] for g in grids) < 40 and max(g.shape[0] for g in grids) > 600


def test_asked_geometry_is_kept_and_shape_alone_still_holds_the_chest():
    p = make_phantom(6, shape=(20, 80, 96))
    g = draw_grid(6, shape=(20, 80, 96))
    assert p.volume.shape == (20, 80, 96)
    assert p.volume.spacing == g.spacing and p.volume.origin == g.origin
    assert p.volume.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert p.volume.hu.dtype == np.int16
    # the whole thorax is in view: lungs do not touch the volume's edges
    lungs = p.class_map > 0
    assert not lungs[0].any() and not lungs[-1].any()
    assert not lungs[:, :, 0].any() and not lungs[:, :, -1].any()
    q = make_phantom(6, spacing=(2.5, 2.5, 10.0))
    assert q.volume.spacing == (2.5, 2.5, 10.0)
    assert 20 <= q.volume.shape[0] <= 40


def test_scanners_differ_in_noise_and_storage():
    def air_noise(name):
        p = make_phantom(9, shape=(16, 128, 128), scanner=name)
        air = p.volume.hu[:, 2:8, 60:68].astype(float)  # in front of the body, inside the FOV
        return air.std(), p
    sharp, ge = air_noise("ge-brightspeed")
    smooth, philips = air_noise("philips-ingenuity")
    assert sharp > 1.5 * smooth
    assert ge.volume.hu.min() == -2000  # GE pads outside the reconstruction circle
    assert philips.volume.hu.min() >= -1024  # stored unsigned with intercept -1024
    assert np.array_equal(ge.class_map, philips.class_map)  # same chest, other scanner


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 1, "severity": "mild"}, "severity"),
        ({"seed": 1, "scanner": "no-such-scanner"}, "scanner"),
        ({"seed": 1, "shape": (0, 64, 64)}, "shape"),
        ({"seed": 1, "shape": (3, 64, 64)}, "shape"),
        ({"seed": 1, "shape": (8, 64)}, "shape"),
        ({"seed": 1, "spacing": (0.7, 0.7, -1.0)}, "spacing"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, word):
    seed = kwargs.pop("seed")
    with pytest.raises(ValueError, match=word):
        make_phantom(seed, **kwargs)


def test_scanner_profiles_are_the_papers_five():
    makers = {p.manufacturer.split()[0].lower() for p in SCANNERS.values()}
    assert makers == {"philips", "ge", "siemens", "hitachi", "anke"}
