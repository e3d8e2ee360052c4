import numpy as np
import pytest

from m2unet.volume import Volume


def ok(**kw):
    args = dict(hu=np.zeros((2, 4, 5), dtype=np.int16), spacing=(0.7, 0.7, 2.5))
    args.update(kw)
    return Volume(**args)


def test_valid_volume_and_its_properties():
    v = ok(origin=(1.0, 2.0, 3.0))
    assert v.shape == (2, 4, 5)
    assert v.voxel_volume_ml == pytest.approx(0.7 * 0.7 * 2.5 / 1000)
    ok(hu=np.zeros((3, 2, 2), dtype=np.float32), spacing=(1, 1, 1))  # float and int spacing accepted


def test_sitk_round_trip():
    hu = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    v = Volume(hu, spacing=(0.5, 0.6, 2.0), origin=(-10.0, 5.0, 100.0), direction=direction)
    image = v.to_sitk()
    assert image.GetSize() == (4, 3, 2)
    back = Volume.from_sitk(image)
    np.testing.assert_array_equal(back.hu, hu)
    assert back.spacing == pytest.approx((0.5, 0.6, 2.0))
    assert back.origin == pytest.approx((-10.0, 5.0, 100.0))
    assert back.direction == pytest.approx(direction)


@pytest.mark.parametrize(
    "hu, message",
    [
        (np.zeros((0, 4, 4), dtype=np.int16), "empty"),
        (np.zeros((2, 0, 4), dtype=np.int16), "empty"),
        (np.zeros((1, 4, 4), dtype=np.int16), "1 slice; a CT volume needs at least 2"),
        (np.zeros((4, 4), dtype=np.int16), "3 dimensions"),
        (np.zeros((2, 4, 4), dtype=bool), "dtype bool"),
        (np.zeros((2, 4, 4), dtype=np.complex64), "dtype complex64"),
        (np.zeros((2, 4, 4), dtype=object), "dtype object"),
        (np.array([[[0.0, np.nan]], [[0.0, 0.0]]]), "NaN or infinite"),
        (np.array([[[0.0, np.inf]], [[0.0, 0.0]]], dtype=np.float32), "NaN or infinite"),
        ([[[0, 0]], [[0, 0]]], "numpy array"),
    ],
)
def test_bad_arrays(hu, message):
    with pytest.raises(ValueError, match=message):
        ok(hu=hu)


@pytest.mark.parametrize(
    "spacing, message",
    [
        ((0.7, 0.7, 0.0), "spacing z = 0.0 mm"),
        ((0.0, 0.7, 1.0), "spacing x = 0.0 mm"),
        ((0.7, -1.0, 1.0), "spacing y = -1.0 mm"),
        ((0.7, 0.7, 500.0), "spacing z = 500.0 mm is not a plausible"),
        ((0.7, 0.7, float("nan")), "spacing z = nan"),
        ((0.7, 0.7, float("inf")), "spacing z = inf"),
        ((0.7, 0.7), "3 values"),
        ((0.7, 0.7, "1"), "not a number"),
    ],
)
def test_bad_spacing(spacing, message):
    with pytest.raises(ValueError, match=message):
        ok(spacing=spacing)


def test_bad_geometry():
    with pytest.raises(ValueError, match="origin"):
        ok(origin=(0.0, float("nan"), 0.0))
    with pytest.raises(ValueError, match="direction must have 9"):
        ok(direction=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="not orthonormal"):
        ok(direction=(2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
