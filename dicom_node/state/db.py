"""The node's state database (``data_dir/state.sqlite3``, WAL): the connection, ingest's tables
and the contract. Every table is created by :mod:`dicom_node.state.schema` when :func:`connect`
opens the database.

Ingest owns two tables:

- ``instances``: one row per distinct SOP Instance UID received (its series, study, SOP class,
  the spool path relative to ``data_dir``, the SHA-256 of its dataset bytes, when and from whom).
- ``series``: one row per series with its ``state`` (:class:`SeriesState`), ``reason``, ``version``
  and counts.

Series life cycle: ``receiving`` (instances arriving) -> ``complete`` (quiet for ``series_timeout``;
the assembler then runs series selection) -> ``queued`` (handed to the pipeline) or ``skipped``
(reason says why) -> ``running`` (claimed by the pipeline) -> ``done`` | ``failed`` | ``skipped``.
A job stopped by a transient resource error (disk full...) goes back ``running`` -> ``queued`` with
``retry_at`` (:func:`defer_series`; not claimed before then, due at once after a restart) and a
reason that says so; ``m2unet-node retry`` puts a ``failed`` series back to ``queued``
(:func:`requeue_failed`).

A repeated SOP Instance UID (rule, :func:`record_instance`): identical dataset bytes change nothing
(the series is not touched, not even re-opened). A copy with different bytes never reaches this
module from the network: the receiver keeps the first copy and refuses the other
(:mod:`dicom_node.ingest.receive`, ``duplicate_sop_instance_conflict``); if one is recorded anyway
(start-up recovery of a spool file), it replaces the stored row like any new instance. A new
instance in a series that is no longer ``receiving`` re-opens it: state back to ``receiving``,
``version`` + 1, reason cleared; it then completes and is queued again. A late ``done``/``failed`` from a pipeline run of the older
version is ignored (see :func:`set_series_state`).

Retention (:mod:`dicom_node.ops.retention`) deletes the received instances of old, final, delivered
series: their ``instances`` rows go, the ``series`` row stays with ``purged_at``,
``purged_version`` (the version whose instances were deleted) and ``purged_instances``
(``purge_started_at`` is set while a purge is under way, so an interrupted one is finished). A
late instance re-opens a purged series like any other: the new version holds only the instances
received since (``purged_version < version`` says so), and series selection skips it when they are
too few. These columns are added to an existing database by :func:`connect` (:mod:`dicom_node.state.schema`).

Durability: ``synchronous=NORMAL`` in WAL mode. A killed process loses no commit; a power cut may
lose the last ones, which :func:`dicom_node.ops.recovery.reconcile_spool` rebuilds from the spool files
(fsynced before their rows are written) at start-up.

Writers: SQLite allows one writer at a time. Connections made by :func:`connect` carry a re-entrant
lock; every function here takes it, so one connection may be shared by pynetdicom's association
threads. Write transactions use ``BEGIN IMMEDIATE`` and a 30 s busy timeout, so writers in other
connections or processes queue instead of failing.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dicom_node.state.schema import create_schema

DB_FILENAME = "state.sqlite3"
BUSY_TIMEOUT_S = 30.0

class SeriesState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


FINAL_STATES = (SeriesState.DONE, SeriesState.FAILED, SeriesState.SKIPPED)


@dataclass(frozen=True)
class SeriesRecord:
    study_instance_uid: str
    series_instance_uid: str
    calling_ae: str
    instances: int
    state: SeriesState
    reason: str | None
    version: int
    first_received: float = 0.0
    last_received: float = 0.0
    updated_at: float = 0.0
    purged_at: float | None = None  # retention deleted the instances of purged_version then
    purged_version: int | None = None  # < version: re-opened after the purge (only newer instances)
    purged_instances: int | None = None
    retry_at: float | None = None  # queued, waiting: not claimed before this time (see defer_series)

    @property
    def purged(self) -> bool:
        """The current version's instances were deleted by retention."""
        return self.purged_at is not None and self.purged_version == self.version


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance, as stored (``path`` relative to ``data_dir``)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    digest: str
    size: int
    calling_ae: str


class StoreOutcome(str, enum.Enum):
    STORED = "stored"  # a new SOP Instance UID
    DUPLICATE = "duplicate"  # same UID, same bytes: nothing changed
    REPLACED = "replaced"  # same UID, different bytes (recovery only: the receiver keeps the first copy)


@dataclass(frozen=True)
class RecordResult:
    outcome: StoreOutcome
    series: SeriesRecord
    reopened: bool  # the series had left `receiving` and was re-opened by this instance


