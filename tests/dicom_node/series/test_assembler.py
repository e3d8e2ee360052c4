"""The assembler: completion after the quiet period (per-source override), re-opening by late
instances, selection at completion, and resuming timers after a restart."""

import time

import pydicom
import pytest

from dicom_node.state import db
from dicom_node.series.assembler import Assembler
from dicom_node.series.selection import select_frames
from dicom_node.config.model import NodeConfig, NodeSettings, Source
from dicom_node.ingest.receive import Receiver
from dicom_node.ingest.spool import Spool
from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.node_process import receive_file
from tests.support.polling import wait_until


class Setup:
    def __init__(self, tmp_path, node_timeout=30.0, fast_timeout=0.3):
        self.data_dir = tmp_path / "data"
        self.config = NodeConfig(
            node=NodeSettings(data_dir=self.data_dir, series_timeout=node_timeout),
            sources=(Source("FAST", series_timeout=fast_timeout), Source("SLOW")),
        )
        self.conn = db.connect(self.data_dir)
        self.receiver = Receiver(self.conn, Spool(self.data_dir), "1.2.3", "TEST")
        self.assembler = None

    def start_assembler(self):
        self.assembler = Assembler(self.data_dir, lambda: self.config)
        self.assembler.start()
        return self.assembler

    def send(self, files, calling_ae="FAST"):
        for f in files:
            record = receive_file(self.receiver, f, calling_ae)
            if self.assembler is not None:
                self.assembler.instance_arrived(record)
        return record.series.series_instance_uid

    def wait(self, uid, states, timeout=15.0):
        def reached():
            s = db.get_series(self.conn, uid)
            return s if s is not None and s.state in states else None

        s = wait_until(reached, timeout=timeout, step=0.02)
        if s is None:
            raise TimeoutError(db.get_series(self.conn, uid))
        return s

    def close(self):
        if self.assembler is not None:
            self.assembler.stop()
        self.conn.close()


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    yield s
    s.close()


def test_series_completes_after_the_quiet_period_with_per_source_timeout(setup, tmp_path):
    setup.start_assembler()
    fast = setup.send(write_ct_series(tmp_path / "a", phantom_hu(8, 8)), "FAST")
    slow = setup.send(write_ct_series(tmp_path / "b", phantom_hu(8, 8)), "SLOW")
    record = setup.wait(fast, ("queued",))
    assert record.instances == 8 and record.reason is None
    # the node-wide timeout (30 s) still holds the other source's series
    assert db.get_series(setup.conn, slow).state == "receiving"


def test_late_instance_reopens_and_requeues(setup, tmp_path):
    setup.start_assembler()
    files = write_ct_series(tmp_path / "a", phantom_hu(10, 8))
    uid = setup.send(files[:9])
    assert setup.wait(uid, ("queued",)).version == 1
    claimed = db.claim_queued_series(setup.conn)
    assert claimed.series_instance_uid == uid and claimed.state == "running"
    setup.send(files[9:])
    reopened = db.get_series(setup.conn, uid)
    assert (reopened.state, reopened.version, reopened.instances) == ("receiving", 2, 10)
    # the run over version 1 finishing must not close version 2
    assert db.set_series_state(setup.conn, uid, "done") is False
    record = setup.wait(uid, ("queued",))
    assert record.version == 2 and record.instances == 10


def test_too_few_usable_slices_is_skipped_with_reason(setup, tmp_path):
    setup.start_assembler()
    files = write_ct_series(tmp_path / "a", phantom_hu(5, 8))
    scout = write_ct_series(tmp_path / "a", phantom_hu(1, 8), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                            study_uid=str(pydicom.dcmread(files[0]).StudyInstanceUID),
                            series_uid=str(pydicom.dcmread(files[0]).SeriesInstanceUID), name_prefix="scout")
    uid = setup.send(files + scout)
    record = setup.wait(uid, ("skipped",))
    assert record.reason.startswith("too few usable slices: 5 < 8") and "localizer 1" in record.reason


def test_timers_resume_after_a_restart(setup, tmp_path):
    files = write_ct_series(tmp_path / "a", phantom_hu(8, 8))
    uid = setup.send(files)  # received while no assembler ran (the process died before the timer fired)
    assert db.get_series(setup.conn, uid).state == "receiving"
    setup.start_assembler()
    assert setup.wait(uid, ("queued",)).instances == 8


def test_a_series_whose_completion_keeps_failing_is_failed_after_a_bounded_number_of_tries(setup, tmp_path, monkeypatch):
    """A series selection cannot handle (here: its header check raises, quoting a value) is tried
    ``MAX_COMPLETION_FAILURES`` times, then marked failed with the reason, logged once, and left
    alone; a late instance re-opens it as usual."""
    from structlog.testing import capture_logs

    from dicom_node.series import assembler

    def broken(frames):
        raise ValueError("Invalid value for VR DA: '19011231'")

    monkeypatch.setattr(assembler, "COMPLETION_RETRY_S", 0.05)
    monkeypatch.setattr(assembler, "select_frames", broken)
    setup.start_assembler()
    files = write_ct_series(tmp_path / "a", phantom_hu(10, 8))
    with capture_logs() as logs:
        uid = setup.send(files[:9])
        record = setup.wait(uid, ("failed",))
        time.sleep(20 * assembler.COMPLETION_RETRY_S)  # long enough for further retries, were there any
    assert assembler.MAX_COMPLETION_FAILURES == 3
    assert record.reason == "completion failed 3 times: ValueError: Invalid value for VR DA: '[redacted]'"
    assert (record.version, record.instances) == (1, 9)
    failures = [e for e in logs if e["event"] == "series_completion_failed"]
    assert [e["attempt"] for e in failures] == [1, 2, 3]
    assert all(e["error"] == "ValueError" and e["exc_info"] and "19011231" not in e["detail"] for e in failures)
    [abandoned] = [e for e in logs if e["event"] == "series_completion_abandoned"]
    assert (abandoned["series_uid"], abandoned["version"], abandoned["failures"]) == (uid, 1, 3)
    assert db.get_series(setup.conn, uid).state == "failed"

    monkeypatch.setattr(assembler, "select_frames", select_frames)
    setup.send(files[9:])  # a late instance re-opens the series: a new version, completed as usual
    record = setup.wait(uid, ("queued",))
    assert (record.version, record.instances, record.reason) == (2, 10, None)
