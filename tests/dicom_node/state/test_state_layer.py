"""The state layer: every table made when a connection opens, an old database migrated once, and
no SQL anywhere else in the node."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

from dicom_node.state import db, schema
from tests.support.paths import REPO

TABLES = {"series", "instances", "jobs", "results", "outbox", "purged_results", "retention_last_pass", "tasks", "workers"}


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} - {"sqlite_sequence"}
    finally:
        conn.close()


def test_connect_creates_every_table_and_carries_its_data_dir(tmp_path):
    conn = db.connect(tmp_path / "data")
    try:
        assert conn.data_dir == tmp_path / "data"
    finally:
        conn.close()
    assert _tables(tmp_path / "data" / db.DB_FILENAME) == TABLES


def test_an_old_database_opened_by_several_connections_at_once_is_migrated_once(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    old = sqlite3.connect(data_dir / db.DB_FILENAME)
    old.executescript(  # the first release: no retention or quality-check columns
        "CREATE TABLE series (series_instance_uid TEXT PRIMARY KEY, study_instance_uid TEXT NOT NULL,"
        " calling_ae TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, version INTEGER NOT NULL DEFAULT 1,"
        " instances INTEGER NOT NULL DEFAULT 0, first_received REAL NOT NULL, last_received REAL NOT NULL,"
        " updated_at REAL NOT NULL);"
        "CREATE TABLE results (series_instance_uid TEXT NOT NULL, version INTEGER NOT NULL,"
        " study_instance_uid TEXT NOT NULL, folder TEXT NOT NULL, seg_sop_instance_uid TEXT NOT NULL,"
        " sr_sop_instance_uid TEXT NOT NULL, summary_sop_instance_uid TEXT, destinations INTEGER NOT NULL,"
        " severity TEXT NOT NULL, probability_severe REAL NOT NULL, created_at REAL NOT NULL,"
        " PRIMARY KEY (series_instance_uid, version));"
    )
    old.close()
    errors: list[BaseException] = []

    def open_once() -> None:
        try:
            db.connect(data_dir).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_once) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = sqlite3.connect(data_dir / db.DB_FILENAME)
    try:
        for table, added in schema.ADDED_COLUMNS.items():
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            assert {name for name, _ in added} <= set(columns)
            assert len(columns) == len(set(columns))
    finally:
        conn.close()
    assert _tables(data_dir / db.DB_FILENAME) == TABLES


SQL_CALL = re.compile(r"\.(execute|executemany|executescript)\(")


def test_no_sql_outside_the_state_layer():
    outside = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "dicom_node").rglob("*.py"))
        if "state" not in path.relative_to(REPO / "dicom_node").parts[:1]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SQL_CALL.search(line)
    ]
    assert outside == []
