"""The pipeline's tables and folders: ``jobs`` (one row per series version started),
``results`` (one row per result set written) and ``data_dir/results/``.

Folder of a result set: ``data_dir/results/<study-hash>/<series-hash>/v<version>/`` holding
``seg.dcm``, ``sr.dcm``, ``summary.dcm`` and ``findings.json``; the hashes are the first 16 hex
digits of the sha256 of the Study and Series Instance UIDs (short, file-system safe names).

``jobs.started_at`` is the time a series version was first started; it is the creation time
stamped on every object of that result set (``stamp``), so a re-run after a crash rebuilds
identical objects.

``results.qc_passed`` (1, 0; NULL: not checked) and ``results.qc_failed`` (the names of the failed
checks, comma-separated) hold the result's quality check (``m2unet.qc``) for ``status``; an older
database gets the two columns at the first :func:`ensure_schema` (``ALTER TABLE``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from dicom_node.state.db import data_dir_of, locked
from dicom_node.results.uids import ResultKind

RESULTS_DIR = "results"
FILE_NAMES = {ResultKind.SEG: "seg.dcm", ResultKind.SR: "sr.dcm", ResultKind.SUMMARY: "summary.dcm"}

SCHEMA = """
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
"""

# columns added after the first release: (name, declaration) for ALTER TABLE on older databases
ADDED_RESULTS_COLUMNS = (("qc_passed", "INTEGER"), ("qc_failed", "TEXT"))


def ensure_schema(conn: sqlite3.Connection) -> None:
    with locked(conn):
        conn.executescript(SCHEMA)
        have = {row[1] for row in conn.execute("PRAGMA table_info(results)").fetchall()}
        for name, declaration in ADDED_RESULTS_COLUMNS:
            if name not in have:
                try:
                    conn.execute(f"ALTER TABLE results ADD COLUMN {name} {declaration}")
                except sqlite3.OperationalError as exc:  # another connection added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise


def results_dir(data_dir: Path) -> Path:
    return Path(data_dir) / RESULTS_DIR


def _short_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii")).hexdigest()[:16]


def result_folder(data_dir: Path, study_instance_uid: str, series_instance_uid: str, version: int) -> Path:
    return results_dir(data_dir) / _short_hash(study_instance_uid) / _short_hash(series_instance_uid) / f"v{int(version)}"


def start_job(conn: sqlite3.Connection, series_instance_uid: str, version: int) -> datetime:
    """Count an attempt of this series version; return when its first attempt started."""
    ensure_schema(conn)
    with locked(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR IGNORE INTO jobs (series_instance_uid, version, started_at, attempts) VALUES (?,?,?,0)",
                (series_instance_uid, version, time.time()),
            )
            conn.execute(
                "UPDATE jobs SET attempts = attempts + 1 WHERE series_instance_uid = ? AND version = ?",
                (series_instance_uid, version),
            )
            started = conn.execute(
                "SELECT started_at FROM jobs WHERE series_instance_uid = ? AND version = ?",
                (series_instance_uid, version),
            ).fetchone()[0]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    # whole seconds: the same value whatever float rounding the database applies
    return datetime.fromtimestamp(int(started))  # local time, as DICOM dates are


def job_attempts(conn: sqlite3.Connection, series_instance_uid: str, version: int) -> int:
    """How many times this series version was started (0: never)."""
    ensure_schema(conn)
    with locked(conn):
        row = conn.execute(
            "SELECT attempts FROM jobs WHERE series_instance_uid = ? AND version = ?", (series_instance_uid, version)
        ).fetchone()
    return int(row[0]) if row else 0


def record_result(
    conn: sqlite3.Connection,
    *,
    series_instance_uid: str,
    version: int,
    study_instance_uid: str,
    folder: Path,
    seg_sop_instance_uid: str,
    sr_sop_instance_uid: str,
    summary_sop_instance_uid: str | None,
    destinations: int,
    severity: str,
    probability_severe: float,
    qc=None,
) -> None:
    """``qc``: the result's ``m2unet.qc.QualityCheck`` (None: not checked)."""
    ensure_schema(conn)
    relative = Path(folder).relative_to(data_dir_of(conn)).as_posix()
    qc_passed = None if qc is None else int(bool(qc.passed))
    qc_failed = None if qc is None else ",".join(c.name for c in qc.failed)
    with locked(conn):
        conn.execute(
            "INSERT OR REPLACE INTO results (series_instance_uid, version, study_instance_uid, folder,"
            " seg_sop_instance_uid, sr_sop_instance_uid, summary_sop_instance_uid, destinations, severity,"
            " probability_severe, created_at, qc_passed, qc_failed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                series_instance_uid,
                version,
                study_instance_uid,
                relative,
                seg_sop_instance_uid,
                sr_sop_instance_uid,
                summary_sop_instance_uid,
                destinations,
                severity,
                probability_severe,
                time.time(),
                qc_passed,
                qc_failed,
            ),
        )


def qc_verdicts(conn: sqlite3.Connection) -> dict[tuple[str, int], dict]:
    """Per recorded result set ``(series_instance_uid, version)``: ``{"passed": bool | None,
    "failed": [check names]}`` (``passed`` None: recorded without a quality check)."""
    ensure_schema(conn)
    with locked(conn):
        rows = conn.execute("SELECT series_instance_uid, version, qc_passed, qc_failed FROM results").fetchall()
    return {
        (r[0], int(r[1])): {
            "passed": None if r[2] is None else bool(r[2]),
            "failed": [name for name in (r[3] or "").split(",") if name],
        }
        for r in rows
    }


def result_files(conn: sqlite3.Connection, series_instance_uid: str) -> dict[str, Path]:
    """``{SOP Instance UID: file}`` of every recorded result object of the series (all versions;
    a file may be gone if retention removed its folder)."""
    ensure_schema(conn)
    data_dir = data_dir_of(conn)
    with locked(conn):
        rows = conn.execute(
            "SELECT folder, seg_sop_instance_uid, sr_sop_instance_uid, summary_sop_instance_uid FROM results"
            " WHERE series_instance_uid = ?",
            (series_instance_uid,),
        ).fetchall()
    files = {}
    for folder, seg, sr, summary in rows:
        for kind, uid in ((ResultKind.SEG, seg), (ResultKind.SR, sr), (ResultKind.SUMMARY, summary)):
            if uid:
                files[uid] = data_dir / folder / FILE_NAMES[kind]
    return files


def kept_results(conn: sqlite3.Connection) -> list[dict]:
    """Result sets produced while no destination was configured (they stay in their folder)."""
    ensure_schema(conn)
    data_dir = data_dir_of(conn)
    with locked(conn):
        rows = conn.execute(
            "SELECT study_instance_uid, series_instance_uid, version, folder FROM results"
            " WHERE destinations = 0 ORDER BY created_at"
        ).fetchall()
    return [
        {
            "study_instance_uid": r["study_instance_uid"],
            "series_instance_uid": r["series_instance_uid"],
            "version": r["version"],
            "folder": str(data_dir / r["folder"]),
        }
        for r in rows
    ]
