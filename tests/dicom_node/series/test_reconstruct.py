"""Volume reconstruction: order by position, duplicates, gaps, tilt, rescale, acquisitions,
compressed transfer syntaxes, multi-frame, and the real series' true geometry."""

import math
import random
import shutil

import numpy as np
import pydicom
import pytest

from dicom_node.series.reconstruct import UnusableSeries, reconstruct_series
from tests.support.ct_series import phantom_hu, write_ct_series, write_enhanced_ct
from tests.support.dcmtk import compress, have_dcmtk
from tests.support.paths import REAL_CT


def test_order_follows_position_not_instance_number_or_arrival(tmp_path):
    hu = phantom_hu(10, 24)
    files = write_ct_series(tmp_path, hu)
    # instance numbers reversed relative to position
    for f in files:
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = 100 - ds.InstanceNumber
        ds.save_as(f)
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    rec = reconstruct_series(shuffled)
    assert np.array_equal(rec.volume.hu, hu)
    assert [i.path for i in rec.instances] == files
    assert rec.volume.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert rec.volume.origin == pytest.approx((-12.0, -10.0, -100.0))
    assert rec.volume.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert [str(d.SOPInstanceUID) for d in rec.datasets] == [i.sop_instance_uid for i in rec.instances]
    assert "PixelData" not in rec.reference_dataset


def test_descending_positions_are_ordered_along_the_normal(tmp_path):
    hu = phantom_hu(9, 16)
    files = write_ct_series(tmp_path, hu)
    for k, f in enumerate(files):  # instance k now lies 3 mm *below* instance k - 1 (feet first)
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [0, 0, -3.0 * k]
        ds.save_as(f)
    rec = reconstruct_series(files)
    assert np.array_equal(rec.volume.hu, hu[::-1])
    assert [i.path for i in rec.instances] == files[::-1]
    assert rec.volume.origin == pytest.approx((0, 0, -24.0))
    assert rec.volume.spacing[2] == pytest.approx(3.0)


def test_exact_duplicates_are_dropped(tmp_path):
    hu = phantom_hu(9, 16)
    files = write_ct_series(tmp_path / "a", hu)
    dup = pydicom.dcmread(files[4])
    dup.SOPInstanceUID = pydicom.uid.generate_uid()
    dup.file_meta.MediaStorageSOPInstanceUID = dup.SOPInstanceUID
    dup.save_as(tmp_path / "dup.dcm")
    rec = reconstruct_series(files + [tmp_path / "dup.dcm"])
    assert rec.volume.shape == (9, 16, 16)
    assert [e.reason for e in rec.excluded] == ["exact_duplicate"]


def test_different_images_at_one_position_are_rejected(tmp_path):
    hu = phantom_hu(9, 16)
    files = write_ct_series(tmp_path / "a", hu)
    other = pydicom.dcmread(files[4])
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other.PixelData = (hu[0] + 5).astype(np.int16).tobytes()
    other.save_as(tmp_path / "other.dcm")
    with pytest.raises(UnusableSeries, match="different images at one position"):
        reconstruct_series(files + [tmp_path / "other.dcm"])


def test_gap_and_uneven_spacing_are_rejected(tmp_path):
    files = write_ct_series(tmp_path, phantom_hu(12, 16))
    with pytest.raises(UnusableSeries, match="gap"):
        reconstruct_series(files[:5] + files[6:])
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.8  # 2.5 mm steps become 3.3 / 1.7
    ds.save_as(files[5])
    with pytest.raises(UnusableSeries, match="uneven spacing|gap"):
        reconstruct_series(files)


def test_small_jitter_within_tolerance_is_accepted(tmp_path):
    files = write_ct_series(tmp_path, phantom_hu(10, 16))
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.05
    ds.save_as(files[5])
    assert reconstruct_series(files).volume.spacing[2] == pytest.approx(2.5)


