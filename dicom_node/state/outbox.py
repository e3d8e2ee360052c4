"""The ``outbox`` table: one row per destination and result object to deliver (``path`` relative
to ``data_dir``), with its state (``pending``, ``delivered``, ``failed``, ``orphaned``) and its
retry schedule. :mod:`dicom_node.delivery.outbox` says what the states mean and keeps the files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from dicom_node.state.db import locked, write_transaction

PENDING, DELIVERED, FAILED, ORPHANED = "pending", "delivered", "failed", "orphaned"
WAITING = (PENDING, ORPHANED)  # not delivered yet and not given up: the outbox file is kept


def _marks(values) -> str:
    return ",".join("?" * len(values))


def known_pairs(conn: sqlite3.Connection, sop_instance_uids: list[str]) -> set[tuple[str, str]]:
    """``(destination, SOP Instance UID)`` of the rows already there for these objects."""
    with locked(conn):
        rows = conn.execute(
            f"SELECT destination, sop_instance_uid FROM outbox WHERE sop_instance_uid IN ({_marks(sop_instance_uids)})",
            tuple(sop_instance_uids),
        ).fetchall()
    return {(r["destination"], r["sop_instance_uid"]) for r in rows}


def insert_pending(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, str, str, str, str]], now: float) -> int:
    """Add ``(destination, sop_instance_uid, sop_class_uid, study_instance_uid, source_series_uid,
    path)`` rows as ``pending``, due at ``now``, in one transaction; rows already there are left as
    they are. Returns how many were added."""
    added = 0
    with write_transaction(conn):
        for row in rows:
            added += conn.execute(
                "INSERT OR IGNORE INTO outbox (destination, sop_instance_uid, sop_class_uid, study_instance_uid,"
                " source_series_uid, path, state, attempts, next_attempt, created_at) VALUES (?,?,?,?,?,?,?,0,?,?)",
                (*row, PENDING, now, now),
            ).rowcount
    return added


def due_rows(conn: sqlite3.Connection, destination: str, now: float, limit: int) -> list[sqlite3.Row]:
    """Pending rows of ``destination`` whose next attempt is due, oldest first."""
    with locked(conn):
        return conn.execute(
            "SELECT * FROM outbox WHERE state = ? AND destination = ? AND next_attempt <= ? ORDER BY id LIMIT ?",
            (PENDING, destination, now, limit),
        ).fetchall()


def next_attempt(conn: sqlite3.Connection, destinations: list[str]) -> float | None:
    """The earliest next attempt among pending rows of ``destinations`` (None: nothing pending)."""
    with locked(conn):
        return conn.execute(
            f"SELECT MIN(next_attempt) FROM outbox WHERE state = ? AND destination IN ({_marks(destinations)})",
            (PENDING, *destinations),
        ).fetchone()[0]


def waiting_destinations(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """``(destination, state)`` of every destination with pending or orphaned rows."""
    with locked(conn):
        rows = conn.execute("SELECT DISTINCT destination, state FROM outbox WHERE state IN (?, ?)", WAITING).fetchall()
    return [(r["destination"], r["state"]) for r in rows]


def orphan_and_restore(
    conn: sqlite3.Connection, to_orphan: list[str], to_restore: list[str], reason: Callable[[str], str], now: float
) -> tuple[dict[str, int], dict[str, int]]:
    """Pending rows of ``to_orphan`` become ``orphaned`` (``last_error = reason(destination)``);
    orphaned rows of ``to_restore`` become ``pending``, due at ``now``. Returns the counts moved,
    ``{destination: rows}`` each."""
    orphaned: dict[str, int] = {}
    restored: dict[str, int] = {}
    with write_transaction(conn):
        for destination in to_orphan:
            n = conn.execute(
                "UPDATE outbox SET state = ?, last_error = ? WHERE state = ? AND destination = ?",
                (ORPHANED, reason(destination), PENDING, destination),
            ).rowcount
            if n:
                orphaned[destination] = n
        for destination in to_restore:
            n = conn.execute(
                "UPDATE outbox SET state = ?, last_error = NULL, next_attempt = ? WHERE state = ? AND destination = ?",
                (PENDING, now, ORPHANED, destination),
            ).rowcount
            if n:
                restored[destination] = n
    return orphaned, restored


def set_delivered(conn: sqlite3.Connection, item_id: int, now: float) -> None:
    with write_transaction(conn):
        conn.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = NULL, delivered_at = ? WHERE id = ?",
            (DELIVERED, now, item_id),
        )


def set_retry(conn: sqlite3.Connection, item_id: int, error: str, delay: Callable[[int], float], now: float) -> float:
    """Count a failed attempt of a pending row and schedule the next one after ``delay(attempts)``
    seconds; returns that delay."""
    with write_transaction(conn):
        attempts = conn.execute("SELECT attempts FROM outbox WHERE id = ?", (item_id,)).fetchone()[0] + 1
        seconds = delay(attempts)
        conn.execute(
            "UPDATE outbox SET attempts = ?, last_error = ?, next_attempt = ? WHERE id = ? AND state = ?",
            (attempts, error, now + seconds, item_id, PENDING),
        )
    return seconds


def set_failed(conn: sqlite3.Connection, item_id: int, reason: str) -> None:
    with write_transaction(conn):
        conn.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ? WHERE id = ?", (FAILED, reason, item_id)
        )


def failed_rows(conn: sqlite3.Connection, source_series_uid: str) -> list[sqlite3.Row]:
    with locked(conn):
        return conn.execute(
            "SELECT * FROM outbox WHERE source_series_uid = ? AND state = ? ORDER BY id", (source_series_uid, FAILED)
        ).fetchall()


def requeue_failed(conn: sqlite3.Connection, rows: list[sqlite3.Row], now: float) -> dict[str, int]:
    """The ``failed`` rows among ``rows`` become ``pending``, due at ``now``, attempts reset;
    returns ``{destination: rows}``."""
    retried: dict[str, int] = {}
    with write_transaction(conn):
        for row in rows:
            if conn.execute(
                "UPDATE outbox SET state = ?, attempts = 0, next_attempt = ?, last_error = NULL WHERE id = ? AND state = ?",
                (PENDING, now, row["id"], FAILED),
            ).rowcount:
                retried[row["destination"]] = retried.get(row["destination"], 0) + 1
    return retried


def unneeded_path(conn: sqlite3.Connection, item_id: int) -> str | None:
    """The row's ``path`` when no row waits for that file any more (None: one still does)."""
    with locked(conn):
        row = conn.execute("SELECT path FROM outbox WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        left = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE path = ? AND state IN (?, ?)", (row["path"], *WAITING)
        ).fetchone()[0]
    return row["path"] if left == 0 else None


