"""Break 2: a disk that filled while results were written failed the series for good.

Before the fix ``OSError: No space left on device`` made the series ``failed``, with no retry
after space was freed nor after a restart, and ``seg.dcm.tmp`` was left behind. Now the job waits
and retries with backoff (``status`` says so), leaves no partial file, and succeeds once space
returns, a restart retrying at once.

The full disk is simulated in-process (a result file whose first write stores a few bytes and
fails with ENOSPC, as a nearly full file system does); the series arrives over a real association.
"""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pydicom
import pytest
from structlog.testing import capture_logs

from dicom_node.state import db

from dicom_node.pipeline import worker as pipeline
from dicom_node import durable
from dicom_node.results.records import result_folder
from dicom_node.ops.status import collect_status, format_status
from m2unet.predictor import Predictor
from tests.dicom_node.adversarial.conftest import edited_series, needs_dcmtk, node_config, series_uid_of
from tests.support.dcmtk import storescu
from tests.support.node_process import InProcessSCP, NodeProcess
from tests.support.polling import wait_until
from tests.support.results_data import StaticConfig
from tests.support.results_data import node_config as pipeline_config

RESULT_FILES = ["findings.json", "seg.dcm", "sr.dcm", "summary.dcm"]


class FullDisk:
    """Result files opened while the disk is full take a few bytes, then fail with ENOSPC;
    ``space_after``: the disk has room again after that many refusals (None: until told)."""

    def __init__(self, space_after: int | None = None) -> None:
        self.full = True
        self.space_after = space_after
        self.refusals = 0

    def open(self, path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)
        if self.space_after is not None and self.refusals >= self.space_after:
            self.full = False
        return _NearlyFull(handle, self) if self.full and "w" in mode else handle


class _NearlyFull:
    def __init__(self, handle, disk: FullDisk) -> None:
        self._handle, self._disk = handle, disk

    def write(self, data) -> int:
        self._handle.write(bytes(data)[:64])  # what fitted
        self._handle.flush()
        self._disk.refusals += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


@pytest.fixture(scope="module")
def predictor(weights):
    return Predictor.from_weights(weights, "cpu", bags=1)


def _received_series(tmp_path: Path) -> tuple[Path, str, str]:
    """A small series C-STOREd to the node's receiving half: (data_dir, study UID, series UID)."""
    files = edited_series(tmp_path / "series", n=10, size=32)
    uid = series_uid_of(files[0])
    with InProcessSCP(tmp_path, sources=("CT_1",), series_timeout=0.3) as scp:
        assert storescu(scp.port, files, calling_ae="CT_1", called_ae=scp.ae_title).successes == 10
        scp.wait_for_state(uid, ("queued",))
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return scp.data_dir, study, uid


def _partial_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.name.endswith((".tmp", ".part"))]


def _series(data_dir: Path, uid: str) -> db.SeriesRecord:
    conn = db.connect(data_dir)
    try:
        return db.get_series(conn, uid)
    finally:
        conn.close()


@needs_dcmtk
def test_disk_full_while_writing_results_waits_with_backoff_and_succeeds_once_space_returns(
    tmp_path, monkeypatch, predictor
):
    data_dir, study, uid = _received_series(tmp_path)
    disk = FullDisk(space_after=2)
    monkeypatch.setattr(durable, "open", disk.open, raising=False)
    monkeypatch.setattr(pipeline, "RESOURCE_RETRY_INITIAL_S", 0.5)
    monkeypatch.setattr(pipeline, "RESOURCE_RETRY_MAX_S", 1.0)
    worker = pipeline.PipelineWorker(StaticConfig(pipeline_config(data_dir)), predictor=predictor)
    with capture_logs() as logs:
        worker.start()
        try:
            assert wait_until(lambda: _series(data_dir, uid).state in ("done", "failed"), timeout=180, step=0.1)
        finally:
            worker.stop()
    assert _series(data_dir, uid).state == "done", _series(data_dir, uid)
    waits = [e for e in logs if e["event"] == "job_waiting"]
    assert [(e["attempt"], e["retry_in"], e["what"], e["stage"]) for e in waits] == [
        (1, 0.5, "disk full (ENOSPC)", "writing results"),
        (2, 1.0, "disk full (ENOSPC)", "writing results"),
    ]
    assert not [e for e in logs if e["event"] == "job_failed"]
    folder = result_folder(data_dir, study, uid, 1)
    assert sorted(p.name for p in folder.iterdir()) == RESULT_FILES
    for name in RESULT_FILES[1:]:
        assert pydicom.dcmread(folder / name).SOPInstanceUID
    assert _partial_files(data_dir) == []


@needs_dcmtk
def test_disk_full_is_stated_in_status_and_a_restart_retries_at_once(tmp_path, monkeypatch, predictor, weights):
    data_dir, study, uid = _received_series(tmp_path)
    disk = FullDisk()
    monkeypatch.setattr(durable, "open", disk.open, raising=False)
    monkeypatch.setattr(pipeline, "RESOURCE_RETRY_INITIAL_S", 3600.0)  # without a restart: an hour
    monkeypatch.setattr(pipeline, "RESOURCE_RETRY_MAX_S", 7200.0)
    worker = pipeline.PipelineWorker(StaticConfig(pipeline_config(data_dir)), predictor=predictor)
    worker.start()
    try:
        assert wait_until(lambda: disk.refusals and _series(data_dir, uid).state == "queued", timeout=180, step=0.1)
    finally:
        worker.stop()
    assert disk.refusals == 1  # not retried before its time
    waiting = _series(data_dir, uid)
    assert waiting.reason == "waiting: disk full (ENOSPC) while writing results, retry in 60 min (attempt 1)"
    assert _partial_files(data_dir) == []

    conn = db.connect(data_dir)
    try:
        status = collect_status(conn)
    finally:
        conn.close()
    [entry] = status["series"]
    assert entry["state"] == "queued" and entry["retry_at"] is not None
    assert "reason: waiting: disk full (ENOSPC) while writing results, retry in 60 min" in format_status(status)

    # space is freed, the node restarts (a real `m2unet-node run` on the same data_dir); a killed
    # process had left a temporary file behind too
    monkeypatch.undo()
    stray = result_folder(data_dir, study, uid, 1) / "seg.dcm.tmp"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"torn")
    config = node_config(weights, node={"data_dir": str(data_dir), "log_format": "json"})
    with NodeProcess(config, tmp_path) as node:
        final = node.wait_for_series(uid, states=("done", "failed"), timeout=180)
        assert node.stop() == 0
    assert final["state"] == "done", final
    assert final["retry_at"] is None
    assert sorted(p.name for p in result_folder(data_dir, study, uid, 1).iterdir()) == RESULT_FILES
    assert _partial_files(data_dir) == []
