"""End to end: DCMTK storescu (the scanner) -> ``m2unet-node run`` -> Orthanc (the PACS).

Random-init weights (the objects, not the answers, are under test), small phantom series, and the
real series of ``shared/data/real-ct``. Covers: SEG, SR and summary in the source's study in
Orthanc, valid for dciodvfy and readable by dcmqi; the PACS down while results are produced and
back later; kill -9 of the node while it processes, then a restart: everything arrives once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicom_node.state import db
from dicom_node.results.records import result_folder
from m2unet.weights import random_weights
from tests.support.dcmtk import have_dcmtk, storescu
from tests.support.node_process import NodeProcess
from tests.support.orthanc import OrthancServer, orthanc_available
from tests.support.paths import REAL_CT
from tests.support.polling import wait_until
from tests.support.results_data import (
    SEGIMAGE2ITKIMAGE,
    TID1500READER,
    dciodvfy_errors,
    phantom_series,
    run_tool,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (orthanc_available() and have_dcmtk()), reason="needs Orthanc and DCMTK"),
]

RESULT_MODALITIES = {"SEG", "SR", "OT"}  # OT: the summary Secondary Capture


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("weights") / "random.pt", seed=0)


def node_config(weights: Path, pacs: OrthancServer, **sender) -> dict:
    return {
        "sources": [{"ae_title": "SCANNER"}],
        "destinations": [{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}],
        "model": {"weights": str(weights), "device": "cpu"},
        "sender": {"retry_initial": 0.5, "retry_max": 1.0, **sender},
    }


def results_in_pacs(pacs: OrthancServer, study_uid: str) -> dict[str, dict]:
    """``{SOPInstanceUID: tags}`` of the result objects Orthanc holds in ``study_uid``."""
    found = {}
    for orthanc_id in pacs.instances():
        tags = pacs.instance_tags(orthanc_id)
        if tags.get("StudyInstanceUID") == study_uid and tags.get("Modality") in RESULT_MODALITIES:
            found[tags["SOPInstanceUID"]] = {"id": orthanc_id, **tags}
    return found


def wait_for(predicate, timeout: float, what: str, node: NodeProcess | None = None):
    def check():
        value = predicate()
        if not value and node is not None and node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"node exited while waiting for {what}:\n{node.log_text()[-3000:]}")
        return value

    value = wait_until(check, timeout=timeout, step=0.25)
    if value:
        return value
    tail = node.log_text()[-3000:] if node is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def series_uids(paths: list[Path]) -> tuple[str, str]:
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def check_objects(pacs: OrthancServer, found: dict[str, dict], folder: Path) -> None:
    by_modality = {tags["Modality"]: tags for tags in found.values()}
    assert set(by_modality) == RESULT_MODALITIES
    seg = pacs.download(by_modality["SEG"]["id"], folder / "seg.dcm")
    sr = pacs.download(by_modality["SR"]["id"], folder / "sr.dcm")
    assert dciodvfy_errors(seg) == []
    assert dciodvfy_errors(sr) == []
    out = folder / "dcmqi"
    out.mkdir()
    result = run_tool([SEGIMAGE2ITKIMAGE, "--inputDICOM", seg, "--outputDirectory", out, "--outputType", "nrrd"])
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(a["labelID"] for group in meta["segmentAttributes"] for a in group) == [1, 2, 3, 4, 5]
    result = run_tool([TID1500READER, "--inputDICOM", sr, "--outputMetadata", out / "sr.json"])
    assert result.returncode == 0, result.stderr
    groups = json.loads((out / "sr.json").read_text())["Measurements"]
    assert [g.get("ReferencedSegment") for g in groups[1:]] == [1, 2, 3, 4, 5]


def test_pacs_down_while_results_are_made_then_everything_arrives_once(weights, tmp_path):
    """A phantom through the node while Orthanc is down; Orthanc comes back: SEG, SR and summary
    arrive once, in the source's study, valid for dciodvfy and dcmqi."""
    series = phantom_series(tmp_path / "phantom", seed=5, slices=16, size=128)
    study, series_uid = series_uids(series)
    pacs = OrthancServer(tmp_path / "orthanc")  # down
    try:
        with NodeProcess(node_config(weights, pacs), tmp_path) as node:
            sent = storescu(node.port, series, calling_ae="SCANNER", called_ae=node.ae_title)
            assert sent.successes == len(series), sent.output
            node.wait_for_series(series_uid, states=("done",), timeout=240)
            deliveries = wait_for(
                lambda: (d := node.status_json()["deliveries"]) and d["items"] and min(i["attempts"] for i in d["items"]) >= 2 and d,
                60,
                "failed attempts",
                node,
            )
            assert deliveries["pending"] == 3 and deliveries["delivered"] == 0
            assert all(item["last_error"] for item in deliveries["items"])
            pacs.start()
            wait_for(lambda: node.status_json()["deliveries"]["delivered"] == 3, 60, "delivery", node)
            found = results_in_pacs(pacs, study)
            assert pacs.statistics()["CountInstances"] == 3  # each object once
            folder = tmp_path / "received"
            folder.mkdir()
            check_objects(pacs, found, folder)
            assert node.status_json()["deliveries"]["pending"] == 0
    finally:
        pacs.stop()


def test_kill_during_processing_then_restart_delivers_once(weights, tmp_path):
    """The real series in shared (a phantom when it is absent) through the node; kill -9 while the
    job runs; restart: the results arrive once, identical to what the node kept."""
    if REAL_CT.exists():
        series = sorted(REAL_CT.glob("*.dcm"))
    else:
        series = phantom_series(tmp_path / "phantom", seed=7, slices=32, size=256)
    study, series_uid = series_uids(series)
    with OrthancServer(tmp_path / "orthanc") as pacs:
        node = NodeProcess(node_config(weights, pacs), tmp_path).start()
        try:
            sent = storescu(node.port, series, calling_ae="SCANNER", called_ae=node.ae_title)
            assert sent.successes == len(series), sent.output
            node.wait_for_series(series_uid, states=("running",), timeout=60)
            # the job has begun (its start time, stamped on every object, is recorded): kill it now
            wait_for(lambda: any(e.get("event") == "job_started" for e in node.log_events()), 60, "the job to start", node)
            node.kill()
            conn = db.connect(node.data_dir)
            try:
                assert db.get_series(conn, series_uid).state == "running"  # killed mid-job indeed
            finally:
                conn.close()
            assert results_in_pacs(pacs, study) == {}
            node.start()
            found = wait_for(lambda: len(results_in_pacs(pacs, study)) == 3 and results_in_pacs(pacs, study), 240, "results", node)
            # the node has recorded every delivery and has nothing left to send: no more can arrive
            wait_for(lambda: (d := node.status_json()["deliveries"])["delivered"] == 3 and d["pending"] == 0, 60, "the outbox to drain", node)
            assert pacs.statistics()["CountInstances"] == 3  # only the results, each once
            folder = result_folder(node.data_dir, study, series_uid, 1)
            local = {
                str(pydicom.dcmread(folder / name, stop_before_pixels=True).SOPInstanceUID)
                for name in ("seg.dcm", "sr.dcm", "summary.dcm")
            }
            assert set(found) == local
            seg = next(t for t in found.values() if t["Modality"] == "SEG")
            assert seg["StudyInstanceUID"] == study
            received = tmp_path / "received"
            received.mkdir()
            check_objects(pacs, found, received)
            deliveries = node.status_json()["deliveries"]
            assert (deliveries["delivered"], deliveries["pending"], deliveries["failed"]) == (3, 0, 0)
        finally:
            node.stop()
