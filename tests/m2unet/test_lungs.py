import numpy as np
import pytest
from scipy import ndimage

from m2unet.lungs import lung_box, lung_mask, lung_slices
from m2unet.volume import Volume

SPACING = (2.0, 2.0, 5.0)  # x, y, z mm


def synthetic_chest(depth=40, size=200):
    """Air around a body ellipse (fat rim, soft tissue), two lung ellipsoids with vessels and a
    juxtapleural consolidation, a trachea from the top to the carina, gas in the stomach and a
    table under the body. Returns the HU volume and the true lungs."""
    z, y, x = np.mgrid[0:depth, 0:size, 0:size].astype(np.float32)
    hu = np.full((depth, size, size), -1000, dtype=np.int16)
    body = ((y - 100) / 70) ** 2 + ((x - 100) / 90) ** 2 <= 1
    hu[body] = -100  # fat
    hu[((y - 100) / 65) ** 2 + ((x - 100) / 85) ** 2 <= 1] = 40  # muscle, organs
    lungs = np.zeros(hu.shape, dtype=bool)
    for cx in (62, 138):  # right lung (image left), left lung
        lungs |= ((z - 22) / 16) ** 2 + ((y - 95) / 50) ** 2 + ((x - cx) / 30) ** 2 <= 1
    hu[lungs] = -850
    vessels = lungs & (y % 12 < 2) & (x % 12 < 2)
    hu[vessels] = 40  # vessels: tissue inside the lungs
    consolidation = lungs & (x < 44) & (np.abs(y - 95) < 4) & (np.abs(z - 22) < 5)
    hu[consolidation] = 0  # dense, touching the pleura of the right lung: a notch 16 mm wide
    trachea = (z < 14) & ((y - 80) ** 2 + (x - 100) ** 2 <= 16)
    hu[trachea] = -1000
    stomach = ((z - 37) / 3) ** 2 + ((y - 150) / 8) ** 2 + ((x - 140) / 12) ** 2 <= 1  # below the diaphragm
    hu[stomach & ~lungs] = -1000
    hu[:, 185:188, 10:190] = 100  # table
    return hu, lungs, trachea & ~lungs, stomach & ~lungs, consolidation


@pytest.fixture(scope="module")
def chest():
    hu, lungs, trachea, stomach, consolidation = synthetic_chest()
    mask = lung_mask(Volume(hu, SPACING))
    return hu, lungs, trachea, stomach, consolidation, mask


def test_lung_mask_finds_the_lungs(chest):
    hu, lungs, *_ , mask = chest
    dice = 2 * (mask & lungs).sum() / (mask.sum() + lungs.sum())
    assert dice > 0.97
    assert mask.dtype == bool and mask.shape == hu.shape


def test_vessels_and_bordering_consolidation_are_lung(chest):
    hu, lungs, _, _, consolidation, mask = chest
    interior = ndimage.binary_erosion(lungs, iterations=2)
    assert mask[interior & (hu == 40)].all()  # vessels enclosed by aerated lung
    assert mask[consolidation].mean() > 0.8  # juxtapleural, closed by the 10 mm closing


def test_outside_air_trachea_and_stomach_are_not_lung(chest):
    hu, lungs, trachea, stomach, _, mask = chest
    assert not mask[hu == -1000][~lungs[hu == -1000] & ~trachea[hu == -1000] & ~stomach[hu == -1000]].any()
    assert mask[trachea].mean() < 0.05
    assert not mask[stomach].any()


def test_lung_slices_and_box(chest):
    *_, mask = chest
    slices = lung_slices(mask)
    assert slices[0] >= 5 and slices[-1] <= 38
    box = lung_box(mask)
    assert box[2].start >= 30 and box[2].stop <= 170
    assert lung_box(np.zeros((2, 3, 3), dtype=bool)) is None


def test_no_lung_gives_an_empty_mask():
    hu = np.full((3, 64, 64), -1000, dtype=np.int16)
    hu[:, 10:54, 10:54] = 40
    assert not lung_mask(Volume(hu, (1.0, 1.0, 1.0))).any()


@pytest.fixture(scope="module")
def real_ct():
    from tests.support.paths import REAL_CT

    if not REAL_CT.is_dir() or not any(REAL_CT.glob("*.dcm")):
        pytest.skip(f"real CT series not found at {REAL_CT}")
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(REAL_CT)))
    volume = Volume.from_sitk(reader.Execute())
    return volume, lung_mask(volume)


def test_real_ct_lungs_are_plausible(real_ct):
    volume, mask = real_ct
    hu = volume.hu
    total_ml = mask.sum() * volume.voxel_volume_ml
    assert 3000 < total_ml < 8000  # an adult's lungs at inspiration (measured: about 5.6 L)
    half = hu.shape[2] // 2
    assert mask[:, :, :half].sum() * volume.voxel_volume_ml > 1500  # right lung (image left)
    assert mask[:, :, half:].sum() * volume.voxel_volume_ml > 1500  # left lung
    assert hu[mask].mean() < -700  # mostly aerated parenchyma
    slices = lung_slices(mask)
    assert np.array_equal(slices, np.arange(slices[0], slices[-1] + 1))  # one contiguous run
    # above the apices only the trachea holds air inside the body: it is not lung
    top = hu[56:, 200:400, 200:320] < -950
    assert top.sum() > 1000 and mask[56:, 200:400, 200:320][top].sum() == 0
