"""Retention: what the node deletes from ``data_dir``, and when (``[retention]`` of the config).

A node is a processing station, not an archive: the scanner (or the PACS) holds the originals,
the PACS holds the delivered results. Without deletion ``data_dir`` grows by a whole CT series a
case (about 15 GB a day at 100 series of 150 MB) and fills its disk in weeks. One pass,
:func:`apply_retention`, deletes:

- **received instances** (``spool/``) of a series ``received_days`` after it became final
  (``done``, ``failed`` or ``skipped``) and after the last delivery of its results, whichever is
  later; only when every outbox row of the series is ``delivered``. A series still
  ``receiving``/``complete``/``queued``/``running`` is never touched, nor one with a result
  ``pending``, ``orphaned`` (its destination was removed) or ``failed`` (refused for good: the
  result never reached the PACS, so the source stays for a re-run; such series are reported as
  ``held``). The ``series`` row stays, marked ``purged_at`` (see :mod:`dicom_node.state.db`), so
  ``status`` still shows what was received and what became of it.
- **result sets** (``results/<study>/<series>/v<N>/``) ``results_days`` after they were written
  and after their last delivery; only when every outbox row of their objects is ``delivered``
  (a result set made while no destination was configured has none: it is the only copy, kept
  ``results_days``). Removed sets are recorded in ``purged_results`` (owned here), so
  ``status`` stops listing them as kept. Result folders no table knows (a run overtaken by a newer
  version of its series, or one that failed half-way) and stray ``outbox/`` copies no waiting row
  refers to go after ``results_days`` too, counted by their files' modification time.
- **quarantined** spool files (``quarantine/``, unreadable files found at start-up; never
  acknowledged) ``received_days`` after they were written.

``0`` days keeps that kind forever. A pass never deletes what something still needs, and the
thresholds are read from the config at each pass (hot reload applies to the next pass).

Order of a series purge (crash safety): (1) one write transaction checks again that the series is
final, at the version seen, with nothing undelivered, and marks it ``purge_started_at``; (2) the
spool files are deleted and their folder fsynced; (3) one write transaction deletes the rows of the
instances whose file is gone, and sets ``purged_at``. Files first, because start-up recovery
(:func:`dicom_node.ops.recovery.reconcile_spool`) records every spool file that has no row: deleting
rows first and crashing would bring the half-purged series back as a new version. A crash between
(2) and (3) leaves rows of missing files only in a final series marked ``purge_started_at``, which
nothing reads (the pipeline reads queued series only); the node finishes such purges at start-up,
before it accepts associations (:func:`resume_interrupted_purges`). Result folders likewise: files
first, then the ``purged_results`` row; a crash in between is finished by the next pass. Folders
emptied by a purge are removed at the next start-up (:func:`remove_empty_folders`), not while the
node runs: the spool remembers the folders it created, and removing one under it would make the
next instance of that series fail.

A late instance for a purged series is stored as usual and re-opens the series as a new version
(``version`` + 1) that holds only the instances received since (the purged rows are gone): it is
processed when enough usable slices arrive (the whole series re-sent), else skipped by series
selection with its reason ("too few usable slices"), and ``status`` says its earlier instances
were purged (``purged_version < version``). Nothing is silently rebuilt from partial data.

Logs carry UIDs and counts only: ``series_purged``, ``results_purged``, ``retention_pass``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from dicom_node.state import db
from dicom_node.config.model import RetentionSettings
from dicom_node.delivery.outbox import DELIVERED, OUTBOX_DIR, WAITING
from dicom_node.ops.recovery import QUARANTINE_DIRNAME
from dicom_node.results.records import RESULTS_DIR, result_folder
from dicom_node.ingest.spool import SPOOL_DIRNAME, fsync_dir

log = structlog.get_logger()

DAY_SECONDS = 86400.0
ACTIVE_STATES = ("queued", "running")  # a result folder of the version being (re)built is left alone

SCHEMA = """
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
"""


# --- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgedSeries:
    series_instance_uid: str
    study_instance_uid: str
    version: int
    state: str
    files: int
    bytes: int
    errors: int = 0  # files that could not be deleted: their rows stay, the next pass tries again


@dataclass(frozen=True)
class RemovedResultSet:
    series_instance_uid: str
    version: int
    files: int
    bytes: int
    errors: int = 0


@dataclass(frozen=True)
class HeldSeries:
    """Past ``received_days`` but kept: some result is not delivered (``waiting``: state -> rows)."""

    series_instance_uid: str
    version: int
    waiting: dict[str, int]


@dataclass
class RetentionReport:
    """What one pass deleted (or, with ``dry_run``, would delete). Bytes count files whose last
    link was removed (an outbox copy hard-linked to a result file frees nothing on its own)."""

    dry_run: bool = False
    series: list[PurgedSeries] = field(default_factory=list)
    result_sets: list[RemovedResultSet] = field(default_factory=list)
    held: list[HeldSeries] = field(default_factory=list)
    held_result_sets: int = 0
    spool_files: int = 0
    result_files: int = 0
    stray_result_folders: int = 0
    outbox_files: int = 0
    quarantine_files: int = 0
    bytes_freed: int = 0
    errors: int = 0  # files that could not be deleted (kept, tried again next pass)
    seconds: float = 0.0

    @property
    def series_purged(self) -> int:
        return len(self.series)

    @property
    def files_deleted(self) -> int:
        return self.spool_files + self.result_files + self.outbox_files + self.quarantine_files

    def counts(self) -> dict:
        """The pass in numbers (what ``retention_pass`` logs)."""
        return {
            "series_purged": self.series_purged,
            "result_sets_removed": len(self.result_sets),
            "stray_result_folders": self.stray_result_folders,
            "files_deleted": self.files_deleted,
            "spool_files": self.spool_files,
            "result_files": self.result_files,
            "outbox_files": self.outbox_files,
            "quarantine_files": self.quarantine_files,
            "bytes_freed": self.bytes_freed,
            "held_series": len(self.held),
            "held_result_sets": self.held_result_sets,
            "errors": self.errors,
        }

    def to_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            **self.counts(),
            "seconds": round(self.seconds, 3),
            "series": [asdict(s) for s in self.series],
            "result_sets": [asdict(r) for r in self.result_sets],
            "held": [asdict(h) for h in self.held],
        }


# --- small helpers -------------------------------------------------------------------------------


def ensure_schema(conn: sqlite3.Connection) -> None:
    with db.locked(conn):
        conn.executescript(SCHEMA)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    with db.locked(conn):
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _cutoff(days: float, now: float) -> float | None:
    """Things final (or delivered) at or before this time are due; None: keep forever."""
    return None if not days or days <= 0 else now - days * DAY_SECONDS


def _inside(data_dir: Path, relative: str, area: str) -> Path | None:
    """``data_dir/relative`` when it lies under ``data_dir/area`` (a corrupt row never reaches out)."""
    parts = Path(relative).parts
    if not parts or parts[0] != area or ".." in parts or Path(relative).is_absolute():
        return None
    return data_dir / relative



class _Deleter:
    """Deletes (or, dry, only measures) files; counts files and the bytes freed."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.files = 0
        self.bytes = 0
        self.errors = 0

    def remove(self, path: Path) -> bool:
        """True when ``path`` is gone afterwards because of this call (missing: False)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        except OSError:
            self.errors += 1
            return False
        if not self.dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError:
                self.errors += 1
                return False
        self.files += 1
        if st.st_nlink <= 1:
            self.bytes += st.st_size
        return True

    def remove_tree(self, folder: Path) -> None:
        """Every file under ``folder``, then (not dry) its folders, deepest first."""
        if not folder.is_dir():
            return
        for root, dirs, files in os.walk(folder, topdown=False):
            for name in files:
                self.remove(Path(root) / name)
            if not self.dry_run:
                for name in dirs:
                    _rmdir(Path(root) / name)
        if not self.dry_run:
            _rmdir(folder)
            _sync(folder.parent)


def _sync(folder: Path) -> None:
    """:func:`dicom_node.ingest.spool.fsync_dir`, where a folder already gone needs nothing."""
    with contextlib.suppress(OSError):
        fsync_dir(folder)


def _rmdir(folder: Path) -> bool:
    try:
        folder.rmdir()
        return True
    except OSError:
        return False


def _newest_mtime(folder: Path) -> float:
    newest = 0.0
    for root, _dirs, files in os.walk(folder):
        for name in [*files, "."]:
            try:
                newest = max(newest, os.lstat(Path(root) / name).st_mtime)
            except OSError:
                pass
    return newest


# --- received instances --------------------------------------------------------------------------


def _outbox_by_series(conn: sqlite3.Connection) -> dict[str, dict]:
    """``{source_series_uid: {"states": {state: n}, "last_delivered": t}}`` (one scan of outbox)."""
    if not _has_table(conn, "outbox"):
        return {}
    with db.locked(conn):
        rows = conn.execute(
            "SELECT source_series_uid, state, COUNT(*), MAX(delivered_at) FROM outbox GROUP BY source_series_uid, state"
        ).fetchall()
    out: dict[str, dict] = {}
    for uid, state, n, last in rows:
        entry = out.setdefault(uid, {"states": {}, "last_delivered": None})
        entry["states"][state] = n
        if state == DELIVERED and last is not None:
            entry["last_delivered"] = max(last, entry["last_delivered"] or 0.0)
    return out


def _undelivered_rows(conn: sqlite3.Connection, series_instance_uid: str) -> int:
    if not _has_table(conn, "outbox"):
        return 0
    return conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE source_series_uid = ? AND state != ?", (series_instance_uid, DELIVERED)
    ).fetchone()[0]


def _purgeable(marks: str) -> str:
    """The SQL condition (on ``series s``) of a series whose received instances may go: final,
    no purge under way, some instances left. ``marks``: placeholders for :data:`db.FINAL_STATES`."""
    return (
        f"s.state IN ({marks}) AND s.purge_started_at IS NULL"
        " AND EXISTS (SELECT 1 FROM instances i WHERE i.series_instance_uid = s.series_instance_uid)"
    )


def due_series(conn: sqlite3.Connection, received_days: float, now: float) -> tuple[list[db.SeriesRecord], list[HeldSeries]]:
    """Series whose received instances are due for deletion, and those held back by deliveries."""
    cutoff = _cutoff(received_days, now)
    if cutoff is None:
        return [], []
    marks = ",".join("?" * len(db.FINAL_STATES))
    with db.locked(conn):
        rows = conn.execute(
            f"SELECT * FROM series s WHERE {_purgeable(marks)} AND s.updated_at <= ? ORDER BY s.updated_at",
            (*db.FINAL_STATES, cutoff),
        ).fetchall()
    if not rows:
        return [], []
    deliveries = _outbox_by_series(conn)
    due, held = [], []
    for row in rows:
        series = db._series_from_row(row)
        info = deliveries.get(series.series_instance_uid)
        if info is not None:
            waiting = {state: n for state, n in info["states"].items() if state != DELIVERED}
            if waiting:
                held.append(HeldSeries(series.series_instance_uid, series.version, waiting))
                continue
            if info["last_delivered"] is not None and info["last_delivered"] > cutoff:
                continue  # delivered recently: the clock starts at the last delivery
        due.append(series)
    return due, held


def _begin_purge(conn: sqlite3.Connection, series: db.SeriesRecord, now: float) -> tuple[float, int] | None:
    """Step 1: check again under the write lock and mark the series; (started, version) or None."""
    marks = ",".join("?" * len(db.FINAL_STATES))
    with db.write_transaction(conn):
        row = conn.execute(
            f"SELECT version FROM series s WHERE series_instance_uid = ? AND version = ? AND {_purgeable(marks)}",
            (series.series_instance_uid, series.version, *db.FINAL_STATES),
        ).fetchone()
        if row is None or _undelivered_rows(conn, series.series_instance_uid):
            return None  # re-opened, re-queued, or purged by another pass (m2unet-node purge) meanwhile
        conn.execute(
            "UPDATE series SET purge_started_at = ?, purged_at = NULL,"
            " purged_instances = CASE WHEN purged_version = ? THEN purged_instances END, purged_version = ?"
            " WHERE series_instance_uid = ?",
            (now, series.version, series.version, series.series_instance_uid),
        )
    return now, series.version


def _purge_files(conn: sqlite3.Connection, data_dir: Path, series_instance_uid: str, started: float, deleter: _Deleter) -> list[str]:
    """Step 2: delete the spool files of the instances received up to ``started``; returns their
    SOP Instance UIDs (the rows step 3 looks at)."""
    with db.locked(conn):
        rows = conn.execute(
            "SELECT sop_instance_uid, path FROM instances WHERE series_instance_uid = ? AND received_at <= ?",
            (series_instance_uid, started),
        ).fetchall()
    folders = set()
    for row in rows:
        path = _inside(data_dir, row["path"], SPOOL_DIRNAME)
        if path is not None:
            deleter.remove(path)
            folders.add(path.parent)
    if not deleter.dry_run:
        for folder in folders:
            _sync(folder)  # the deletions are durable before the rows go (no resurrection)
    return [row["sop_instance_uid"] for row in rows]


def _finish_purge(conn: sqlite3.Connection, data_dir: Path, series_instance_uid: str, sop_uids: list[str], now: float) -> int:
    """Step 3: delete the rows whose file is gone (a file written again meanwhile keeps its row);
    mark the series purged. Returns the rows deleted."""
    deleted = 0
    with db.write_transaction(conn):
        for sop in sop_uids:
            row = conn.execute(
                "SELECT path FROM instances WHERE sop_instance_uid = ? AND series_instance_uid = ?", (sop, series_instance_uid)
            ).fetchone()
            if row is None:
                continue
            path = _inside(data_dir, row["path"], SPOOL_DIRNAME)
            if path is not None and path.exists():
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


def purge_series(
    conn: sqlite3.Connection, data_dir: Path, series: db.SeriesRecord, now: float, dry_run: bool = False
) -> PurgedSeries | None:
    """Delete one due series' received instances (the three steps above); None when it moved on."""
    deleter = _Deleter(dry_run)
    if dry_run:
        _purge_files(conn, data_dir, series.series_instance_uid, now, deleter)
        return PurgedSeries(series.series_instance_uid, series.study_instance_uid, series.version, series.state, deleter.files, deleter.bytes)
    begun = _begin_purge(conn, series, now)
    if begun is None:
        return None
    started, version = begun
    sop_uids = _purge_files(conn, data_dir, series.series_instance_uid, started, deleter)
    _finish_purge(conn, data_dir, series.series_instance_uid, sop_uids, time.time())
    if deleter.errors:
        log.warning("retention_delete_failed", series_uid=series.series_instance_uid, files=deleter.errors)
    purged = PurgedSeries(
        series.series_instance_uid, series.study_instance_uid, version, series.state, deleter.files, deleter.bytes, deleter.errors
    )
    log.info(
        "series_purged",
        series_uid=purged.series_instance_uid,
        study_uid=purged.study_instance_uid,
        version=version,
        state=purged.state,
        instances=purged.files,
        bytes=purged.bytes,
    )
    return purged


