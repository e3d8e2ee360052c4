"""``m2unet-node status [--json]``: series with their state and reason; deliveries; no patient data."""

import json
import sqlite3
import subprocess
import sys

from dicom_node.state import db
from dicom_node.ops.status import print_status
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


def _record_done(tmp_path, conn, qc):
    from dicom_node.results.records import record_result

    db.set_series_state(conn, "1.2.5", "running")
    db.set_series_state(conn, "1.2.5", "done")
    record_result(
        conn,
        series_instance_uid="1.2.5",
        version=1,
        study_instance_uid="1.2",
        folder=tmp_path / "data" / "results" / "x" / "y" / "v1",
        seg_sop_instance_uid="1.2.9.1",
        sr_sop_instance_uid="1.2.9.2",
        summary_sop_instance_uid=None,
        destinations=0,
        severity="severe",
        probability_severe=0.8,
        qc=qc,
    )


def test_status_shows_the_quality_check_of_done_series(tmp_path, capsys):
    from m2unet.qc import Check, QualityCheck

    config = make_state(tmp_path)
    conn = db.connect(tmp_path / "data")
    qc = QualityCheck([Check("lung_coverage", True, "ok"), Check("lobe_shares", False, "right middle lobe 1 %")])
    _record_done(tmp_path, conn, qc)
    conn.close()
    assert print_status(config, as_json=True) == 0
    by_uid = {s["series_instance_uid"]: s for s in json.loads(capsys.readouterr().out)["series"]}
    assert by_uid["1.2.5"]["qc"] == {"passed": False, "failed": ["lobe_shares"]}
    assert by_uid["1.2.4"]["qc"] is None  # skipped: no result
    assert print_status(config) == 0
    assert "quality check: FAILED (lobe_shares)" in capsys.readouterr().out


def test_results_table_of_an_older_database_gets_the_qc_columns(tmp_path, capsys):
    from m2unet.qc import Check, QualityCheck

    config = make_state(tmp_path)
    old = sqlite3.connect(tmp_path / "data" / db.DB_FILENAME)  # the results table as the first release created it
    old.execute("DROP TABLE results")
    old.execute(
        "CREATE TABLE results (series_instance_uid TEXT NOT NULL, version INTEGER NOT NULL,"
        " study_instance_uid TEXT NOT NULL, folder TEXT NOT NULL, seg_sop_instance_uid TEXT NOT NULL,"
        " sr_sop_instance_uid TEXT NOT NULL, summary_sop_instance_uid TEXT, destinations INTEGER NOT NULL,"
        " severity TEXT NOT NULL, probability_severe REAL NOT NULL, created_at REAL NOT NULL,"
        " PRIMARY KEY (series_instance_uid, version))"
    )
    old.execute("INSERT INTO results VALUES ('1.2.4', 1, '1.2', 'results/a', '1', '2', NULL, 0, 'severe', 0.9, 0)")
    old.commit()
    old.close()
    conn = db.connect(tmp_path / "data")  # migrates it
    _record_done(tmp_path, conn, QualityCheck([Check("lung_volume", True, "5 L")]))
    columns = {row[1] for row in conn.execute("PRAGMA table_info(results)").fetchall()}
    assert {"qc_passed", "qc_failed"} <= columns
    conn.close()
    assert print_status(config, as_json=True) == 0
    by_uid = {s["series_instance_uid"]: s for s in json.loads(capsys.readouterr().out)["series"]}
    assert by_uid["1.2.5"]["qc"] == {"passed": True, "failed": []}
