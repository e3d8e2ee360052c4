"""The Celery executor's tables: ``tasks`` (one row per series version handed to the broker) and
``workers`` (each worker seen, with its heartbeat).

The series' own state in ``series`` stays the truth; a task row only says what was published and
who took it. A queued series is published when it has no task row for its version, when it was
queued again after its last publication (a deferral after a full disk, ``m2unet-node retry``), or
when its task was published ``republish_after`` seconds ago and no worker has started it (the
broker lost the message). A worker takes a task only while the series version is ``queued``, or
``running`` on a worker that stopped sending heartbeats (it died and the broker redelivered its
task), so a duplicate message finds nothing to do.
"""

from __future__ import annotations

import sqlite3
import time

from dicom_node.state.db import SeriesRecord, SeriesState, locked, series_from_row, write_transaction


def due_for_publishing(conn: sqlite3.Connection, republish_after: float, now: float | None = None) -> list[SeriesRecord]:
    """Queued series, not waiting out a retry time, whose version needs a (new) task."""
    now = time.time() if now is None else now
    with locked(conn):
        rows = conn.execute(
            "SELECT s.* FROM series s LEFT JOIN tasks t"
            " ON t.series_instance_uid = s.series_instance_uid AND t.version = s.version"
            " WHERE s.state = ? AND (s.retry_at IS NULL OR s.retry_at <= ?)"
            " AND (t.task_id IS NULL OR t.published_at < s.updated_at"
            "      OR (t.started_at IS NULL AND t.published_at <= ?) OR t.finished_at IS NOT NULL)"
            " ORDER BY s.updated_at, s.first_received",
            (SeriesState.QUEUED, now, now - republish_after),
        ).fetchall()
    return [series_from_row(r) for r in rows]


def record_published(conn: sqlite3.Connection, series: SeriesRecord, task_id: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO tasks (series_instance_uid, version, task_id, published_at) VALUES (?,?,?,?)"
            " ON CONFLICT (series_instance_uid, version) DO UPDATE SET task_id = excluded.task_id,"
            " published_at = excluded.published_at, publications = publications + 1, started_at = NULL,"
            " finished_at = NULL, outcome = NULL",
            (series.series_instance_uid, series.version, task_id, now),
        )


BUSY = "busy"  # what take() returns for a series running on a live worker


def take(
    conn: sqlite3.Connection, series_instance_uid: str, version: int, worker: str, lost_before: float,
    now: float | None = None,
) -> SeriesRecord | str | None:
    """Start the job of this series version on ``worker``: ``queued`` -> ``running``, or a
    ``running`` version taken over when the worker running it was last seen before ``lost_before``
    (it died; the broker redelivered its task). :data:`BUSY`: it runs on a live worker (ask again
    later); None: nothing to do (another version, or already done or failed)."""
    now = time.time() if now is None else now
    with write_transaction(conn):
        row = conn.execute(
            "SELECT s.state, t.worker, w.last_seen FROM series s"
            " LEFT JOIN tasks t ON t.series_instance_uid = s.series_instance_uid AND t.version = s.version"
            " LEFT JOIN workers w ON w.name = t.worker"
            " WHERE s.series_instance_uid = ? AND s.version = ?",
            (series_instance_uid, version),
        ).fetchone()
        if row is None:
            return None
        state, holder, seen = row
        if state == SeriesState.RUNNING:
            if holder is not None and holder != worker and seen is not None and seen >= lost_before:
                return BUSY
        elif state != SeriesState.QUEUED:
            return None
        conn.execute(
            "UPDATE series SET state = ?, reason = NULL, retry_at = NULL, updated_at = ? WHERE series_instance_uid = ?",
            (SeriesState.RUNNING, now, series_instance_uid),
        )
        conn.execute(
            "UPDATE tasks SET started_at = ?, worker = ?, deliveries = deliveries + 1"
            " WHERE series_instance_uid = ? AND version = ?",
            (now, worker, series_instance_uid, version),
        )
        conn.execute("UPDATE workers SET current_series = ? WHERE name = ?", (series_instance_uid, worker))
        row = conn.execute("SELECT * FROM series WHERE series_instance_uid = ?", (series_instance_uid,)).fetchone()
    return series_from_row(row)


def requeue_lost(conn: sqlite3.Connection, lost_before: float, now: float | None = None) -> list[str]:
    """Series ``running`` on a worker last seen before ``lost_before`` go back to ``queued`` (and
    are published again); returns their Series Instance UIDs."""
    now = time.time() if now is None else now
    lost = (
        "SELECT s.series_instance_uid FROM series s"
        " JOIN tasks t ON t.series_instance_uid = s.series_instance_uid AND t.version = s.version"
        " LEFT JOIN workers w ON w.name = t.worker"
        " WHERE s.state = ? AND t.started_at IS NOT NULL AND t.finished_at IS NULL"
        " AND (w.last_seen IS NULL OR w.last_seen < ?)"
    )
    with locked(conn):  # a read first: the dispatcher asks twice a second, and nearly always nothing is lost
        if conn.execute(lost + " LIMIT 1", (SeriesState.RUNNING, lost_before)).fetchone() is None:
            return []
    with write_transaction(conn):
        uids = [r[0] for r in conn.execute(lost, (SeriesState.RUNNING, lost_before)).fetchall()]
        for uid in uids:
            conn.execute(
                "UPDATE series SET state = ?, reason = ?, updated_at = ? WHERE series_instance_uid = ? AND state = ?",
                (SeriesState.QUEUED, "queued again: its worker stopped answering", now, uid, SeriesState.RUNNING),
            )
    return uids


def finish(conn: sqlite3.Connection, series_instance_uid: str, version: int, worker: str, outcome: str,
           now: float | None = None) -> None:
    """The job ended with ``outcome`` (``done``, ``failed``, ``waiting``, ``stale``)."""
    now = time.time() if now is None else now
    with write_transaction(conn):
        conn.execute(
            "UPDATE tasks SET finished_at = ?, outcome = ? WHERE series_instance_uid = ? AND version = ?",
            (now, outcome, series_instance_uid, version),
        )
        conn.execute(
            "UPDATE workers SET current_series = NULL, tasks_done = tasks_done + 1, last_seen = ? WHERE name = ?",
            (now, worker),
        )


def heartbeat(conn: sqlite3.Connection, worker: str, device: str, pid: int, started_at: float,
              now: float | None = None) -> None:
    now = time.time() if now is None else now
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO workers (name, device, pid, started_at, last_seen) VALUES (?,?,?,?,?)"
            " ON CONFLICT (name) DO UPDATE SET device = excluded.device, pid = excluded.pid,"
            " started_at = excluded.started_at, last_seen = excluded.last_seen",
            (worker, device, pid, started_at, now),
        )


def workers(conn: sqlite3.Connection) -> list[dict]:
    """Every worker seen: ``name``, ``device``, ``pid``, ``started_at``, ``last_seen``,
    ``tasks_done``, ``current_series``."""
    with locked(conn):
        return [dict(r) for r in conn.execute("SELECT * FROM workers ORDER BY name").fetchall()]


def task_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """``queued`` (published, not started), ``running`` (started, not finished), ``retried``
    (published or delivered more than once), ``finished``."""
    with locked(conn):
        row = conn.execute(
            "SELECT SUM(started_at IS NULL AND finished_at IS NULL), SUM(started_at IS NOT NULL AND finished_at IS NULL),"
            " SUM(publications > 1 OR deliveries > 1), SUM(finished_at IS NOT NULL) FROM tasks"
        ).fetchone()
    return {name: int(value or 0) for name, value in zip(("queued", "running", "retried", "finished"), row)}