def resume_interrupted_purges(conn: sqlite3.Connection, data_dir: str | Path) -> int:
    """Finish the purges a crash interrupted (series with ``purge_started_at``): delete the rest of
    the files received up to that time, then the rows. The node calls this at start-up before it
    accepts associations; each pass calls it too. Returns how many series it finished."""
    data_dir = Path(data_dir)
    with db.locked(conn):
        rows = conn.execute(
            "SELECT series_instance_uid, purge_started_at FROM series WHERE purge_started_at IS NOT NULL"
        ).fetchall()
    for row in rows:
        uid = row["series_instance_uid"]
        deleter = _Deleter(dry_run=False)
        sop_uids = _purge_files(conn, data_dir, uid, row["purge_started_at"], deleter)
        deleted = _finish_purge(conn, data_dir, uid, sop_uids, time.time())
        log.warning("series_purge_resumed", series_uid=uid, instances=deleted, files=deleter.files)
    return len(rows)


# --- results, outbox copies, quarantine ---------------------------------------------------------


def _outbox_by_sop(conn: sqlite3.Connection) -> dict[str, tuple[int, float | None]]:
    """``{sop_instance_uid: (rows not delivered, last delivered_at)}``."""
    if not _has_table(conn, "outbox"):
        return {}
    with db.locked(conn):
        rows = conn.execute(
            "SELECT sop_instance_uid, SUM(state != ?), MAX(delivered_at) FROM outbox GROUP BY sop_instance_uid", (DELIVERED,)
        ).fetchall()
    return {r[0]: (r[1] or 0, r[2]) for r in rows}