def test_unsigned_storage_with_slope_and_intercept(tmp_path):
    hu = (phantom_hu(9, 16) // 2) * 2  # representable with slope 2
    files = write_ct_series(tmp_path, hu, signed=False, slope=2.0, intercept=-1024.0)
    ds = pydicom.dcmread(files[0])
    assert ds.PixelRepresentation == 0 and int(ds.pixel_array.min()) >= 0
    rec = reconstruct_series(files)
    assert np.array_equal(rec.volume.hu, hu)


def test_fractional_rescale_gives_float_hu(tmp_path):
    hu = phantom_hu(9, 16).astype(np.float64)
    files = write_ct_series(tmp_path, hu, slope=0.5, intercept=-1000.25)
    rec = reconstruct_series(files)
    assert rec.volume.hu.dtype == np.float32
    expected = np.round((hu + 1000.25) / 0.5) * 0.5 - 1000.25
    assert np.allclose(rec.volume.hu, expected)


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path):
    hu = np.full((10, 40, 40), -1000, np.int16)
    hu[:, 10:30, 15:25] = 100  # a box that, in patient space, is straight along z
    tilt = 20.0
    spacing = (1.0, 1.0, 2.0)
    # on the tilted grid, a straight box drifts by row step per slice: shift the source rows accordingly
    step_rows = 2.0 / math.cos(math.radians(tilt)) * math.sin(math.radians(tilt)) / 1.0
    src = np.full_like(hu, -1000)
    for k in range(10):
        shift = int(round(k * step_rows))
        src[k, max(0, 10 - shift):max(0, 30 - shift), 15:25] = 100
    files = write_ct_series(tmp_path, src, spacing=spacing, tilt_deg=tilt)
    rec = reconstruct_series(files)
    assert rec.gantry_tilt_deg == pytest.approx(tilt, abs=0.5)
    assert rec.in_plane_shifts is not None
    direction = np.asarray(rec.volume.direction).reshape(3, 3)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    assert rec.volume.spacing[2] == pytest.approx(2.0, abs=1e-3)
    # the source drifted; after resampling the box is where slice 0 has it in every slice
    body = rec.volume.hu > -500
    rows_with_box = [np.nonzero(body[k].any(axis=1))[0] for k in range(10)]
    assert all(abs(r.min() - rows_with_box[0].min()) <= 1 for r in rows_with_box)
    back = rec.to_source_grid((rec.volume.hu > -500).astype(np.uint8))
    assert back.shape == src.shape
    assert np.mean(back.astype(bool) == (src > -500)) > 0.97


def test_several_acquisitions_overlapping_keep_the_largest(tmp_path):
    hu = phantom_hu(10, 16)
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    a = write_ct_series(tmp_path, hu, acquisition_number=1, study_uid=study, series_uid=series, name_prefix="a")
    b = write_ct_series(tmp_path, hu[2:8] + 30, acquisition_number=2, origin=(-12.0, -10.0, -95.0),
                        study_uid=study, series_uid=series, name_prefix="b")
    rec = reconstruct_series(a + b)
    assert np.array_equal(rec.volume.hu, hu)
    assert sum(e.reason == "other_acquisition" for e in rec.excluded) == 6


def test_several_acquisitions_side_by_side_are_merged(tmp_path):
    hu = phantom_hu(16, 16)
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    a = write_ct_series(tmp_path, hu[:8], acquisition_number=1, study_uid=study, series_uid=series, name_prefix="a")
    b = write_ct_series(tmp_path, hu[8:], acquisition_number=2, origin=(-12.0, -10.0, -80.0),
                        study_uid=study, series_uid=series, name_prefix="b")
    rec = reconstruct_series(b + a)
    assert np.array_equal(rec.volume.hu, hu)


def test_localizer_and_reformat_stay_out(tmp_path):
    hu = phantom_hu(10, 16)
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    files = write_ct_series(tmp_path, hu, study_uid=study, series_uid=series)
    scout = write_ct_series(tmp_path, hu[:1], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                            study_uid=study, series_uid=series, name_prefix="scout")
    mpr = write_ct_series(tmp_path, hu[:1] + 1, image_type=("DERIVED", "SECONDARY", "REFORMATTED"),
                          study_uid=study, series_uid=series, name_prefix="mpr", origin=(-12.0, -10.0, -90.0))
    rec = reconstruct_series(files + scout + mpr)
    assert rec.volume.shape[0] == 10
    assert sorted(e.reason for e in rec.excluded) == ["localizer", "not_original_primary"]


