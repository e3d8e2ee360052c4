"""Pipeline jobs on small phantom series with random-init weights: results, restarts, versions."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pydicom
import pytest

from dicom_node.state import db

from dicom_node.delivery import outbox
from dicom_node.config.model import ModelSettings
from dicom_node.pipeline.worker import PipelineWorker, run_job
from dicom_node.results.records import result_folder
from m2unet.predictor import Predictor
from m2unet.weights import random_weights
from tests.support.results_data import (
    StaticConfig,
    dciodvfy_errors,
    destination,
    node_config,
    phantom_series,
    queue_series,
)
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("weights") / "random.pt", seed=0)


class MemoPredictor:
    """The real predictor, asked once per distinct volume: predictions are deterministic (same
    volume, same seed, same answer), and the jobs below re-run the same series many times."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.sha256 = predictor.sha256
        self.device = predictor.device
        self.calls = 0
        self._memo = {}

    def predict(self, volume, seed=None):
        key = (volume.hu.tobytes(), volume.spacing, volume.origin, seed)
        if key not in self._memo:
            self.calls += 1
            self._memo[key] = self.predictor.predict(volume, seed=seed)
        return self._memo[key]


@pytest.fixture(scope="module")
def predictor(weights):
    return MemoPredictor(Predictor.from_weights(weights, "cpu", bags=1))


@pytest.fixture(scope="module")
def series_paths(tmp_path_factory):
    return phantom_series(tmp_path_factory.mktemp("phantom"), seed=2, slices=16, size=128)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_job_without_destination_keeps_results_under_data_dir(predictor, series_paths, data_dir):
    conn = db.connect(data_dir)
    record = queue_series(conn, series_paths)
    claimed = db.claim_queued_series(conn)
    config = node_config(data_dir)
    assert run_job(conn, claimed, predictor, config) == "done"
    assert db.get_series(conn, record.series_instance_uid).state == "done"
    folder = result_folder(data_dir, record.study_instance_uid, record.series_instance_uid, 1)
    assert sorted(p.name for p in folder.iterdir()) == ["findings.json", "seg.dcm", "sr.dcm", "summary.dcm"]
    for name in ("seg.dcm", "sr.dcm", "summary.dcm"):
        assert dciodvfy_errors(folder / name) == [], name
    seg = pydicom.dcmread(folder / "seg.dcm", stop_before_pixels=True)
    assert seg.StudyInstanceUID == record.study_instance_uid
    findings = json.loads((folder / "findings.json").read_text())
    assert findings["severity"] in ("severe", "non-severe")
    assert set(findings["lobes"]) == {"right_upper", "right_middle", "right_lower", "left_upper", "left_lower"}
    summary = outbox.delivery_summary(conn)
    assert summary["pending"] == 0
    assert summary["kept"][0]["folder"] == str(folder)
    conn.close()


def test_rerun_after_crash_rebuilds_identical_objects_and_queues_once(predictor, series_paths, data_dir):
    conn = db.connect(data_dir)
    record = queue_series(conn, series_paths)
    config = node_config(data_dir, [destination("pacs", 1)])
    assert run_job(conn, db.claim_queued_series(conn), predictor, config) == "done"
    folder = result_folder(data_dir, record.study_instance_uid, record.series_instance_uid, 1)
    first = _files(folder)
    # the process died after queueing but before anyone noticed: ingest re-queues at start-up
    db.set_series_state(conn, record.series_instance_uid, "running")
    assert db.requeue_running(conn) == 1
    # real elapsed time, into the next whole second (creation times are whole seconds, and
    # run_job and highdicom read the wall clock themselves): a later clock must not change the objects
    time.sleep(1.1)
    assert run_job(conn, db.claim_queued_series(conn), predictor, config) == "done"
    assert _files(folder) == first
    summary = outbox.delivery_summary(conn)
    assert summary["pending"] == 3  # SEG, SR, summary: once each
    assert {i["destination"] for i in summary["items"]} == {"pacs"}
    conn.close()


