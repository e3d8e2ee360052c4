"""``m2unet-node send-demo``: a phantom C-STOREd to a real SCP (Orthanc)."""

from __future__ import annotations

import pytest

from dicom_node.ops.demo import send_demo
from tests.support.orthanc import OrthancServer, free_port, orthanc_available


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")
def test_send_demo_stores_every_slice(tmp_path, capsys):
    with OrthancServer(tmp_path / "orthanc") as pacs:
        rc = send_demo(None, host="127.0.0.1", port=pacs.dicom_port, called_ae="PACS", calling_ae="DEMO", seed=3, slices=12)
        assert rc == 0, capsys.readouterr()
        studies = pacs.get("/studies")
        assert len(studies) == 1
        series = pacs.get(f"/studies/{studies[0]}")["Series"]
        assert len(series) == 1
        tags = pacs.get(f"/series/{series[0]}")
        assert tags["MainDicomTags"]["Modality"] == "CT"
        assert len(tags["Instances"]) == 12
    assert "12/12 stored" in capsys.readouterr().out


def test_send_demo_reports_an_absent_node(tmp_path, capsys):
    rc = send_demo(None, host="127.0.0.1", port=free_port(), called_ae="M2UNET", calling_ae="DEMO", seed=3, slices=12)
    assert rc == 1
    assert "refused or failed" in capsys.readouterr().err


def test_send_demo_refuses_an_impossible_phantom(capsys):
    assert send_demo(None, host="127.0.0.1", port=free_port(), called_ae="M2UNET", calling_ae="DEMO", seed=3, slices=2) == 2
    assert capsys.readouterr().err.startswith("send-demo: ")