def test_too_few_slices_is_unusable(tmp_path):
    files = write_ct_series(tmp_path, phantom_hu(3, 16))
    with pytest.raises(UnusableSeries, match="too few usable slices"):
        reconstruct_series(files)


def test_enhanced_ct_multiframe_in_any_frame_order(tmp_path):
    hu = phantom_hu(10, 16) + 0
    order = [3, 0, 9, 1, 8, 2, 7, 4, 6, 5]
    path = write_enhanced_ct(tmp_path / "enh.dcm", hu, frame_order=order)
    rec = reconstruct_series([path])
    assert np.array_equal(rec.volume.hu, hu)
    assert [i.frame_number for i in rec.instances] == [order.index(k) + 1 for k in range(10)]
    assert len(rec.datasets) == 1
    assert rec.volume.spacing == pytest.approx((0.8, 0.8, 2.5))


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK not installed")
@pytest.mark.parametrize("kind", ["jpeg-lossless", "jpeg-ls", "rle"])
def test_dcmtk_compressed_series_decode_to_the_same_hu(tmp_path, kind):
    hu = np.clip(phantom_hu(8, 32), -1024, 3071)
    files = write_ct_series(tmp_path / "orig", hu, signed=False, intercept=-1024.0)
    packed = compress(files, tmp_path / kind, kind)
    ts = pydicom.dcmread(packed[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert ts.is_compressed
    assert np.array_equal(reconstruct_series(packed).volume.hu, reconstruct_series(files).volume.hu)


@pytest.mark.skipif(not REAL_CT.is_dir(), reason="real CT series not present")
def test_real_series_true_geometry(tmp_path):
    paths = sorted(REAL_CT.glob("*.dcm"))
    random.Random(0).shuffle(paths)
    rec = reconstruct_series(paths)
    v = rec.volume
    assert v.shape == (64, 512, 512)
    assert v.spacing == pytest.approx((0.841796875, 0.841796875, 5.0))
    assert v.origin[2] == pytest.approx(-439.0)
    assert rec.instances[-1].position[2] == pytest.approx(-124.0)
    assert v.hu.min() >= -1024 and 500 < v.hu.max() < 4000
    # lungs are there: a good share of the body-region voxels are air-like
    assert np.mean(v.hu[:, 200:300, 100:400] < -500) > 0.2
    img = v.to_sitk()
    assert img.GetSize() == (512, 512, 64)


@pytest.mark.skipif(not (REAL_CT.is_dir() and have_dcmtk()), reason="real CT series or DCMTK not present")
def test_real_slices_compressed_by_dcmtk_decode_identically(tmp_path):
    paths = sorted(REAL_CT.glob("*.dcm"))[:8]
    local = []
    for p in paths:
        local.append(tmp_path / "orig" / p.name)
        local[-1].parent.mkdir(exist_ok=True)
        shutil.copy(p, local[-1])
    reference = reconstruct_series(local).volume.hu
    for kind in ("jpeg-lossless", "jpeg-ls", "rle"):
        assert np.array_equal(reconstruct_series(compress(local, tmp_path / kind, kind)).volume.hu, reference), kind


def test_phantom_series_round_trips_through_reconstruction(tmp_path):
    from m2unet.phantom import make_phantom
    from m2unet.phantom_dicom import write_ct_series as write_phantom_series

    phantom = make_phantom(7, shape=(12, 128, 128))
    files = write_phantom_series(phantom, tmp_path)
    rec = reconstruct_series(files[::-1])
    v, p = rec.volume, phantom.volume
    assert v.shape == p.shape
    assert v.spacing == pytest.approx(p.spacing, abs=1e-3)
    assert v.origin == pytest.approx(p.origin, abs=1e-3)
    assert np.allclose(v.hu, p.hu, atol=1.0)


def test_jpeg2000_lossless_decodes_to_the_same_hu(tmp_path):
    hu = phantom_hu(8, 64)
    files = write_ct_series(tmp_path / "orig", hu, signed=False, intercept=-1024.0)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(pydicom.uid.JPEG2000Lossless)
        ds.save_as(tmp_path / f.name)
    rec = reconstruct_series([tmp_path / f.name for f in files])
    assert np.array_equal(rec.volume.hu, hu)