class NodeConnection(sqlite3.Connection):
    """A connection with the lock that makes it safe to share between threads, and the
    ``data_dir`` it was opened in (paths in the tables are relative to it)."""

    data_dir: Path

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.RLock()


def connect(data_dir: str | Path) -> NodeConnection:
    """Open (creating if needed) ``data_dir/state.sqlite3`` in WAL mode with every table of
    :mod:`dicom_node.state.schema`."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        data_dir / DB_FILENAME,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,
        check_same_thread=False,
        factory=NodeConnection,
    )
    conn.data_dir = data_dir
    conn.row_factory = sqlite3.Row
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")  # see dicom_node.ops.recovery: the spool is the truth
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    with locked(conn):
        create_schema(conn)
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. Switching an older (rollback-journal) database needs it to itself, and SQLite
    answers "locked" at once rather than waiting: retry within the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def locked(conn: sqlite3.Connection):
    """The connection's lock (connections from :func:`connect` are shared between threads)."""
    return getattr(conn, "lock", None) or contextlib.nullcontext()


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error) under the lock."""
    with locked(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def series_from_row(row) -> SeriesRecord:
    names = row.keys()
    optional = {
        name: row[name] for name in ("purged_at", "purged_version", "purged_instances", "retry_at") if name in names
    }
    return SeriesRecord(
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        calling_ae=row["calling_ae"],
        instances=row["instances"],
        state=SeriesState(row["state"]),
        reason=row["reason"],
        version=row["version"],
        first_received=row["first_received"],
        last_received=row["last_received"],
        updated_at=row["updated_at"],
        **optional,
    )


def get_series(conn: sqlite3.Connection, series_instance_uid: str) -> SeriesRecord | None:
    with locked(conn):
        row = conn.execute("SELECT * FROM series WHERE series_instance_uid = ?", (series_instance_uid,)).fetchone()
    return series_from_row(row) if row else None


def list_series(conn: sqlite3.Connection, states: tuple[SeriesState, ...] | None = None) -> list[SeriesRecord]:
    """Every series (or those in ``states``), oldest first."""
    with locked(conn):
        if states:
            marks = ",".join("?" * len(states))
            rows = conn.execute(
                f"SELECT * FROM series WHERE state IN ({marks}) ORDER BY first_received", tuple(states)
            ).fetchall()
        else:
            rows = conn.execute("SELECT * FROM series ORDER BY first_received").fetchall()
    return [series_from_row(r) for r in rows]


class StoredCopy(NamedTuple):
    """What ingest holds for a SOP Instance UID: the digest of its dataset bytes, its spool path
    (relative to ``data_dir``) and its series."""

    digest: str
    path: str
    series_instance_uid: str


def stored_instance(conn: sqlite3.Connection, sop_instance_uid: str) -> StoredCopy | None:
    """The stored copy of a SOP Instance UID, else None."""
    with locked(conn):
        row = conn.execute(
            "SELECT digest, path, series_instance_uid FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
    return StoredCopy(row["digest"], row["path"], row["series_instance_uid"]) if row else None


def _count(conn: sqlite3.Connection, series_instance_uid: str) -> int:
    return conn.execute(
        "SELECT COUNT(*) FROM instances WHERE series_instance_uid = ?", (series_instance_uid,)
    ).fetchone()[0]


def record_instance(conn: sqlite3.Connection, rec: InstanceRecord, now: float | None = None) -> RecordResult:
    """Record an instance whose file is already durable in the spool (see the module's rule)."""
    now = time.time() if now is None else now
    with write_transaction(conn):
        old = conn.execute("SELECT * FROM instances WHERE sop_instance_uid = ?", (rec.sop_instance_uid,)).fetchone()
        if old is not None and old["digest"] == rec.digest and old["path"] == rec.path:
            row = conn.execute("SELECT * FROM series WHERE series_instance_uid = ?", (old["series_instance_uid"],)).fetchone()
            return RecordResult(StoreOutcome.DUPLICATE, series_from_row(row), reopened=False)
        conn.execute(
            "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                rec.sop_instance_uid,
                rec.series_instance_uid,
                rec.study_instance_uid,
                rec.sop_class_uid,
                rec.transfer_syntax_uid,
                rec.path,
                rec.digest,
                rec.size,
                rec.calling_ae,
                now,
            ),
        )
        if old is not None and old["series_instance_uid"] != rec.series_instance_uid:
            conn.execute(
                "UPDATE series SET instances = ?, updated_at = ? WHERE series_instance_uid = ?",
                (_count(conn, old["series_instance_uid"]), now, old["series_instance_uid"]),
            )
        row = conn.execute("SELECT * FROM series WHERE series_instance_uid = ?", (rec.series_instance_uid,)).fetchone()
        reopened = False
        if row is None:
            conn.execute(
                "INSERT INTO series (series_instance_uid, study_instance_uid, calling_ae, state, reason, version,"
                " instances, first_received, last_received, updated_at) VALUES (?,?,?,?,NULL,1,1,?,?,?)",
                (rec.series_instance_uid, rec.study_instance_uid, rec.calling_ae, SeriesState.RECEIVING, now, now, now),
            )
        else:
            reopened = row["state"] != SeriesState.RECEIVING
            conn.execute(
                "UPDATE series SET instances = ?, last_received = ?, updated_at = ?, calling_ae = ?,"
                " state = ?, reason = CASE WHEN ? THEN NULL ELSE reason END, version = version + ?"
                " WHERE series_instance_uid = ?",
                (
                    _count(conn, rec.series_instance_uid),
                    now,
                    now,
                    rec.calling_ae,
                    SeriesState.RECEIVING,
                    reopened,
                    1 if reopened else 0,
                    rec.series_instance_uid,
                ),
            )
        row = conn.execute("SELECT * FROM series WHERE series_instance_uid = ?", (rec.series_instance_uid,)).fetchone()
    outcome = StoreOutcome.STORED if old is None else StoreOutcome.REPLACED
    return RecordResult(outcome, series_from_row(row), reopened)


