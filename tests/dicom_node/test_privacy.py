"""No patient identity leaves the node through its logs or ``m2unet-node status``.

A series with a known, unusual patient name, ID and birth date goes through a real node (receive,
assemble, pipeline); then every byte of the node's log and of both status outputs is searched.
"""

from __future__ import annotations

import pydicom
import pytest

from m2unet.weights import random_weights
from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.dcmtk import have_dcmtk, storescu
from tests.support.node_process import NodeProcess

PATIENT_NAME = "Canaryfield^Philippa^Quinn"
PATIENT_ID = "MRN-CANARY-48151623"
BIRTH_DATE = "19011231"
OTHER_ID = "OTHER-CANARY-42"
# Every piece that could show up on its own (a logger might print the family name only).
SECRETS = (PATIENT_NAME, "Canaryfield", "Philippa", PATIENT_ID, "48151623", BIRTH_DATE, OTHER_ID)


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu) not installed")
def test_patient_name_id_and_birth_date_never_appear_in_logs_or_status(tmp_path):
    # 10 slices: enough for the pipeline to run (fewer are skipped at selection)
    files = write_ct_series(tmp_path / "series", phantom_hu(n=10, size=32))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = BIRTH_DATE
        ds.OtherPatientIDs = OTHER_ID
        ds.save_as(path, enforce_file_format=True)
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    weights = random_weights(tmp_path / "random.pt")

    config = {
        "node": {"log_format": "json"},
        "model": {"weights": str(weights), "device": "cpu"},
        "sources": [{"ae_title": "CT_1"}],
    }
    with NodeProcess(config, tmp_path) as node:
        sent = storescu(node.port, files, calling_ae="CT_1", called_ae=node.ae_title)
        assert sent.successes == len(files), sent.output[-2000:]
        final = node.wait_for_series(series_uid, states=("done", "failed", "skipped"), timeout=90)
        status_text = node.run_cli("status")
        status_json = node.run_cli("status", "--json")
        assert node.stop() == 0

    assert status_text.returncode == 0 and status_json.returncode == 0
    logs = node.log_text()
    # The logs and status do describe this series (so the search below searched something).
    assert series_uid in logs and series_uid in status_json.stdout
    assert final["state"] in ("done", "failed", "skipped")
    outputs = {
        "node log": logs,
        "status": status_text.stdout + status_text.stderr,
        "status --json": status_json.stdout + status_json.stderr,
    }
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret.lower() not in text.lower(), f"{secret!r} appears in the {where}"
