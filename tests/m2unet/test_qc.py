"""The quality check: each check fires on a crafted case and not on a clean one (small synthetic maps)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from m2unet.labels import Lobe
from m2unet.qc import QualityCheck, load_reference, quality_check, share_limits
from m2unet.quantify import quantify
from m2unet.volume import Volume

ROOT = Path(__file__).resolve().parents[2]
SPACING = (6.0, 6.0, 5.0)  # x, y, z mm


def clean_lobe_map(shape=(40, 48, 48)) -> np.ndarray:
    """Two box lungs, z index 0 at the feet (identity direction: z grows towards the head), x index
    0 on the patient's right; upper lobes on top, middle lobe in front (small y) of the lower lobe."""
    m = np.zeros(shape, np.uint8)
    z0, z1, y0, y1 = 4, 36, 10, 38
    right, left = slice(6, 22), slice(26, 42)
    m[z0:z1, y0:y1, right] = Lobe.RIGHT_LOWER
    m[22:z1, y0:y1, right] = Lobe.RIGHT_UPPER
    m[12:22, y0:24, right] = Lobe.RIGHT_MIDDLE
    m[z0:z1, y0:y1, left] = Lobe.LEFT_LOWER
    m[18:z1, y0:y1, left] = Lobe.LEFT_UPPER
    return m


def volume_for(lobe_map, spacing=SPACING, direction=None) -> Volume:
    hu = np.full(lobe_map.shape, -1000, np.int16)
    hu[:, 4:-4, 3:-3] = 40  # body
    hu[lobe_map > 0] = -850
    kwargs = {"direction": direction} if direction is not None else {}
    return Volume(hu=hu, spacing=spacing, origin=(-150.0, -150.0, -100.0), **kwargs)


def run(lobe_map, severity="non-severe", volume=None, total_score=None, **kwargs) -> QualityCheck:
    volume = volume or volume_for(lobe_map)
    q = quantify(volume, lobe_map)
    if total_score is not None:
        q = replace(q, total_score=total_score)
    return quality_check(volume, lobe_map, q, severity, 0.2 if severity == "non-severe" else 0.8, **kwargs)


def failed(qc: QualityCheck) -> set[str]:
    return {c.name for c in qc.checks if not c.passed}


def test_clean_case_passes_every_check():
    qc = run(clean_lobe_map(), slice_thickness_mm=5.0)
    assert qc.passed, qc.to_dict()
    assert [c.name for c in qc.checks] == [
        "lung_coverage",
        "slice_thickness",
        "lung_volume",
        "lobe_shares",
        "lobe_order",
        "severity_consistency",
    ]


def test_to_dict_is_the_interfaces_shape():
    d = run(clean_lobe_map()).to_dict()
    assert set(d) == {"passed", "checks"}
    assert all(set(c) == {"name", "passed", "detail"} for c in d["checks"])
    json.dumps(d)
    assert QualityCheck.from_dict(d).to_dict() == d


def test_lung_on_the_first_slice_fails_coverage_naming_the_base():
    m = clean_lobe_map()
    m[0:4] = m[4]  # lower lobes down to the first slice (the feet end)
    qc = run(m)
    assert failed(qc) == {"lung_coverage"}
    assert "base" in qc.check("lung_coverage").detail


def test_lung_on_the_last_slice_names_the_apex_and_follows_the_direction():
    m = clean_lobe_map()
    m[36:] = m[35]
    assert "apex" in run(m).check("lung_coverage").detail
    # the same array with z pointing to the feet: the last slice is now the base
    flipped = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    detail = run(m, volume=volume_for(m, direction=flipped)).check("lung_coverage").detail
    assert "base" in detail


def test_lung_cut_by_the_image_edge_fails_coverage():
    m = clean_lobe_map()
    m[4:36, 10:38, 0:6] = Lobe.RIGHT_LOWER  # right lung runs into the left image edge
    qc = run(m)
    assert "lung_coverage" in failed(qc)
    assert "image edge" in qc.check("lung_coverage").detail


def test_thick_slices_fail_and_unknown_thickness_uses_the_spacing():
    assert failed(run(clean_lobe_map(), slice_thickness_mm=8.0)) == {"slice_thickness"}
    assert "8 mm" in run(clean_lobe_map(), slice_thickness_mm=8.0).check("slice_thickness").detail
    check = run(clean_lobe_map(), slice_thickness_mm=None).check("slice_thickness")
    assert check.passed and "not given" in check.detail
    assert run(clean_lobe_map(), slice_thickness_mm=5.0).check("slice_thickness").passed


