"""The durable outbox: every result object to deliver, per destination, until it is delivered.

Storage (all under ``data_dir``): the table ``outbox`` in ``state.sqlite3`` (one row per
destination and SOP Instance UID, unique) and the files under ``data_dir/outbox/`` (a hard link,
or a copy, of the result file, so the sender never reads the pipeline's folders). Row states:

- ``pending``: to be sent at ``next_attempt`` (epoch seconds); ``attempts`` and ``last_error``
  say what happened so far;
- ``delivered``: the destination acknowledged it (C-STORE success or warning); never sent again,
  even when the same object is enqueued again (a job re-run after a crash rebuilds identical
  objects with the same UIDs, and enqueueing is ``INSERT OR IGNORE``);
- ``failed``: refused permanently (see ``sender``); kept with its reason for ``status``;
  ``m2unet-node retry SERIES_UID`` makes it ``pending`` again (:func:`retry_failed`);
- ``orphaned``: was pending for a destination that is no longer in the config (``dest remove``
  or an edit). The sender marks them on its next pass (:func:`reconcile_destinations`), with
  ``last_error`` saying so; nothing is deleted (neither the outbox file nor the result folder),
  and when a destination of that name is configured again (hot reload) its orphaned items
  become ``pending`` again, due at once, and are sent to it. Delivered and failed items are
  left as they are.

Retries wait ``retry_initial * 2 ** (attempts - 1)`` seconds, capped at ``retry_max``
(:func:`backoff_delay`); the schedule is in the table, so it survives restarts.

No destination configured: nothing is enqueued; the results stay in their folder under
``data_dir/results/`` (recorded by the pipeline in the table ``results``) and
:func:`delivery_summary` lists them under ``kept`` so ``status`` can say where they are.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_node.durable import link_or_copy
from dicom_node.state import outbox as table
from dicom_node.state.outbox import DELIVERED, FAILED, ORPHANED, PENDING, WAITING  # noqa: F401 - the row states

OUTBOX_DIR = "outbox"

def removed_reason(destination: str) -> str:
    """``last_error`` of an orphaned item."""
    return (
        f"destination {destination!r} removed from the configuration; kept, and sent if a destination "
        f"{destination!r} is configured again"
    )

# callbacks run after each enqueue that added rows (the sender's wake(): no wait for its next poll)
_listeners: list = []
_listeners_lock = threading.Lock()


def add_listener(callback) -> None:
    with _listeners_lock:
        _listeners.append(callback)


def remove_listener(callback) -> None:
    with _listeners_lock:
        if callback in _listeners:
            _listeners.remove(callback)


@dataclass(frozen=True)
class OutboxObject:
    """One result file to deliver."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    source_series_uid: str


@dataclass(frozen=True)
class OutboxItem:
    id: int
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path  # absolute
    attempts: int
    last_error: str | None



