"""Smaller break: a duplicate SOP Instance UID with different content silently replaced the first.

Now the first copy is kept, ``duplicate_sop_instance_conflict`` is logged with the UIDs (no patient
data), the sender gets warning 0xB006 with an Error Comment saying so, and the series is neither
changed nor re-opened. An identical re-send is still a plain duplicate (success, nothing changes).
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import generate_uid
from structlog.testing import capture_logs

from dicom_node.state import db
from tests.dicom_node.adversarial.conftest import c_store, edited_series, needs_dcmtk
from tests.support.dcmtk import storescu
from tests.support.node_process import InProcessSCP

CONFLICT = 0xB006


@pytest.fixture
def scp(tmp_path):
    with InProcessSCP(tmp_path, sources=("SCANNER",), series_timeout=0.3) as running:
        yield running


def _changed_pixels(ds):
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    return ds


def _other_series(ds):
    ds.SeriesInstanceUID = generate_uid()
    return ds


@needs_dcmtk
@pytest.mark.parametrize("change", [_changed_pixels, _other_series], ids=["other_pixels", "other_series"])
def test_conflicting_duplicate_keeps_the_first_copy_logs_and_warns(scp, tmp_path, change):
    files = edited_series(tmp_path / "series", n=10, size=16)
    first = pydicom.dcmread(files[3])
    uid = str(first.SeriesInstanceUID)
    assert storescu(scp.port, files).successes == 10
    queued = scp.wait_for_state(uid, ("queued",))
    stored = db.stored_instance(scp.conn, str(first.SOPInstanceUID))
    spool_file = scp.data_dir / stored.path
    kept_bytes = spool_file.read_bytes()

    other = change(pydicom.dcmread(files[3]))
    with capture_logs() as logs:
        [rsp] = c_store(scp.port, [other])
    assert rsp.Status == CONFLICT and "first kept" in rsp.ErrorComment, rsp
    assert db.stored_instance(scp.conn, str(first.SOPInstanceUID)) == stored
    assert spool_file.read_bytes() == kept_bytes
    assert db.get_series(scp.conn, uid) == queued  # not re-opened, not touched
    assert db.get_series(scp.conn, str(other.SeriesInstanceUID)) in (None, queued)
    [event] = [e for e in logs if e["event"] == "duplicate_sop_instance_conflict"]
    assert event["sop_instance_uid"] == str(first.SOPInstanceUID)
    assert event["series_uid"] == str(other.SeriesInstanceUID) and event["stored_series_uid"] == uid
    assert "Test^Synthetic" not in repr(logs) and "SYN-0001" not in repr(logs)

    # DCMTK's storescu, as a scanner would see it: a warning, not a failure
    other.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    run = storescu(scp.port, [tmp_path / "other.dcm"])
    assert run.responses and run.responses[0].startswith("Warning"), run.output[-2000:]
    assert spool_file.read_bytes() == kept_bytes


def test_identical_resend_is_a_plain_duplicate(scp, tmp_path):
    files = edited_series(tmp_path / "series", n=10, size=16)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    datasets = [pydicom.dcmread(f) for f in files]
    assert [r.Status for r in c_store(scp.port, datasets)] == [0] * 10
    queued = scp.wait_for_state(str(uid), ("queued",))
    with capture_logs() as logs:
        assert [r.Status for r in c_store(scp.port, datasets[:3])] == [0] * 3
    assert "ErrorComment" not in c_store(scp.port, datasets[:1])[0]
    assert db.get_series(scp.conn, str(uid)) == queued
    assert not [e for e in logs if e["event"] == "duplicate_sop_instance_conflict"]
