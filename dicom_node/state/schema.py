"""Every table of the node's state database, created once when a connection opens.

The tables by owner (the modules of :mod:`dicom_node.state` that read and write them):

- ``series``, ``instances`` (:mod:`dicom_node.state.db`): what was received, and each series' state;
- ``jobs``, ``results`` (:mod:`dicom_node.state.results`): pipeline runs and the result sets written;
- ``outbox`` (:mod:`dicom_node.state.outbox`): every result object to deliver, per destination;
- ``purged_results``, ``retention_last_pass`` (:mod:`dicom_node.state.retention`): what retention
  removed, and its last pass;
- ``tasks``, ``workers`` (:mod:`dicom_node.state.tasks`): with ``[pipeline] executor = "celery"``,
  the jobs published to the broker and the workers seen.

A database made by an older release gets the columns added since (:data:`ADDED_COLUMNS`) by
``ALTER TABLE``, inside the same write transaction, so concurrent connects add nothing twice.
"""

from __future__ import annotations

import sqlite3

TABLES = """
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    instances INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_state ON series (state, updated_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_instance_uid);
CREATE TABLE IF NOT EXISTS jobs (
    series_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (series_instance_uid, version)
);
CREATE TABLE IF NOT EXISTS results (
    series_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    study_instance_uid TEXT NOT NULL,
    folder TEXT NOT NULL,
    seg_sop_instance_uid TEXT NOT NULL,
    sr_sop_instance_uid TEXT NOT NULL,
    summary_sop_instance_uid TEXT,
    destinations INTEGER NOT NULL,
    severity TEXT NOT NULL,
    probability_severe REAL NOT NULL,
    created_at REAL NOT NULL,
    qc_passed INTEGER,
    qc_failed TEXT,
    PRIMARY KEY (series_instance_uid, version)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    source_series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    delivered_at REAL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, destination, next_attempt);
CREATE TABLE IF NOT EXISTS purged_results (
    series_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    folder TEXT NOT NULL,
    purged_at REAL NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (series_instance_uid, version)
);
CREATE TABLE IF NOT EXISTS retention_last_pass (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    finished_at REAL NOT NULL,
    series_purged INTEGER NOT NULL,
    result_sets_removed INTEGER NOT NULL,
    files_deleted INTEGER NOT NULL,
    bytes_freed INTEGER NOT NULL,
    held_series INTEGER NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    series_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    published_at REAL NOT NULL,
    publications INTEGER NOT NULL DEFAULT 1,
    started_at REAL,
    worker TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    outcome TEXT,
    PRIMARY KEY (series_instance_uid, version)
);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    tasks_done INTEGER NOT NULL DEFAULT 0,
    current_series TEXT
);
"""

# Columns added after the first release: {table: ((name, type), ...)}.
ADDED_COLUMNS = {
    "series": (
        ("purged_at", "REAL"),  # retention deleted the instances of version purged_version at this time
        ("purged_version", "INTEGER"),
        ("purged_instances", "INTEGER"),  # how many instances that purge deleted
        ("purge_started_at", "REAL"),  # a purge under way (files being deleted); NULL once finished
        ("retry_at", "REAL"),  # a queued series waiting out a transient resource error: not claimed before
    ),
    "results": (("qc_passed", "INTEGER"), ("qc_failed", "TEXT")),  # the result's quality check
}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the missing tables and add the missing columns, in one write transaction (the
    caller holds the connection's lock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)
        for table, added in ADDED_COLUMNS.items():
            have = _columns(conn, table)
            for name, sql_type in added:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