def series_instance_paths(conn: sqlite3.Connection, series_instance_uid: str) -> list[Path]:
    """The spool files of a series' instances (absolute paths; order is not meaningful)."""
    root = conn.data_dir
    with locked(conn):
        rows = conn.execute(
            "SELECT path FROM instances WHERE series_instance_uid = ? ORDER BY sop_instance_uid", (series_instance_uid,)
        ).fetchall()
    return [root / r["path"] for r in rows]


def stored_paths(conn: sqlite3.Connection) -> set[str]:
    """Every instance's spool path (relative to ``data_dir``), for start-up recovery."""
    with locked(conn):
        return {row[0] for row in conn.execute("SELECT path FROM instances")}


def series_instances(conn: sqlite3.Connection, series_instance_uid: str) -> list[InstanceRecord]:
    with locked(conn):
        rows = conn.execute(
            "SELECT * FROM instances WHERE series_instance_uid = ? ORDER BY sop_instance_uid", (series_instance_uid,)
        ).fetchall()
    return [
        InstanceRecord(
            sop_instance_uid=r["sop_instance_uid"],
            series_instance_uid=r["series_instance_uid"],
            study_instance_uid=r["study_instance_uid"],
            sop_class_uid=r["sop_class_uid"],
            transfer_syntax_uid=r["transfer_syntax_uid"],
            path=r["path"],
            digest=r["digest"],
            size=r["size"],
            calling_ae=r["calling_ae"],
        )
        for r in rows
    ]


def complete_series(
    conn: sqlite3.Connection, series_instance_uid: str, version: int, state: SeriesState, reason: str | None = None
) -> bool:
    """The assembler's hand-off: ``receiving``/``complete`` at ``version`` -> ``state``.

    Returns False (and changes nothing) when an instance arrived meanwhile (the version moved on).
    """
    state = SeriesState(state).value
    with write_transaction(conn):
        cur = conn.execute(
            "UPDATE series SET state = ?, reason = ?, retry_at = NULL, updated_at = ?"
            " WHERE series_instance_uid = ? AND version = ? AND state IN (?, ?)",
            (
                state,
                reason,
                time.time(),
                series_instance_uid,
                version,
                SeriesState.RECEIVING,
                SeriesState.COMPLETE,
            ),
        )
        return cur.rowcount == 1


def claim_queued_series(conn: sqlite3.Connection, now: float | None = None) -> SeriesRecord | None:
    """Atomically move the oldest ``queued`` series that is not waiting (``retry_at`` unset or
    past) to ``running`` and return it (None: none due)."""
    now = time.time() if now is None else now
    with write_transaction(conn):
        row = conn.execute(
            "SELECT * FROM series WHERE state = ? AND (retry_at IS NULL OR retry_at <= ?)"
            " ORDER BY updated_at, first_received LIMIT 1",
            (SeriesState.QUEUED, now),
        ).fetchone()
        if row is None:
            return None
        conn.execute(
            "UPDATE series SET state = ?, reason = NULL, retry_at = NULL, updated_at = ? WHERE series_instance_uid = ?",
            (SeriesState.RUNNING, time.time(), row["series_instance_uid"]),
        )
        row = conn.execute("SELECT * FROM series WHERE series_instance_uid = ?", (row["series_instance_uid"],)).fetchone()
    return series_from_row(row)


