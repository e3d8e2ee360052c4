"""The assembler: completion after the quiet period (per-source override), re-opening by late
instances, selection at completion, and resuming timers after a restart."""

import time

import pydicom
import pytest

from dicom_node.state import db
from dicom_node.series.assembler import Assembler
from dicom_node.config.model import NodeConfig, NodeSettings, Source
from dicom_node.ingest.receive import Receiver
from dicom_node.ingest.spool import Spool
from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.node_process import receive_file


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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = db.get_series(self.conn, uid)
            if s is not None and s.state in states:
                return s
            time.sleep(0.02)
        raise TimeoutError(db.get_series(self.conn, uid))

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
