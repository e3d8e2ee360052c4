"""Where result sets live: ``data_dir/results/``, and their records (the tables are
:mod:`dicom_node.state.results`'s).

Folder of a result set: ``data_dir/results/<study-hash>/<series-hash>/v<version>/`` holding
``seg.dcm``, ``sr.dcm``, ``summary.dcm`` and ``findings.json``; the hashes are the first 16 hex
digits of the sha256 of the Study and Series Instance UIDs (short, file-system safe names).

A record names the folder relative to ``data_dir`` (the connection's, :class:`dicom_node.state.db.NodeConnection`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from dicom_node.results.uids import ResultKind
from dicom_node.state import results as results_state
from dicom_node.state.results import ResultRow

RESULTS_DIR = "results"
FILE_NAMES = {ResultKind.SEG: "seg.dcm", ResultKind.SR: "sr.dcm", ResultKind.SUMMARY: "summary.dcm"}


def results_dir(data_dir: Path) -> Path:
    return Path(data_dir) / RESULTS_DIR


def _short_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii")).hexdigest()[:16]


def result_folder(data_dir: Path, study_instance_uid: str, series_instance_uid: str, version: int) -> Path:
    return results_dir(data_dir) / _short_hash(study_instance_uid) / _short_hash(series_instance_uid) / f"v{int(version)}"


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
    row = ResultRow(
        study_instance_uid, series_instance_uid, version, Path(folder).relative_to(conn.data_dir).as_posix(),
        seg_sop_instance_uid, sr_sop_instance_uid, summary_sop_instance_uid, destinations,
    )
    results_state.record_result(
        conn, row, severity=severity, probability_severe=probability_severe,
        qc_passed=None if qc is None else bool(qc.passed), qc_failed=[] if qc is None else [c.name for c in qc.failed],
    )


def result_files(conn, series_instance_uid: str) -> dict[str, Path]:
    """``{SOP Instance UID: file}`` of every recorded result object of the series (all versions;
    a file may be gone if retention removed its folder)."""
    files = {}
    for row in results_state.result_rows(conn, series_instance_uid):
        for kind, uid in (
            (ResultKind.SEG, row.seg_sop_instance_uid),
            (ResultKind.SR, row.sr_sop_instance_uid),
            (ResultKind.SUMMARY, row.summary_sop_instance_uid),
        ):
            if uid:
                files[uid] = conn.data_dir / row.folder / FILE_NAMES[kind]
    return files


def kept_results(conn) -> list[dict]:
    """Result sets produced while no destination was configured (they stay in their folder)."""
    return [
        {
            "study_instance_uid": r.study_instance_uid,
            "series_instance_uid": r.series_instance_uid,
            "version": r.version,
            "folder": str(conn.data_dir / r.folder),
        }
        for r in results_state.kept_rows(conn)
    ]
