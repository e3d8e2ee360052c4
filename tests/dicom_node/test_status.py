"""``m2unet-node status [--json]``: series with their state and reason; deliveries; no patient data."""

import json
import subprocess
import sys

from dicom_node import db
from dicom_node.status import print_status
from tests.support.paths import REPO


def make_state(tmp_path):
    data_dir = tmp_path / "data"
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nae_title = "M2UNET"\ndata_dir = "{data_dir}"\n', encoding="utf-8")
    conn = db.connect(data_dir)
    for sop, series in (("1.2.3.1", "1.2.3"), ("1.2.3.2", "1.2.3"), ("1.2.4.1", "1.2.4"), ("1.2.5.1", "1.2.5")):
        db.record_instance(
            conn,
            db.InstanceRecord(sop, series, "1.2", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2", f"spool/{sop}", sop, 1, "CT_1"),
        )
    db.complete_series(conn, "1.2.4", 1, "skipped", "too few usable slices: 1 < 8")
    db.complete_series(conn, "1.2.5", 1, "queued")
    conn.close()
    return config


def test_json_lists_every_series_with_state_and_reason(tmp_path, capsys):
    config = make_state(tmp_path)
    assert print_status(config, as_json=True) == 0
    status = json.loads(capsys.readouterr().out)
    by_uid = {s["series_instance_uid"]: s for s in status["series"]}
    assert set(by_uid) == {"1.2.3", "1.2.4", "1.2.5"}
    assert by_uid["1.2.3"]["instances"] == 2 and by_uid["1.2.3"]["state"] == "receiving"
    assert by_uid["1.2.4"]["state"] == "skipped" and by_uid["1.2.4"]["reason"].startswith("too few usable slices")
    assert by_uid["1.2.5"]["state"] == "queued" and by_uid["1.2.5"]["study_instance_uid"] == "1.2"
    assert status["counts"]["receiving"] == 1 and status["counts"]["done"] == 0
    deliveries = status["deliveries"]
    assert deliveries is None or {"pending", "failed", "delivered"} <= set(deliveries)


def test_cli_text_and_json(tmp_path):
    config = make_state(tmp_path)
    cmd = [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "status"]
    text = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "skipped" in text.stdout and "reason: too few usable slices" in text.stdout and "1.2.5" in text.stdout
    js = subprocess.run(cmd + ["--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert len(json.loads(js.stdout)["series"]) == 3


def test_bad_config_exits_2(tmp_path, capsys):
    assert print_status(tmp_path / "missing.toml") == 2
    assert "cannot read" in capsys.readouterr().err
