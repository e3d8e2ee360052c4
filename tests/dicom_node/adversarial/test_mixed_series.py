"""Break 4: a mixed series was analysed on half its slices and reported ``done`` with no reason.

Before the fix 20 of 40 slices on another image grid (another orientation or pixel spacing) were
dropped as ``other_image_grid``, the lobes measured on half a chest, and ``status`` said ``done``;
a single odd slice (a 128 x 128 scout inside a series) left no trace, or was reported as a "gap".
Now more than 10 % dropped fails the series with that reason, and fewer are processed with the
exclusion named in ``status`` and ``findings.json``.
"""

from __future__ import annotations

import json
import re

import pydicom
import pytest

from dicom_node.results.records import result_folder
from tests.dicom_node.adversarial.conftest import edited_series, needs_dcmtk, node_config, series_uid_of
from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.dcmtk import storescu
from tests.support.node_process import NodeProcess

FINAL = ("done", "failed", "skipped")
TOO_MANY = re.compile(r"20 of 40 instances excluded \(more than 10 ?%\)")


@pytest.fixture(scope="module")
def node(tmp_path_factory, weights):
    """One running node for the module's series (each test sends its own)."""
    with NodeProcess(node_config(weights), tmp_path_factory.mktemp("mixed-node")) as running:
        yield running


def _other_orientation(ds, k):
    if k % 2:  # rows along y, columns along -x: still axial, another grid
        ds.ImageOrientationPatient = ["0", "1", "0", "-1", "0", "0"]


def _other_spacing(ds, k):
    if k % 2:
        ds.PixelSpacing = ["0.7", "0.7"]


@needs_dcmtk
@pytest.mark.parametrize("edit,difference", [(_other_orientation, "other orientation"), (_other_spacing, "other pixel spacing")])
def test_half_the_slices_on_another_grid_fails_the_series_with_the_reason(node, tmp_path, edit, difference):
    files = edited_series(tmp_path / "series", edit, n=40, size=16)
    uid = series_uid_of(files[0])
    sent = storescu(node.port, files, calling_ae="CT_1", called_ae=node.ae_title)
    assert sent.successes == 40, sent.output[-2000:]
    final = node.wait_for_series(uid, states=FINAL, timeout=120)
    assert final["state"] == "failed", final
    assert TOO_MANY.search(final["reason"]) and difference in final["reason"], final["reason"]
    text = node.run_cli("status").stdout
    assert TOO_MANY.search(text), text
    failed = [e for e in node.log_events() if e.get("event") == "job_failed" and e.get("series_uid") == uid]
    assert failed and TOO_MANY.search(failed[-1]["reason"])


@needs_dcmtk
def test_one_scout_sized_slice_is_named_as_excluded_not_as_a_gap(node, tmp_path):
    files = edited_series(tmp_path / "series", n=12, size=32)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    scout = write_ct_series(
        tmp_path / "scout",
        phantom_hu(n=1, size=128),
        spacing=(0.2, 0.2, 2.5),
        origin=(-12.0, -10.0, -100.0 + 5 * 2.5 + 1.0),  # inside the series' range, between two slices
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        first_instance_number=100,
        name_prefix="scout",
    )
    uid = str(first.SeriesInstanceUID)
    sent = storescu(node.port, files[:6] + scout + files[6:], calling_ae="CT_1", called_ae=node.ae_title)
    assert sent.successes == 13, sent.output[-2000:]
    final = node.wait_for_series(uid, states=FINAL, timeout=180)
    assert final["state"] == "done", final
    assert final["reason"] == "1 instance excluded: other image size 128x128", final
    assert "gap" not in final["reason"]
    assert "1 instance excluded: other image size 128x128" in node.run_cli("status").stdout
    folder = result_folder(node.data_dir, str(first.StudyInstanceUID), uid, 1)
    findings = json.loads((folder / "findings.json").read_text())
    assert findings["excluded_instances"] == {
        "count": 1,
        "of": 13,
        "reasons": {"other_image_grid": 1},
        "details": {"other image size 128x128": 1},
    }
    assert "excluded_instances" in [c["name"] for c in findings["qc"]["checks"] if not c["passed"]]
