"""Break 1: malformed or missing Type 2/3 patient attributes must neither fail the series nor leak.

Before the fix a PatientBirthDate "1961-02-03" (not a DA) failed the series with
``ValueError: Unable to convert '1961-02-03' to 'DA'`` in the log, ``status`` and the database; a
series without PatientBirthDate made ``m2unet-node process`` end in an AttributeError traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pydicom

from tests.dicom_node.adversarial.conftest import (
    database_text,
    edited_series,
    needs_dcmtk,
    node_config,
    series_uid_of,
)
from tests.support.dcmtk import storescu
from tests.support.node_process import NodeProcess

BAD_BIRTH_DATE = "1961-02-03"


@needs_dcmtk
def test_invalid_birth_date_is_copied_empty_and_never_leaks(tmp_path, weights):
    def edit(ds, k):
        ds.PatientBirthDate = BAD_BIRTH_DATE
        ds.PatientSex = "X"  # not M, F or O: invalid too

    files = edited_series(tmp_path / "series", edit)
    uid = series_uid_of(files[0])
    with NodeProcess(node_config(weights), tmp_path) as node:
        sent = storescu(node.port, files, calling_ae="CT_1", called_ae=node.ae_title)
        assert sent.successes == len(files), sent.output[-2000:]
        final = node.wait_for_series(uid, states=("done", "failed", "skipped"), timeout=120)
        status = node.run_cli("status").stdout + node.run_cli("status", "--json").stdout
        assert node.stop() == 0
    assert final["state"] == "done", final
    texts = {"log": node.log_text(), "status": status, "database": database_text(node.data_dir)}
    for where, text in texts.items():
        for secret in (BAD_BIRTH_DATE, "19610203"):
            assert secret not in text, f"{secret!r} appears in the {where}"
    repaired = [e for e in node.log_events() if e.get("event") == "source_attributes_repaired"]
    assert repaired and {"PatientBirthDate", "PatientSex"} <= set(repaired[0]["invalid_copied_empty"])
    seg = next(node.data_dir.glob("results/*/*/v*/seg.dcm"))
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    assert ds.PatientBirthDate == "" and ds.PatientSex == ""
    assert str(ds.PatientName) == "Test^Synthetic"  # valid attributes are copied as they are


def test_series_without_birth_date_processes_offline(tmp_path, weights):
    def edit(ds, k):
        del ds.PatientBirthDate
        del ds.PatientSex

    files = edited_series(tmp_path / "series", edit)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "process", str(files[0].parent), "--out", str(out),
         "--weights", str(weights), "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["severity"] in ("severe", "non-severe")
    for name in ("seg.dcm", "sr.dcm", "summary.dcm"):
        ds = pydicom.dcmread(out / name, stop_before_pixels=True)
        assert "PatientBirthDate" in ds and ds.PatientBirthDate == "", name
    warned = [line for line in result.stderr.splitlines() if "source_attributes_repaired" in line]
    assert warned and "PatientBirthDate" in warned[0]
