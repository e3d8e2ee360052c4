"""The pipeline on Celery workers: a real Debian redis-server, real ``m2unet-node worker`` processes,
the real node and DCMTK's storescu, Orthanc as the PACS. One scenario per fault:

- a worker killed (-9) in the middle of a job: another worker takes the series, it ends ``done``
  once, and Orthanc holds one SEG and one SR;
- Redis stopped while a series arrives and started again: nothing acknowledged is lost, the job runs;
- the node restarted while its task waits in the broker: the task is not lost, nor published twice;
- a series the job refuses (half its slices on another grid): ``failed`` with the reason, once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.state import db
from m2unet.weights import random_weights
from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.dcmtk import have_dcmtk, storescu
from tests.support.node_process import NodeProcess, json_events
from tests.support.orthanc import OrthancServer, orthanc_available
from tests.support.paths import REPO
from tests.support.polling import wait_until
from tests.support.redis_server import RedisServer, redis_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (redis_available() and orthanc_available() and have_dcmtk()), reason="needs redis-server, Orthanc and DCMTK"
    ),
]

WORKER_TIMEOUT = 4.0  # seconds without a heartbeat: a killed worker is given up quickly here


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("celery-weights") / "random.pt", seed=0)


class Worker:
    """``m2unet-node worker`` in a subprocess, reading the node's config file."""

    def __init__(self, node: NodeProcess, name: str) -> None:
        self.name = name
        self.log_path = node.folder / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.cli", "--config", str(node.config_path), "worker", "--device", "cpu",
                 "--name", name],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _config(weights: Path, redis: RedisServer, pacs: OrthancServer, visibility_timeout: float = 3600) -> dict:
    return {
        "sources": [{"ae_title": "SCANNER"}],
        "destinations": [{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}],
        "model": {"weights": str(weights), "device": "cpu"},
        "sender": {"retry_initial": 0.5, "retry_max": 1.0},
        "pipeline": {"executor": "celery", "broker_url": redis.url, "queue": "m2unet-test",
                     "visibility_timeout": visibility_timeout, "worker_timeout": WORKER_TIMEOUT},
    }


def _series(folder: Path, n: int = 12, size: int = 48, edit=None) -> tuple[list[Path], str, str]:
    files = write_ct_series(folder, phantom_hu(n=n, size=size))
    if edit is not None:
        for k, path in enumerate(files):
            ds = pydicom.dcmread(path)
            edit(ds, k)
            ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return files, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _task(node: NodeProcess, uid: str) -> dict | None:
    conn = db.connect(node.data_dir)
    try:
        with db.locked(conn):
            row = conn.execute("SELECT * FROM tasks WHERE series_instance_uid = ?", (uid,)).fetchone()
        return dict(row) if row else None
    finally:
        conn.close()


def _results_in_pacs(pacs: OrthancServer, study_uid: str) -> list[str]:
    modalities = []
    for orthanc_id in pacs.instances():
        tags = pacs.instance_tags(orthanc_id)
        if tags.get("StudyInstanceUID") == study_uid and tags.get("Modality") in ("SEG", "SR"):
            modalities.append(tags["Modality"])
    return sorted(modalities)


def _send(node: NodeProcess, files: list[Path]) -> None:
    sent = storescu(node.port, files, calling_ae="SCANNER", called_ae=node.ae_title)
    assert sent.successes == len(files), sent.output[-2000:]


@pytest.fixture()
def cluster(tmp_path, weights):
    """Redis, Orthanc and a node with the Celery executor (workers are the tests')."""
    with RedisServer(tmp_path / "redis") as redis, OrthancServer(tmp_path / "orthanc") as pacs:
        node = NodeProcess(_config(weights, redis, pacs), tmp_path)
        workers: list[Worker] = []
        try:
            yield node, redis, pacs, workers
        finally:
            for w in workers:
                w.kill()
            node.stop()


