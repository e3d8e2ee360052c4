"""Retention's reads and writes of the state database: the three steps of purging a series'
received instances (mark, delete files, delete rows: :mod:`dicom_node.ops.retention` says why in
this order) and the ``retention_last_pass`` row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from dicom_node.state import outbox
from dicom_node.state.db import FINAL_STATES, SeriesRecord, locked, series_from_row, write_transaction

_MARKS = ",".join("?" * len(FINAL_STATES))
# a series whose received instances may go: final, no purge under way, some instances left
_PURGEABLE = (
    f"s.state IN ({_MARKS}) AND s.purge_started_at IS NULL"
    " AND EXISTS (SELECT 1 FROM instances i WHERE i.series_instance_uid = s.series_instance_uid)"
)


def purgeable_series(conn: sqlite3.Connection, cutoff: float) -> list[SeriesRecord]:
    """Purgeable series last updated at or before ``cutoff``, oldest first."""
    with locked(conn):
        rows = conn.execute(
            f"SELECT * FROM series s WHERE {_PURGEABLE} AND s.updated_at <= ? ORDER BY s.updated_at",
            (*FINAL_STATES, cutoff),
        ).fetchall()
    return [series_from_row(r) for r in rows]


def begin_purge(conn: sqlite3.Connection, series: SeriesRecord, now: float) -> bool:
    """Step 1: check again under the write lock that the series (this version) is still
    purgeable with every delivery settled, and mark it (``purge_started_at``)."""
    with write_transaction(conn):
        row = conn.execute(
            f"SELECT version FROM series s WHERE series_instance_uid = ? AND version = ? AND {_PURGEABLE}",
            (series.series_instance_uid, series.version, *FINAL_STATES),
        ).fetchone()
        if row is None or outbox.undelivered_count(conn, series.series_instance_uid):
            return False
        conn.execute(
            "UPDATE series SET purge_started_at = ?, purged_at = NULL,"
            " purged_instances = CASE WHEN purged_version = ? THEN purged_instances END, purged_version = ?"
            " WHERE series_instance_uid = ?",
            (now, series.version, series.version, series.series_instance_uid),
        )
    return True


def instances_received_by(conn: sqlite3.Connection, series_instance_uid: str, started: float) -> list[tuple[str, str]]:
    """Step 2's list: ``(sop_instance_uid, path)`` of the series' instances received up to ``started``."""
    with locked(conn):
        rows = conn.execute(
            "SELECT sop_instance_uid, path FROM instances WHERE series_instance_uid = ? AND received_at <= ?",
            (series_instance_uid, started),
        ).fetchall()
    return [(r["sop_instance_uid"], r["path"]) for r in rows]


def finish_purge(
    conn: sqlite3.Connection, series_instance_uid: str, sop_uids: list[str], file_gone: Callable[[str], bool], now: float
) -> int:
    """Step 3: delete the rows among ``sop_uids`` whose file is gone (``file_gone(path)``; a file
    written again meanwhile keeps its row) and mark the series purged. Returns the rows deleted."""
    deleted = 0
    with write_transaction(conn):
        for sop in sop_uids:
            row = conn.execute(
                "SELECT path FROM instances WHERE sop_instance_uid = ? AND series_instance_uid = ?", (sop, series_instance_uid)
            ).fetchone()
            if row is None or not file_gone(row["path"]):
                continue
            conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (sop,))
            deleted += 1
        remaining = conn.execute(
            "SELECT COUNT(*) FROM instances WHERE series_instance_uid = ?", (series_instance_uid,)
        ).fetchone()[0]
        conn.execute(
            "UPDATE series SET instances = ?, purged_at = ?, purged_instances = COALESCE(purged_instances, 0) + ?,"
            " purge_started_at = NULL WHERE series_instance_uid = ?",
            (remaining, now, deleted, series_instance_uid),
        )
    return deleted


def interrupted_purges(conn: sqlite3.Connection) -> list[tuple[str, float]]:
    """``(series_instance_uid, purge_started_at)`` of the purges a crash interrupted."""
    with locked(conn):
        rows = conn.execute(
            "SELECT series_instance_uid, purge_started_at FROM series WHERE purge_started_at IS NOT NULL"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def record_pass(conn: sqlite3.Connection, finished_at: float, counts: dict[str, float]) -> None:
    """Keep the last pass's counts: ``series_purged``, ``result_sets_removed``, ``files_deleted``,
    ``bytes_freed``, ``held_series``, ``seconds``."""
    with write_transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO retention_last_pass (id, finished_at, series_purged, result_sets_removed,"
            " files_deleted, bytes_freed, held_series, seconds) VALUES (1,?,?,?,?,?,?,?)",
            (
                finished_at,
                counts["series_purged"],
                counts["result_sets_removed"],
                counts["files_deleted"],
                counts["bytes_freed"],
                counts["held_series"],
                counts["seconds"],
            ),
        )


def last_pass(conn: sqlite3.Connection) -> dict | None:
    """The last pass's counts (``finished_at`` epoch seconds), or None when none ran yet."""
    with locked(conn):
        row = conn.execute("SELECT * FROM retention_last_pass WHERE id = 1").fetchone()
    if row is None:
        return None
    out = dict(row)
    out.pop("id", None)
    return out