def state_counts(conn: sqlite3.Connection, source_series_uid: str | None = None) -> dict[str, int]:
    """``{state: rows}``, of one series' objects or of all."""
    with locked(conn):
        if source_series_uid is None:
            rows = conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        else:
            rows = conn.execute(
                "SELECT state, COUNT(*) FROM outbox WHERE source_series_uid = ? GROUP BY state", (source_series_uid,)
            ).fetchall()
    return {state: n for state, n in rows}


def unsettled_rows(conn: sqlite3.Connection) -> list[dict]:
    """Pending, orphaned and failed rows for ``status``, oldest first."""
    with locked(conn):
        rows = conn.execute(
            "SELECT destination, sop_instance_uid, state, attempts, last_error, next_attempt FROM outbox"
            " WHERE state IN (?, ?, ?) ORDER BY id",
            (PENDING, ORPHANED, FAILED),
        ).fetchall()
    return [dict(r) for r in rows]


# --- what retention asks of the outbox -----------------------------------------------------------


def by_series(conn: sqlite3.Connection) -> list[tuple[str, str, int, float | None]]:
    """``(source_series_uid, state, rows, last delivered_at)`` for every series and state."""
    with locked(conn):
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT source_series_uid, state, COUNT(*), MAX(delivered_at) FROM outbox GROUP BY source_series_uid, state"
            ).fetchall()
        ]


def undelivered_count(conn: sqlite3.Connection, source_series_uid: str) -> int:
    """Rows of the series' objects not delivered (the caller holds the lock, in a transaction)."""
    return conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE source_series_uid = ? AND state != ?", (source_series_uid, DELIVERED)
    ).fetchone()[0]


def by_sop(conn: sqlite3.Connection) -> dict[str, tuple[int, float | None]]:
    """``{sop_instance_uid: (rows not delivered, last delivered_at)}``."""
    with locked(conn):
        rows = conn.execute(
            "SELECT sop_instance_uid, SUM(state != ?), MAX(delivered_at) FROM outbox GROUP BY sop_instance_uid", (DELIVERED,)
        ).fetchall()
    return {r[0]: (r[1] or 0, r[2]) for r in rows}


def by_path(conn: sqlite3.Connection) -> dict[str, tuple[int, float]]:
    """``{path: (rows waiting, when last settled)}`` (settled: delivered, else created)."""
    with locked(conn):
        rows = conn.execute(
            "SELECT path, SUM(state IN (?, ?)), MAX(COALESCE(delivered_at, created_at)) FROM outbox GROUP BY path", WAITING
        ).fetchall()
    return {r[0]: (r[1] or 0, r[2] or 0.0) for r in rows}