def set_series_state(
    conn: sqlite3.Connection,
    series_instance_uid: str,
    state: SeriesState,
    reason: str | None = None,
    version: int | None = None,
) -> bool:
    """Set a series' state and reason; returns whether the row changed.

    With ``version`` the change applies only to that version. A series that is ``receiving``
    (re-opened by a late instance) is never moved to ``running``, ``done`` or ``failed`` here: the
    result of a run over its older version must not close the newer one.
    """
    state = SeriesState(state).value
    guarded = state in (SeriesState.RUNNING, SeriesState.DONE, SeriesState.FAILED)
    sql = "UPDATE series SET state = ?, reason = ?, updated_at = ? WHERE series_instance_uid = ?"
    args: list = [state, reason, time.time(), series_instance_uid]
    if version is not None:
        sql += " AND version = ?"
        args.append(version)
    if guarded:
        sql += " AND state != ?"
        args.append(SeriesState.RECEIVING)
    with write_transaction(conn):
        return conn.execute(sql, args).rowcount == 1


def defer_series(conn: sqlite3.Connection, series_instance_uid: str, version: int, retry_at: float, reason: str) -> bool:
    """A ``running`` series at ``version`` goes back to ``queued``, not to be claimed before
    ``retry_at`` (a transient resource error: disk full...); ``reason`` says so in ``status``.
    Returns whether it changed (not when the series moved on to a newer version meanwhile)."""
    with write_transaction(conn):
        return conn.execute(
            "UPDATE series SET state = ?, reason = ?, retry_at = ?, updated_at = ?"
            " WHERE series_instance_uid = ? AND version = ? AND state = ?",
            (SeriesState.QUEUED, reason, retry_at, time.time(), series_instance_uid, version, SeriesState.RUNNING),
        ).rowcount == 1


def requeue_failed(conn: sqlite3.Connection, series_instance_uid: str) -> bool:
    """``m2unet-node retry``: a ``failed`` series goes back to ``queued``, due at once (its job runs
    again); a ``queued`` one waiting out a resource error is made due at once. Returns whether it
    changed."""
    with write_transaction(conn):
        return conn.execute(
            "UPDATE series SET state = ?, reason = NULL, retry_at = NULL, updated_at = ?"
            " WHERE series_instance_uid = ? AND (state = ? OR (state = ? AND retry_at IS NOT NULL))",
            (SeriesState.QUEUED, time.time(), series_instance_uid, SeriesState.FAILED, SeriesState.QUEUED),
        ).rowcount == 1


def requeue_running(conn: sqlite3.Connection) -> int:
    """At start-up: series left ``running`` (or ``complete``) by a dead process go back to ``queued``.

    ``complete`` is the assembler's short step before ``queued``/``skipped``; a series caught there is
    moved back to ``receiving`` so the assembler decides again. Series waiting out a resource error
    (``retry_at``) are due at once: a restart is when space has most likely been freed. Returns how
    many series were moved (the waiting ones not counted).
    """
    now = time.time()
    with write_transaction(conn):
        conn.execute("UPDATE series SET retry_at = NULL WHERE retry_at IS NOT NULL")
        n = conn.execute(
            "UPDATE series SET state = ?, updated_at = ? WHERE state = ?",
            (SeriesState.QUEUED, now, SeriesState.RUNNING),
        ).rowcount
        n += conn.execute(
            "UPDATE series SET state = ?, updated_at = ? WHERE state = ?",
            (SeriesState.RECEIVING, now, SeriesState.COMPLETE),
        ).rowcount
    return n


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    with locked(conn):
        rows = conn.execute("SELECT state, COUNT(*) AS n FROM series GROUP BY state").fetchall()
    counts = {s.value: 0 for s in SeriesState}
    counts.update({r["state"]: r["n"] for r in rows})
    return counts


def purged_series_count(conn: sqlite3.Connection) -> int:
    """Series whose current version's instances were deleted by retention."""
    with locked(conn):
        return conn.execute(
            "SELECT COUNT(*) FROM series WHERE purged_at IS NOT NULL AND purged_version = version"
        ).fetchone()[0]