def test_a_worker_killed_mid_job_leaves_its_series_to_another_and_the_pacs_gets_one_seg_and_one_sr(cluster, tmp_path):
    node, redis, pacs, workers = cluster
    node.start()
    files, study, uid = _series(tmp_path / "series", n=40, size=96)  # a job of seconds, to kill inside
    workers.append(Worker(node, "first"))
    assert wait_until(lambda: any(w["name"] == "first" for w in node.status_json().get("workers", [])), timeout=90, step=0.5)
    _send(node, files)
    started = wait_until(lambda: (_task(node, uid) or {}).get("started_at") and _task(node, uid), timeout=120, step=0.1)
    assert started and started["worker"] == "first", workers[0].log_text()[-3000:]
    workers[0].kill()  # -9 in the middle of the job
    workers.append(Worker(node, "second"))
    final = node.wait_for_series(uid, states=("done", "failed"), timeout=240)
    assert final["state"] == "done", final
    task = _task(node, uid)
    assert task["worker"] == "second" and task["outcome"] == "done"
    assert wait_until(lambda: _results_in_pacs(pacs, study) == ["SEG", "SR"], timeout=60, step=0.5), _results_in_pacs(pacs, study)
    deliveries = wait_until(lambda: (d := node.status_json()["deliveries"])["pending"] == 0 and d, timeout=30, step=0.5)
    assert (deliveries["delivered"], deliveries["failed"]) == (3, 0)  # SEG, SR, summary: each once
    assert _results_in_pacs(pacs, study) == ["SEG", "SR"]
    status = node.status_json()
    assert {w["name"] for w in status["workers"]} == {"first", "second"}
    assert status["tasks"]["retried"] >= 1


def test_redis_stopped_while_a_series_arrives_loses_nothing_and_the_job_runs_when_it_is_back(cluster, tmp_path):
    node, redis, pacs, workers = cluster
    node.start()
    workers.append(Worker(node, "only"))
    assert wait_until(lambda: node.status_json().get("workers"), timeout=90, step=0.5)
    redis.stop()
    files, study, uid = _series(tmp_path / "series")
    _send(node, files)  # acknowledged while the broker is down
    node.wait_for_series(uid, states=("queued",), timeout=30)
    assert wait_until(lambda: any(e.get("event") == "broker_unavailable" for e in node.log_events()), timeout=30)
    assert _task(node, uid) is None  # not published, still queued in the node's database
    redis.start()
    final = node.wait_for_series(uid, states=("done", "failed"), timeout=240)
    assert final["state"] == "done", final
    assert wait_until(lambda: _results_in_pacs(pacs, study) == ["SEG", "SR"], timeout=60, step=0.5)


def test_a_node_restarted_while_its_task_waits_in_the_broker_neither_loses_nor_repeats_it(cluster, tmp_path):
    node, redis, pacs, workers = cluster
    node.start()
    files, study, uid = _series(tmp_path / "series")
    _send(node, files)
    assert wait_until(lambda: _task(node, uid), timeout=60, step=0.2)  # published, no worker yet
    assert node.stop() == 0
    node.start()
    workers.append(Worker(node, "late"))
    final = node.wait_for_series(uid, states=("done", "failed"), timeout=240)
    assert final["state"] == "done", final
    task = _task(node, uid)
    assert (task["publications"], task["deliveries"]) == (1, 1)
    assert wait_until(lambda: _results_in_pacs(pacs, study) == ["SEG", "SR"], timeout=60, step=0.5)
    assert workers[0].stop() == 0  # SIGTERM: a clean exit
    assert any(e.get("event") == "worker_stopped" for e in json_events(workers[0].log_text()))


def _other_orientation(ds, k):
    if k % 2:
        ds.ImageOrientationPatient = ["0", "1", "0", "-1", "0", "0"]


def test_a_series_the_job_refuses_is_failed_with_its_reason_and_not_retried(cluster, tmp_path):
    node, redis, pacs, workers = cluster
    node.start()
    workers.append(Worker(node, "only"))
    files, study, uid = _series(tmp_path / "series", n=40, size=16, edit=_other_orientation)
    _send(node, files)
    final = node.wait_for_series(uid, states=("done", "failed"), timeout=240)
    assert final["state"] == "failed" and "other orientation" in final["reason"], final
    time.sleep(2 * WORKER_TIMEOUT)  # time enough for any redelivery or re-publication
    task = _task(node, uid)
    assert (task["publications"], task["deliveries"], task["outcome"]) == (1, 1, "failed")
    assert node.series_status(uid)["state"] == "failed"