def due_result_sets(conn: sqlite3.Connection, results_days: float, now: float) -> tuple[list[dict], int]:
    """Result sets due for deletion (rows of ``results`` with their series' state), and how many
    past ``results_days`` are held because an object of theirs is not delivered."""
    cutoff = _cutoff(results_days, now)
    if cutoff is None or not _has_table(conn, "results"):
        return [], 0
    with db.locked(conn):
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
    if not rows:
        return [], 0
    deliveries = _outbox_by_sop(conn)
    due, held = [], 0
    for row in rows:
        if row["series_state"] in ACTIVE_STATES and row["series_version"] == row["version"]:
            continue  # this very version is being built again
        sops = [row["seg_sop_instance_uid"], row["sr_sop_instance_uid"], row["summary_sop_instance_uid"]]
        known = [deliveries[s] for s in sops if s and s in deliveries]
        if any(undelivered for undelivered, _ in known):
            held += 1
            continue
        last = max([t for _, t in known if t is not None], default=None)
        if last is not None and last > cutoff:
            continue
        due.append(dict(row))
    return due, held


def _remove_result_set(conn: sqlite3.Connection, data_dir: Path, row: dict, now: float, dry_run: bool) -> RemovedResultSet:
    deleter = _Deleter(dry_run)
    folder = _inside(data_dir, row["folder"], RESULTS_DIR)
    if folder is not None:
        deleter.remove_tree(folder)
    removed = RemovedResultSet(row["series_instance_uid"], row["version"], deleter.files, deleter.bytes, deleter.errors)
    if dry_run:
        return removed
    if deleter.errors:  # not recorded: the next pass tries again
        log.warning("retention_delete_failed", series_uid=removed.series_instance_uid, version=removed.version, files=deleter.errors)
        return removed
    with db.write_transaction(conn):  # after the files: a crash in between is finished next pass
        conn.execute(
            "INSERT OR REPLACE INTO purged_results (series_instance_uid, version, folder, purged_at, files, bytes)"
            " VALUES (?,?,?,?,?,?)",
            (row["series_instance_uid"], row["version"], row["folder"], now, removed.files, removed.bytes),
        )
    log.info("results_purged", series_uid=removed.series_instance_uid, version=removed.version, files=removed.files, bytes=removed.bytes)
    return removed