def test_resent_series_gets_a_new_version_with_new_uids(predictor, series_paths, data_dir, tmp_path):
    conn = db.connect(data_dir)
    record = queue_series(conn, series_paths[:-1])
    config = node_config(data_dir)
    assert run_job(conn, db.claim_queued_series(conn), predictor, config) == "done"
    again = queue_series(conn, series_paths[-1:])  # the missing slice arrives late: version 2
    assert again.version == 2
    assert run_job(conn, db.claim_queued_series(conn), predictor, config) == "done"
    v1 = result_folder(data_dir, record.study_instance_uid, record.series_instance_uid, 1)
    v2 = result_folder(data_dir, record.study_instance_uid, record.series_instance_uid, 2)
    for name in ("seg.dcm", "sr.dcm"):
        old = pydicom.dcmread(v1 / name, stop_before_pixels=True)
        new = pydicom.dcmread(v2 / name, stop_before_pixels=True)
        assert new.SOPInstanceUID != old.SOPInstanceUID
        assert new.SeriesInstanceUID != old.SeriesInstanceUID
        assert new.SeriesNumber > old.SeriesNumber
    seg2 = pydicom.dcmread(v2 / "seg.dcm", stop_before_pixels=True)
    referenced = [i for s in seg2.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence]
    assert len(referenced) == len(series_paths)
    conn.close()


def test_series_reopened_during_the_job_is_left_to_its_new_version(predictor, series_paths, data_dir):
    conn = db.connect(data_dir)
    queue_series(conn, series_paths[:-1])
    claimed = db.claim_queued_series(conn)
    queue_series(conn, series_paths[-1:])  # a late instance re-opens it while it is running
    assert run_job(conn, claimed, predictor, node_config(data_dir, [destination("pacs", 1)])) == "stale"
    assert db.get_series(conn, claimed.series_instance_uid).state == "queued"
    assert outbox.delivery_summary(conn)["pending"] == 0
    conn.close()


def test_unusable_series_fails_with_reason(predictor, series_paths, data_dir):
    conn = db.connect(data_dir)
    record = queue_series(conn, series_paths[:2])
    assert run_job(conn, db.claim_queued_series(conn), predictor, node_config(data_dir)) == "failed"
    failed = db.get_series(conn, record.series_instance_uid)
    assert failed.state == "failed" and failed.reason
    conn.close()


def test_worker_thread_processes_queued_series(predictor, series_paths, data_dir):
    conn = db.connect(data_dir)
    record = queue_series(conn, series_paths)
    worker = PipelineWorker(StaticConfig(node_config(data_dir)), predictor=predictor)
    worker.start()
    try:
        wait_until(lambda: db.get_series(conn, record.series_instance_uid).state == "done", timeout=120, step=0.2)
    finally:
        worker.stop()
    assert db.get_series(conn, record.series_instance_uid).state == "done"
    conn.close()


def test_worker_waits_while_weights_are_unusable(series_paths, data_dir, tmp_path):
    from structlog.testing import capture_logs

    conn = db.connect(data_dir)
    record = queue_series(conn, series_paths)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not weights")
    config = replace(node_config(data_dir), model=ModelSettings(weights=bad, device="cpu"))
    worker = PipelineWorker(StaticConfig(config))
    with capture_logs() as logs:
        worker.start()
        try:  # it has tried the weights and is waiting to try again: it claims nothing meanwhile
            assert wait_until(lambda: any(e["event"] == "weights_unusable" for e in logs), timeout=30)
        finally:
            worker.stop()
    assert db.get_series(conn, record.series_instance_uid).state == "queued"  # not claimed, not failed
    conn.close()


def test_quality_check_reaches_findings_status_and_log(predictor, series_paths, data_dir):
    from structlog.testing import capture_logs

    from dicom_node.ops.status import collect_status, format_status

    conn = db.connect(data_dir)
    record = queue_series(conn, series_paths)
    with capture_logs() as logs:
        assert run_job(conn, db.claim_queued_series(conn), predictor, node_config(data_dir)) == "done"
    folder = result_folder(data_dir, record.study_instance_uid, record.series_instance_uid, 1)
    qc = json.loads((folder / "findings.json").read_text())["qc"]
    assert set(qc) == {"passed", "checks"}
    failed = [c["name"] for c in qc["checks"] if not c["passed"]]
    done = next(e for e in logs if e["event"] == "job_done")
    assert done["qc_passed"] is qc["passed"] and done["qc_failed"] == failed  # names only, no details
    status = collect_status(conn)
    series = next(s for s in status["series"] if s["series_instance_uid"] == record.series_instance_uid)
    assert series["qc"] == {"passed": qc["passed"], "failed": failed}
    assert ("quality check: passed" if qc["passed"] else "quality check: FAILED (") in format_status(status)
    conn.close()
