"""``m2unet-node status``: disk use and free space of data_dir, the [retention] settings, the
series retention purged (text and ``--json`` carry the same fields)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from dicom_node.state import db

from dicom_node.ops import retention
from dicom_node.config.model import RetentionSettings
from dicom_node.ingest.spool import Spool
from dicom_node.ops.status import collect_status, format_status, human_bytes, print_status
from tests.support.paths import REPO

CT = "1.2.840.10008.5.1.4.1.1.2"


def make_state(tmp_path, purge: bool = True):
    """Two done series of 3 instances of 1000 bytes; with ``purge`` one of them is purged."""
    data_dir = tmp_path / "data"
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "{data_dir}"\n[retention]\nreceived_days = 2.5\nresults_days = 0\ncheck_interval = 1800\n',
        encoding="utf-8",
    )
    conn = db.connect(data_dir)
    spool = Spool(data_dir)
    for series in ("1.2.3", "1.2.4"):
        for i in range(3):
            sop = f"{series}.{i}"
            path = spool.instance_path("1.2", series, sop)
            spool.write(path, [b"\0" * 1000])
            db.record_instance(
                conn,
                db.InstanceRecord(sop, series, "1.2", CT, "1.2.840.10008.1.2.1", path.relative_to(data_dir).as_posix(), sop, 1000, "CT_1"),
            )
        db.complete_series(conn, series, 1, "queued")
        db.set_series_state(conn, series, "running", version=1)
        db.set_series_state(conn, series, "done", version=1)
    conn.execute("UPDATE series SET updated_at = ? WHERE series_instance_uid = '1.2.3'", (time.time() - 3 * 86400,))
    if purge:
        retention.apply_retention(conn, data_dir, RetentionSettings(received_days=2.5, results_days=0))
    conn.close()
    return config, data_dir


def test_json_has_disk_use_free_space_retention_settings_and_purged_series(tmp_path, capsys):
    config, data_dir = make_state(tmp_path)
    capsys.readouterr()  # the pass's own log lines
    assert print_status(config, as_json=True) == 0
    status = json.loads(capsys.readouterr().out)
    disk = status["disk"]
    assert disk["spool_bytes"] >= 3 * 1000  # 1.2.4's instances; 1.2.3's were deleted
    assert disk["spool_bytes"] < 6 * 1000
    assert disk["database_bytes"] > 0 and disk["used_bytes"] >= disk["spool_bytes"] + disk["database_bytes"]
    assert disk["free_bytes"] > 0 and disk["total_bytes"] >= disk["free_bytes"]
    r = status["retention"]
    assert (r["received_days"], r["results_days"], r["check_interval"]) == (2.5, 0, 1800)
    assert r["purged_series"] == 1 and r["purged_result_sets"] == 0
    assert r["last_pass"]["series_purged"] == 1 and r["last_pass"]["files_deleted"] == 3
    assert r["last_pass"]["bytes_freed"] == 3 * 1000
    by_uid = {s["series_instance_uid"]: s for s in status["series"]}
    purged, kept = by_uid["1.2.3"], by_uid["1.2.4"]
    assert purged["state"] == "done" and purged["purged"] is True and purged["purged_instances"] == 3
    assert purged["purged_at"].endswith("+00:00") and purged["purged_version"] == 1 and purged["instances"] == 0
    assert kept["purged"] is False and kept["purged_at"] is None and kept["instances"] == 3
    assert status["counts"]["done"] == 2  # a purged series stays done


def test_text_shows_disk_retention_and_which_series_were_purged(tmp_path, capsys):
    config, _ = make_state(tmp_path)
    capsys.readouterr()
    assert print_status(config) == 0
    text = capsys.readouterr().out
    assert "disk: data_dir uses" in text and "free of" in text and "spool" in text
    assert "kept 2.5 days after their series is final and delivered; results kept forever; checked every 30 min" in text
    assert "1 series purged" in text and "last pass" in text
    assert "purged: 3 received instances deleted" in text


def test_before_any_pass_and_without_settings(tmp_path):
    config, data_dir = make_state(tmp_path, purge=False)
    conn = db.connect(data_dir)
    try:
        status = collect_status(conn)  # no config at hand: only what the database knows
    finally:
        conn.close()
    assert status["retention"] == {"purged_series": 0, "purged_result_sets": 0, "last_pass": None}
    assert "0 series purged" in format_status(status)
    assert status["disk"]["spool_bytes"] >= 6000


def test_cli_status_json_and_text(tmp_path):
    config, _ = make_state(tmp_path)
    cmd = [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "status"]
    js = subprocess.run(cmd + ["--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert doc["retention"]["purged_series"] == 1 and "free_bytes" in doc["disk"]
    text = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "retention:" in text.stdout and "disk:" in text.stdout


def test_human_bytes():
    assert human_bytes(0) == "0 B" and human_bytes(999) == "999 B"
    assert human_bytes(1500) == "1.5 KB" and human_bytes(150_000_000) == "150.0 MB"
    assert human_bytes(2 * 10**12) == "2.0 TB" and human_bytes(None) == "?"