def _stray_result_folders(conn: sqlite3.Connection, data_dir: Path, cutoff: float) -> list[Path]:
    """``results/<study>/<series>/v<N>`` folders that no ``results`` row names, last written at or
    before ``cutoff``, and not the folder of a version being built now."""
    root = data_dir / RESULTS_DIR
    if not root.is_dir():
        return []
    known: set[str] = set()
    if _has_table(conn, "results"):
        with db.locked(conn):
            known = {r[0] for r in conn.execute("SELECT folder FROM results").fetchall()}
    busy = {
        result_folder(data_dir, s.study_instance_uid, s.series_instance_uid, s.version)
        for s in db.list_series(conn, states=ACTIVE_STATES)
    }
    stray = []
    for folder in sorted(root.glob("*/*/v*")):
        if not folder.is_dir() or folder in busy:
            continue
        if folder.relative_to(data_dir).as_posix() in known:
            continue
        if _newest_mtime(folder) <= cutoff:
            stray.append(folder)
    return stray


def _outbox_strays(conn: sqlite3.Connection, data_dir: Path, cutoff: float) -> list[Path]:
    """``outbox/`` files no pending or orphaned row needs, whose rows (if any) were settled at or
    before ``cutoff``, or, with no row, last written at or before ``cutoff``."""
    root = data_dir / OUTBOX_DIR
    if not root.is_dir():
        return []
    rows: dict[str, tuple[int, float]] = {}
    if _has_table(conn, "outbox"):
        with db.locked(conn):
            rows = {
                r[0]: (r[1] or 0, r[2] or 0.0)
                for r in conn.execute(
                    "SELECT path, SUM(state IN (?, ?)), MAX(COALESCE(delivered_at, created_at)) FROM outbox GROUP BY path",
                    WAITING,
                ).fetchall()
            }
    stray = []
    for entry in sorted(root.iterdir()):
        if not entry.is_file():
            continue
        waiting, settled = rows.get(entry.relative_to(data_dir).as_posix(), (0, None))
        if waiting:
            continue
        try:
            when = settled if settled is not None else entry.stat().st_mtime
        except OSError:
            continue
        if when <= cutoff:
            stray.append(entry)
    return stray


