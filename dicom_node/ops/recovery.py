"""Start-up recovery: the spool is the truth, the database its index.

Every acknowledged instance is a complete, fsynced file in the spool before its database row is
committed and before the success status goes out. The database runs with ``synchronous=NORMAL``
(WAL): a killed process loses nothing, but a power cut may lose the last few commits. So at
start-up :func:`reconcile_spool` records every spool file that has no row (reading its header
and the calling AE title kept in its file meta); its series is then ``receiving`` again and
completes after the usual quiet period. Files that cannot be read are moved to
``data_dir/quarantine`` (they were never acknowledged: acknowledged files are complete).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import structlog

from dicom_node.state import db
from dicom_node.ingest.spool import Spool, content_digest
from dicom_node.results.sanitize import scrub_text

log = structlog.get_logger()

QUARANTINE_DIRNAME = "quarantine"
UNKNOWN_AE = "UNKNOWN"


def _dataset_offset(path: Path, raw: bytes) -> int:
    """Where the dataset starts in a Part 10 file (after preamble, prefix and file meta group)."""
    if raw[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    meta = pydicom.filereader.read_file_meta_info(path)
    return 132 + 12 + int(meta.FileMetaInformationGroupLength)


def _quarantine(data_dir: Path, path: Path) -> None:
    folder = data_dir / QUARANTINE_DIRNAME
    folder.mkdir(exist_ok=True)
    path.replace(folder / path.name)


def reconcile_spool(conn: sqlite3.Connection, spool: Spool) -> int:
    """Record spool files the database does not know; returns how many were recorded."""
    data_dir = conn.data_dir
    known = db.stored_paths(conn)
    recorded = 0
    for path in spool.root.rglob("*.dcm"):
        rel = path.relative_to(data_dir).as_posix()
        if rel in known:
            continue
        try:
            raw = path.read_bytes()
            offset = _dataset_offset(path, raw)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            if spool.instance_path(study, series, sop) != path:
                raise ValueError("file is not where its UIDs put it")
            record = db.InstanceRecord(
                sop_instance_uid=sop,
                series_instance_uid=series,
                study_instance_uid=study,
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                path=rel,
                digest=content_digest(raw[offset:]),
                size=len(raw) - offset,
                calling_ae=str(ds.file_meta.get("SourceApplicationEntityTitle") or UNKNOWN_AE).strip(),
            )
        except Exception as exc:  # an unreadable file: pydicom's message may quote its values
            log.warning("spool_file_quarantined", file=rel, error=type(exc).__name__, detail=scrub_text(exc)[:300], exc_info=True)
            _quarantine(data_dir, path)
            continue
        db.record_instance(conn, record)
        recorded += 1
    if recorded:
        log.warning("spool_files_recovered", instances=recorded)
    return recorded
