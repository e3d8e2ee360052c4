"""Smaller break: results ``failed`` for good at the PACS had no retry, nor had a failed job.

Now ``m2unet-node retry SERIES_UID`` re-queues the refused deliveries (sent again by the running
node) or the failed job (run again by the pipeline); an unknown UID or a series with nothing
failed is exit 2 with the reason.
"""

from __future__ import annotations

import threading

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_node.state import db

from dicom_node.delivery import outbox
from dicom_node.cli import main
from dicom_node.pipeline.worker import run_job
from m2unet.predictor import Predictor
from tests.dicom_node.adversarial.conftest import edited_series, needs_dcmtk, node_config, series_uid_of
from tests.support.dcmtk import storescu
from tests.support.node_process import InProcessSCP, NodeProcess, free_port
from tests.support.polling import wait_until
from tests.support.results_data import node_config as pipeline_config


class Pacs:
    """A PACS (pynetdicom SCP) that refuses every object with 0xA900 until told otherwise."""

    def __init__(self) -> None:
        self.refusing = True
        self.received: list[str] = []
        self.port = free_port()
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        if self.refusing:
            return 0xA900
        with self._lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@needs_dcmtk
def test_retry_resends_results_a_pacs_refused_for_good(tmp_path, weights):
    pacs = Pacs()
    config = node_config(weights, destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}])
    files = edited_series(tmp_path / "series", n=10, size=32)
    uid = series_uid_of(files[0])
    try:
        with NodeProcess(config, tmp_path) as node:
            assert storescu(node.port, files, calling_ae="CT_1", called_ae=node.ae_title).successes == 10
            assert node.wait_for_series(uid, states=("done", "failed"), timeout=180)["state"] == "done"
            assert wait_until(lambda: node.status_json()["deliveries"]["failed"] == 3, timeout=60, step=0.3)
            assert pacs.received == []

            pacs.refusing = False
            retried = node.run_cli("retry", uid)
            assert retried.returncode == 0, retried.stderr
            assert "failed deliveries queued again (3 to pacs)" in retried.stdout
            assert wait_until(lambda: node.status_json()["deliveries"]["delivered"] == 3, timeout=60, step=0.3)
            assert len(set(pacs.received)) == 3

            again = node.run_cli("retry", uid)
            assert again.returncode == 2 and "nothing to retry: not failed (state done" in again.stderr, again
            assert "3 delivered" in again.stderr
            unknown = node.run_cli("retry", "1.2.826.0.1.3680043.8.498.404")
            assert unknown.returncode == 2 and "no such series" in unknown.stderr
            assert node.stop() == 0
    finally:
        pacs.stop()


class _Exploding:
    """The predictor with a model that fails (a CUDA error, a bug): the job fails."""

    def __init__(self, predictor) -> None:
        self._predictor = predictor

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def predict(self, *args, **kwargs):
        raise RuntimeError("model exploded")


@needs_dcmtk
def test_retry_runs_a_failed_job_again(tmp_path, weights, capsys):
    files = edited_series(tmp_path / "series", n=10, size=32)
    uid = series_uid_of(files[0])
    with InProcessSCP(tmp_path, sources=("CT_1",), series_timeout=0.3) as scp:
        assert storescu(scp.port, files, calling_ae="CT_1", called_ae=scp.ae_title).successes == 10
        scp.wait_for_state(uid, ("queued",))
    data_dir = scp.data_dir
    config_file = tmp_path / "node.toml"
    config_file.write_text(f'[node]\ndata_dir = "{data_dir}"\n\n[[sources]]\nae_title = "CT_1"\n', encoding="utf-8")
    predictor = Predictor.from_weights(weights, "cpu", bags=1)
    conn = db.connect(data_dir)
    try:
        assert run_job(conn, db.claim_queued_series(conn), _Exploding(predictor), pipeline_config(data_dir)) == "failed"
        assert "model exploded" in db.get_series(conn, uid).reason

        assert main(["--config", str(config_file), "retry", uid]) == 0
        out = capsys.readouterr().out
        assert f"series {uid}: failed (RuntimeError: model exploded); queued again" in out
        queued = db.get_series(conn, uid)
        assert (queued.state, queued.reason, queued.version) == ("queued", None, 1)
        assert run_job(conn, db.claim_queued_series(conn), predictor, pipeline_config(data_dir)) == "done"
        assert outbox.delivery_summary(conn)["kept"][0]["series_instance_uid"] == uid

        assert main(["--config", str(config_file), "retry", uid]) == 2
        assert "nothing to retry" in capsys.readouterr().err
    finally:
        conn.close()


@pytest.mark.parametrize("argv", [["retry"], ["retry", "a", "b"]])
def test_retry_needs_one_series_uid(argv, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