def _old_files(folder: Path, cutoff: float) -> list[Path]:
    if not folder.is_dir():
        return []
    old = []
    for path in sorted(folder.rglob("*")):
        try:
            if path.is_file() and path.stat().st_mtime <= cutoff:
                old.append(path)
        except OSError:
            pass
    return old


# --- one pass ------------------------------------------------------------------------------------


def apply_retention(
    conn: sqlite3.Connection,
    data_dir: str | Path,
    settings: RetentionSettings,
    now: float | None = None,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> RetentionReport:
    """One retention pass over ``data_dir`` (see the module's docstring); ``dry_run`` deletes
    nothing and reports what would go; ``stop`` (set) ends the pass early between items."""
    started = time.monotonic()
    now = time.time() if now is None else now
    data_dir = Path(data_dir)
    ensure_schema(conn)
    report = RetentionReport(dry_run=dry_run)

    def stopping() -> bool:
        return stop is not None and stop.is_set()

    if not dry_run:
        resume_interrupted_purges(conn, data_dir)

    due, report.held = due_series(conn, settings.received_days, now)
    for series in due:
        if stopping():
            break
        purged = purge_series(conn, data_dir, series, now, dry_run=dry_run)
        if purged is not None:
            report.series.append(purged)
            report.spool_files += purged.files
            report.bytes_freed += purged.bytes
            report.errors += purged.errors

    received_cutoff = _cutoff(settings.received_days, now)
    if received_cutoff is not None and not stopping():
        deleter = _Deleter(dry_run)
        for path in _old_files(data_dir / QUARANTINE_DIRNAME, received_cutoff):
            deleter.remove(path)
        report.quarantine_files, report.bytes_freed = deleter.files, report.bytes_freed + deleter.bytes
        report.errors += deleter.errors

    results_cutoff = _cutoff(settings.results_days, now)
    if results_cutoff is not None:
        sets, report.held_result_sets = due_result_sets(conn, settings.results_days, now)
        for row in sets:
            if stopping():
                break
            removed = _remove_result_set(conn, data_dir, row, now, dry_run)
            report.result_sets.append(removed)
            report.result_files += removed.files
            report.bytes_freed += removed.bytes
            report.errors += removed.errors
        if not stopping():
            deleter = _Deleter(dry_run)
            for folder in _stray_result_folders(conn, data_dir, results_cutoff):
                deleter.remove_tree(folder)
                report.stray_result_folders += 1
            report.result_files += deleter.files
            outbox = _Deleter(dry_run)
            for path in _outbox_strays(conn, data_dir, results_cutoff):
                outbox.remove(path)
            report.outbox_files = outbox.files
            report.bytes_freed += deleter.bytes + outbox.bytes
            report.errors += deleter.errors + outbox.errors

    report.seconds = time.monotonic() - started
    if not dry_run:
        _record_pass(conn, report, time.time())
    return report


def _record_pass(conn: sqlite3.Connection, report: RetentionReport, finished_at: float) -> None:
    with db.write_transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO retention_last_pass (id, finished_at, series_purged, result_sets_removed,"
            " files_deleted, bytes_freed, held_series, seconds) VALUES (1,?,?,?,?,?,?,?)",
            (
                finished_at,
                report.series_purged,
                len(report.result_sets),
                report.files_deleted,
                report.bytes_freed,
                len(report.held),
                round(report.seconds, 3),
            ),
        )


def last_pass(conn: sqlite3.Connection) -> dict | None:
    """The last pass's counts (``finished_at`` epoch seconds), or None when none ran yet."""
    if not _has_table(conn, "retention_last_pass"):
        return None
    with db.locked(conn):
        row = conn.execute("SELECT * FROM retention_last_pass WHERE id = 1").fetchone()
    if row is None:
        return None
    out = dict(row)
    out.pop("id", None)
    return out


def purged_result_sets(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    """(Series Instance UID, version) of every result set retention removed."""
    if not _has_table(conn, "purged_results"):
        return set()
    with db.locked(conn):
        return {(r[0], r[1]) for r in conn.execute("SELECT series_instance_uid, version FROM purged_results").fetchall()}


# --- start-up tidying and disk use --------------------------------------------------------------


def remove_empty_folders(data_dir: str | Path) -> int:
    """Remove empty folders under ``spool/`` and ``results/`` (never those two themselves).

    Only at start-up, before anything writes: the spool remembers the folders it made while it runs.
    Returns how many folders were removed.
    """
    removed = 0
    for area in (SPOOL_DIRNAME, RESULTS_DIR):
        root = Path(data_dir) / area
        if not root.is_dir():
            continue
        for folder, _dirs, _files in os.walk(root, topdown=False):
            if Path(folder) != root and _rmdir(Path(folder)):
                removed += 1
    return removed
