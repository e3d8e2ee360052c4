"""The pipeline's tables: ``jobs`` (one row per series version started) and ``results`` (one row
per result set written; ``folder`` relative to ``data_dir``), and ``purged_results`` (the result
sets retention removed).

``jobs.started_at`` is the time a series version was first started; it is the creation time
stamped on every object of that result set, so a re-run after a crash rebuilds identical objects.
``results.qc_passed`` (1, 0; NULL: not checked) and ``results.qc_failed`` (the names of the failed
checks, comma-separated) hold the result's quality check (``m2unet.qc``) for ``status``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from dicom_node.state.db import locked, write_transaction


@dataclass(frozen=True)
class ResultRow:
    """One recorded result set (``folder`` relative to ``data_dir``)."""

    study_instance_uid: str
    series_instance_uid: str
    version: int
    folder: str
    seg_sop_instance_uid: str
    sr_sop_instance_uid: str
    summary_sop_instance_uid: str | None
    destinations: int


def start_job(conn: sqlite3.Connection, series_instance_uid: str, version: int, now: float | None = None) -> float:
    """Count an attempt of this series version; return when its first attempt started (epoch s)."""
    now = time.time() if now is None else now
    with write_transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO jobs (series_instance_uid, version, started_at, attempts) VALUES (?,?,?,0)",
            (series_instance_uid, version, now),
        )
        conn.execute(
            "UPDATE jobs SET attempts = attempts + 1 WHERE series_instance_uid = ? AND version = ?",
            (series_instance_uid, version),
        )
        return conn.execute(
            "SELECT started_at FROM jobs WHERE series_instance_uid = ? AND version = ?",
            (series_instance_uid, version),
        ).fetchone()[0]


def job_attempts(conn: sqlite3.Connection, series_instance_uid: str, version: int) -> int:
    """How many times this series version was started (0: never)."""
    with locked(conn):
        row = conn.execute(
            "SELECT attempts FROM jobs WHERE series_instance_uid = ? AND version = ?", (series_instance_uid, version)
        ).fetchone()
    return int(row[0]) if row else 0


def record_result(
    conn: sqlite3.Connection,
    row: ResultRow,
    *,
    severity: str,
    probability_severe: float,
    qc_passed: bool | None,
    qc_failed: list[str],
    now: float | None = None,
) -> None:
    """Record (or replace) the result set of ``row``'s series version."""
    with locked(conn):
        conn.execute(
            "INSERT OR REPLACE INTO results (series_instance_uid, version, study_instance_uid, folder,"
            " seg_sop_instance_uid, sr_sop_instance_uid, summary_sop_instance_uid, destinations, severity,"
            " probability_severe, created_at, qc_passed, qc_failed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                row.series_instance_uid,
                row.version,
                row.study_instance_uid,
                row.folder,
                row.seg_sop_instance_uid,
                row.sr_sop_instance_uid,
                row.summary_sop_instance_uid,
                row.destinations,
                severity,
                probability_severe,
                time.time() if now is None else now,
                None if qc_passed is None else int(bool(qc_passed)),
                None if qc_passed is None else ",".join(qc_failed),
            ),
        )


def qc_verdicts(conn: sqlite3.Connection) -> dict[tuple[str, int], dict]:
    """Per recorded result set ``(series_instance_uid, version)``: ``{"passed": bool | None,
    "failed": [check names]}`` (``passed`` None: recorded without a quality check)."""
    with locked(conn):
        rows = conn.execute("SELECT series_instance_uid, version, qc_passed, qc_failed FROM results").fetchall()
    return {
        (r[0], int(r[1])): {
            "passed": None if r[2] is None else bool(r[2]),
            "failed": [name for name in (r[3] or "").split(",") if name],
        }
        for r in rows
    }


_ROW_COLUMNS = (
    "study_instance_uid, series_instance_uid, version, folder, seg_sop_instance_uid, sr_sop_instance_uid,"
    " summary_sop_instance_uid, destinations"
)


def result_rows(conn: sqlite3.Connection, series_instance_uid: str) -> list[ResultRow]:
    """Every recorded result set of the series (all versions)."""
    with locked(conn):
        rows = conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM results WHERE series_instance_uid = ?", (series_instance_uid,)
        ).fetchall()
    return [ResultRow(*r) for r in rows]


def kept_rows(conn: sqlite3.Connection) -> list[ResultRow]:
    """Result sets produced while no destination was configured, oldest first."""
    with locked(conn):
        rows = conn.execute(f"SELECT {_ROW_COLUMNS} FROM results WHERE destinations = 0 ORDER BY created_at").fetchall()
    return [ResultRow(*r) for r in rows]


def result_folders(conn: sqlite3.Connection) -> set[str]:
    """The ``folder`` of every recorded result set."""
    with locked(conn):
        return {r[0] for r in conn.execute("SELECT folder FROM results").fetchall()}


def due_result_rows(conn: sqlite3.Connection, cutoff: float) -> list[dict]:
    """Result sets created at or before ``cutoff`` that retention has not removed, with their
    series' state and version (``series_state``, ``series_version``), oldest first."""
    with locked(conn):
        rows = conn.execute(
            "SELECT r.series_instance_uid, r.version, r.study_instance_uid, r.folder, r.seg_sop_instance_uid,"
            " r.sr_sop_instance_uid, r.summary_sop_instance_uid, r.created_at,"
            " s.state AS series_state, s.version AS series_version"
            " FROM results r LEFT JOIN series s ON s.series_instance_uid = r.series_instance_uid"
            " WHERE r.created_at <= ? AND NOT EXISTS (SELECT 1 FROM purged_results p"
            "  WHERE p.series_instance_uid = r.series_instance_uid AND p.version = r.version)"
            " ORDER BY r.created_at",
            (cutoff,),
        ).fetchall()
    return [dict(r) for r in rows]


def record_purged_result_set(
    conn: sqlite3.Connection, series_instance_uid: str, version: int, folder: str, now: float, files: int, size: int
) -> None:
    with write_transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO purged_results (series_instance_uid, version, folder, purged_at, files, bytes)"
            " VALUES (?,?,?,?,?,?)",
            (series_instance_uid, version, folder, now, files, size),
        )


def purged_result_sets(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    """(Series Instance UID, version) of every result set retention removed."""
    with locked(conn):
        return {(r[0], r[1]) for r in conn.execute("SELECT series_instance_uid, version FROM purged_results").fetchall()}
