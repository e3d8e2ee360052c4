"""``m2unet-node process``: a phantom and the real series in shared, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pydicom
import pytest

from dicom_node.pipeline.offline import process_series
from m2unet.weights import random_weights
from tests.support.paths import REAL_CT, REPO
from tests.support.results_data import SEGIMAGE2ITKIMAGE, TID1500READER, dciodvfy_errors, phantom_series, run_tool

LOBE_KEYS = {"right_upper", "right_middle", "right_lower", "left_upper", "left_lower"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("weights") / "random.pt", seed=0)


def _cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _check_output(result, out_dir):
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["severity"] in ("severe", "non-severe")
    assert 0.0 <= summary["probability_severe"] <= 1.0
    assert set(summary["lobes"]) == LOBE_KEYS
    for lobe in summary["lobes"].values():
        assert lobe["volume_ml"] >= 0 and 0 <= lobe["opacity_percent"] <= 100 and 0 <= lobe["severity_score"] <= 5
    assert 0 <= summary["total_score"] <= 25
    assert summary["seconds"] > 0
    qc = summary["qc"]  # the quality check (INTERFACES.md)
    assert set(qc) == {"passed", "checks"} and isinstance(qc["passed"], bool)
    assert qc["passed"] == all(c["passed"] for c in qc["checks"])
    assert {c["name"] for c in qc["checks"]} >= {"lung_coverage", "slice_thickness", "lobe_shares", "severity_consistency"}
    assert all(set(c) == {"name", "passed", "detail"} and c["detail"] for c in qc["checks"])
    for name in ("seg.dcm", "sr.dcm", "summary.dcm"):
        assert (out_dir / name).exists()
        assert dciodvfy_errors(out_dir / name) == [], name
    return summary


def test_process_through_cli_readable_by_dcmqi(weights, tmp_path):
    """The real series in shared (a phantom when it is absent) through ``m2unet-node process``."""
    if REAL_CT.exists():
        folder = REAL_CT
    else:
        folder = phantom_series(tmp_path / "series", seed=4, slices=16, size=128)[0].parent
    out = tmp_path / "out"
    result = _cli("process", folder, "--out", out, "--weights", weights, "--device", "cpu", cwd=tmp_path)
    summary = _check_output(result, out)
    assert summary["files"]["seg"] == str(out / "seg.dcm")
    source = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
    assert summary["series_instance_uid"] == source.SeriesInstanceUID
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    segments = run_tool([SEGIMAGE2ITKIMAGE, "--inputDICOM", out / "seg.dcm", "--outputDirectory", tmp_path, "--outputType", "nrrd"])
    assert segments.returncode == 0, segments.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert sorted(a["labelID"] for group in meta["segmentAttributes"] for a in group) == [1, 2, 3, 4, 5]
    report = run_tool([TID1500READER, "--inputDICOM", out / "sr.dcm", "--outputMetadata", tmp_path / "sr.json"])
    assert report.returncode == 0, report.stderr
    assert len(json.loads((tmp_path / "sr.json").read_text())["Measurements"]) == 6


def test_bad_folders_are_refused_with_a_message(tmp_path, capsys):
    assert process_series(tmp_path / "absent", tmp_path / "out") == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert process_series(tmp_path / "empty", tmp_path / "out") == 2
    assert "no DICOM file" in capsys.readouterr().err


def test_unusable_series_is_refused_with_a_message(weights, tmp_path, capsys):
    series = phantom_series(tmp_path / "series", seed=4, slices=16, size=128)
    for path in series[1:]:
        if path != series[8]:
            path.unlink()
    assert process_series(series[0].parent, tmp_path / "out", weights=weights, device="cpu") == 2
    assert capsys.readouterr().err.startswith("process: ")
    assert not (tmp_path / "out" / "seg.dcm").exists()