def backoff_delay(attempts: int, initial: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, ...)."""
    if attempts < 1:
        return 0.0
    return float(min(initial * 2 ** min(attempts - 1, 60), cap))


def _outbox_file(data_dir: Path, obj: OutboxObject) -> Path:
    target = data_dir / OUTBOX_DIR / f"{obj.sop_instance_uid}.dcm"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    link_or_copy(obj.path, target)
    return target


def _notify() -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for callback in listeners:
        callback()


def enqueue(conn: sqlite3.Connection, objects: list[OutboxObject], destinations: list[str], now: float | None = None) -> int:
    """Queue each object for each destination; an object already queued, delivered or failed
    for a destination is left as it is. Returns the number of new rows."""
    if not destinations or not objects:
        return 0
    now = time.time() if now is None else now
    data_dir = conn.data_dir
    known = table.known_pairs(conn, [obj.sop_instance_uid for obj in objects])
    wanted = {
        obj.sop_instance_uid: [d for d in destinations if (d, obj.sop_instance_uid) not in known] for obj in objects
    }
    # the file first, then the rows: a crash in between leaves a stray file, never a row without one
    files = {obj.sop_instance_uid: _outbox_file(data_dir, obj) for obj in objects if wanted[obj.sop_instance_uid]}
    rows = [
        (destination, obj.sop_instance_uid, obj.sop_class_uid, obj.study_instance_uid, obj.source_series_uid,
         files[obj.sop_instance_uid].relative_to(data_dir).as_posix())
        for obj in objects
        for destination in wanted[obj.sop_instance_uid]
    ]
    added = table.insert_pending(conn, rows, now) if rows else 0
    if added:
        _notify()
    return added


def _item(row, data_dir: Path) -> OutboxItem:
    return OutboxItem(
        id=row["id"],
        destination=row["destination"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        path=data_dir / row["path"],
        attempts=row["attempts"],
        last_error=row["last_error"],
    )


def due_items(conn: sqlite3.Connection, destination: str, now: float | None = None, limit: int = 100) -> list[OutboxItem]:
    """Pending items of ``destination`` whose next attempt is due, oldest first."""
    now = time.time() if now is None else now
    return [_item(r, conn.data_dir) for r in table.due_rows(conn, destination, now, limit)]


def next_due(conn: sqlite3.Connection, destinations: list[str]) -> float | None:
    """The earliest next attempt among pending items of ``destinations`` (None: nothing pending)."""
    return table.next_attempt(conn, destinations) if destinations else None


def reconcile_destinations(
    conn: sqlite3.Connection, configured: list[str] | tuple[str, ...], now: float | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """Pending items of destinations not in ``configured`` become ``orphaned``; orphaned items of
    destinations in ``configured`` become ``pending`` again, due at ``now``. Returns
    ``(orphaned, restored)``, each ``{destination: objects}``. One read when there is nothing to do
    (the sender calls this on every pass)."""
    now = time.time() if now is None else now
    names = set(configured)
    rows = table.waiting_destinations(conn)
    to_orphan = sorted({d for d, state in rows if state == PENDING and d not in names})
    to_restore = sorted({d for d, state in rows if state == ORPHANED and d in names})
    if not to_orphan and not to_restore:
        return {}, {}
    return table.orphan_and_restore(conn, to_orphan, to_restore, removed_reason, now)


def mark_delivered(conn: sqlite3.Connection, item_id: int, now: float | None = None) -> None:
    table.set_delivered(conn, item_id, time.time() if now is None else now)
    _drop_file_if_done(conn, item_id)


def mark_retry(
    conn: sqlite3.Connection, item_id: int, error: str, initial: float, cap: float, now: float | None = None
) -> float:
    """Count a failed attempt and schedule the next one; returns the delay chosen."""
    now = time.time() if now is None else now
    return table.set_retry(conn, item_id, error, lambda attempts: backoff_delay(attempts, initial, cap), now)


def mark_failed(conn: sqlite3.Connection, item_id: int, reason: str) -> None:
    table.set_failed(conn, item_id, reason)
    _drop_file_if_done(conn, item_id)


@dataclass(frozen=True)
class RetriedDeliveries:
    """What :func:`retry_failed` did: rows made ``pending`` again (``{destination: objects}``) and
    the SOP Instance UIDs it could not retry because their result file is gone."""

    retried: dict[str, int]
    missing: list[str]


def retry_failed(
    conn: sqlite3.Connection, source_series_uid: str, originals: dict[str, Path], now: float | None = None
) -> RetriedDeliveries:
    """``m2unet-node retry``: the ``failed`` rows of a series' objects become ``pending`` again, due
    at ``now`` with their attempts reset; their outbox file (removed when they failed) is made again
    from ``originals`` (``{SOP Instance UID: result file}``). Rows whose file is in neither place
    stay ``failed`` and are listed in ``missing``."""
    now = time.time() if now is None else now
    data_dir = conn.data_dir
    ready, missing = [], []
    for row in table.failed_rows(conn, source_series_uid):
        if not (data_dir / row["path"]).exists():
            original = originals.get(row["sop_instance_uid"])
            if original is None or not original.exists():
                missing.append(row["sop_instance_uid"])
                continue
            _outbox_file(
                data_dir,
                OutboxObject(original, row["sop_class_uid"], row["sop_instance_uid"], row["study_instance_uid"], source_series_uid),
            )
        ready.append(row)
    retried = table.requeue_failed(conn, ready, now)
    if retried:
        _notify()
    return RetriedDeliveries(retried, sorted(set(missing)))


def _drop_file_if_done(conn: sqlite3.Connection, item_id: int) -> None:
    """Remove the outbox file once no destination still waits for it (pending or orphaned; the
    result folder keeps the original)."""
    path = table.unneeded_path(conn, item_id)
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            (conn.data_dir / path).unlink()


def delivery_summary(conn: sqlite3.Connection) -> dict:
    """For ``m2unet-node status``:

    ``{"pending": n, "failed": n, "delivered": n, "orphaned": n,
       "items": [{"destination", "sop_instance_uid", "state", "attempts", "last_error",
                  "next_attempt"}, ...],          # pending, orphaned and failed rows, oldest first
       "results_dir": "<data_dir>/results",
       "kept": [{"study_instance_uid", "series_instance_uid", "version", "folder"}, ...]}``

    ``kept`` lists the result sets produced while no destination was configured: they stay in
    their folder under ``results_dir``.
    """
    from dicom_node.results.records import kept_results, results_dir

    counts = table.state_counts(conn)
    rows = table.unsettled_rows(conn)
    return {
        "pending": counts.get(PENDING, 0),
        "failed": counts.get(FAILED, 0),
        "delivered": counts.get(DELIVERED, 0),
        "orphaned": counts.get(ORPHANED, 0),
        "items": rows,
        "results_dir": str(results_dir(conn.data_dir)),
        "kept": kept_results(conn),
    }