def test_implausible_lung_volume_fails():
    m = clean_lobe_map()
    small = volume_for(m, spacing=(3.0, 3.0, 2.5))  # an eighth of the volume: 0.6 L
    qc = run(m, volume=small)
    assert failed(qc) == {"lung_volume"}
    assert "L" in qc.check("lung_volume").detail


def test_lobe_share_outside_the_real_range_fails_naming_the_lobe():
    m = clean_lobe_map()
    m[(m == Lobe.RIGHT_UPPER) & (np.arange(48)[None, None, :] < 20)] = Lobe.RIGHT_LOWER  # RUL painted as RLL
    qc = run(m)
    assert "lobe_shares" in failed(qc)
    assert "right upper lobe" in qc.check("lobe_shares").detail


def test_missing_lobe_fails_lobe_shares():
    m = clean_lobe_map()
    m[m == Lobe.RIGHT_MIDDLE] = Lobe.RIGHT_LOWER
    assert "right middle lobe 0.0 %" in run(m).check("lobe_shares").detail


def test_lobes_mirrored_left_right_fail_lobe_order():
    m = clean_lobe_map()[:, :, ::-1].copy()  # right lobes now on the patient's left
    qc = run(m)
    assert failed(qc) == {"lobe_order"}
    assert "sides swapped" in qc.check("lobe_order").detail


def test_upside_down_lobes_fail_lobe_order():
    m = clean_lobe_map()
    flipped = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # slice index grows towards the feet
    qc = run(m, volume=volume_for(m, direction=flipped))
    assert "lobe_order" in failed(qc)
    assert "not above" in qc.check("lobe_order").detail


def test_middle_lobe_behind_lower_lobe_fails_lobe_order():
    m = clean_lobe_map()[:, ::-1, :].copy()  # front and back swapped
    qc = run(m)
    assert "in front" in qc.check("lobe_order").detail


def test_severe_call_with_low_score_and_non_severe_with_high_score_fail():
    low = run(clean_lobe_map(), severity="severe", total_score=5)
    assert failed(low) == {"severity_consistency"}
    assert "5/25" in low.check("severity_consistency").detail
    high = run(clean_lobe_map(), severity="non-severe", total_score=19)
    assert failed(high) == {"severity_consistency"}
    assert "19/25" in high.check("severity_consistency").detail
    assert run(clean_lobe_map(), severity="severe", total_score=18).passed
    assert run(clean_lobe_map(), severity="non-severe", total_score=12).passed


def test_excluded_instances_appear_only_when_some_were():
    assert run(clean_lobe_map(), excluded_instances=0).check("excluded_instances") is None
    qc = run(clean_lobe_map(), excluded_instances=3, total_instances=43, excluded_reasons={"other_acquisition": 3})
    assert failed(qc) == {"excluded_instances"}
    assert "3 of 43" in qc.check("excluded_instances").detail


def test_reference_holds_the_40_annotations_and_their_medians_pass():
    ref = load_reference()
    assert ref["annotations"] == 40
    assert "CC BY-NC-SA" in ref["licence"]
    limits = share_limits(ref)
    for lobe in Lobe:
        stats = ref["lobe_share"][lobe.name.lower()]
        assert limits[lobe][0] < stats["min"] <= stats["median"] <= stats["max"] < limits[lobe][1]
    assert sum(ref["lobe_share"][lobe.name.lower()]["median"] for lobe in Lobe) == pytest.approx(1.0, abs=0.05)


def test_reference_is_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["m2unet"]
    assert "qc_reference.json" in data
    assert (ROOT / "m2unet" / "qc_reference.json").is_file()


def test_one_right_lobe_on_the_left_is_named():
    m = clean_lobe_map()
    m[m == Lobe.RIGHT_MIDDLE] = Lobe.RIGHT_LOWER
    m[12:22, 10:24, 26:42] = Lobe.RIGHT_MIDDLE  # middle lobe drawn in the left lung
    assert "right middle lobe not on the patient's right" in run(m).check("lobe_order").detail
