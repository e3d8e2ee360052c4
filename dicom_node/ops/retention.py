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
from dicom_node.delivery.outbox import OUTBOX_DIR
from dicom_node.ops.recovery import QUARANTINE_DIRNAME
from dicom_node.results.records import RESULTS_DIR, result_folder
from dicom_node.durable import fsync_dir
from dicom_node.ingest.spool import SPOOL_DIRNAME
from dicom_node.state import outbox as outbox_table
from dicom_node.state import results as results_state
from dicom_node.state import retention as retention_state
from dicom_node.state.outbox import DELIVERED

log = structlog.get_logger()

DAY_SECONDS = 86400.0
ACTIVE_STATES = (db.SeriesState.QUEUED, db.SeriesState.RUNNING)  # a result folder of the version being (re)built is left alone

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
    """:func:`dicom_node.durable.fsync_dir`, where a folder already gone needs nothing."""
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
    out: dict[str, dict] = {}
    for uid, state, n, last in outbox_table.by_series(conn):
        entry = out.setdefault(uid, {"states": {}, "last_delivered": None})
        entry["states"][state] = n
        if state == DELIVERED and last is not None:
            entry["last_delivered"] = max(last, entry["last_delivered"] or 0.0)
    return out


def due_series(conn: sqlite3.Connection, received_days: float, now: float) -> tuple[list[db.SeriesRecord], list[HeldSeries]]:
    """Series whose received instances are due for deletion, and those held back by deliveries."""
    cutoff = _cutoff(received_days, now)
    if cutoff is None:
        return [], []
    candidates = retention_state.purgeable_series(conn, cutoff)
    if not candidates:
        return [], []
    deliveries = _outbox_by_series(conn)
    due, held = [], []
    for series in candidates:
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


def _purge_files(conn: sqlite3.Connection, data_dir: Path, series_instance_uid: str, started: float, deleter: _Deleter) -> list[str]:
    """Step 2: delete the spool files of the instances received up to ``started``; returns their
    SOP Instance UIDs (the rows step 3 looks at)."""
    rows = retention_state.instances_received_by(conn, series_instance_uid, started)
    folders = set()
    for _sop, relative in rows:
        path = _inside(data_dir, relative, SPOOL_DIRNAME)
        if path is not None:
            deleter.remove(path)
            folders.add(path.parent)
    if not deleter.dry_run:
        for folder in folders:
            _sync(folder)  # the deletions are durable before the rows go (no resurrection)
    return [sop for sop, _relative in rows]


def _finish_purge(conn: sqlite3.Connection, data_dir: Path, series_instance_uid: str, sop_uids: list[str], now: float) -> int:
    """Step 3: delete the rows whose file is gone (a file written again meanwhile keeps its row);
    mark the series purged. Returns the rows deleted."""

    def file_gone(relative: str) -> bool:
        path = _inside(data_dir, relative, SPOOL_DIRNAME)
        return path is None or not path.exists()

    return retention_state.finish_purge(conn, series_instance_uid, sop_uids, file_gone, now)


def purge_series(
    conn: sqlite3.Connection, data_dir: Path, series: db.SeriesRecord, now: float, dry_run: bool = False
) -> PurgedSeries | None:
    """Delete one due series' received instances (the three steps above); None when it moved on."""
    deleter = _Deleter(dry_run)
    if dry_run:
        _purge_files(conn, data_dir, series.series_instance_uid, now, deleter)
        return PurgedSeries(series.series_instance_uid, series.study_instance_uid, series.version, series.state, deleter.files, deleter.bytes)
    if not retention_state.begin_purge(conn, series, now):
        return None  # re-opened, re-queued, or purged by another pass (m2unet-node purge) meanwhile
    started, version = now, series.version
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
    rows = retention_state.interrupted_purges(conn)
    for uid, purge_started_at in rows:
        deleter = _Deleter(dry_run=False)
        sop_uids = _purge_files(conn, data_dir, uid, purge_started_at, deleter)
        deleted = _finish_purge(conn, data_dir, uid, sop_uids, time.time())
        log.warning("series_purge_resumed", series_uid=uid, instances=deleted, files=deleter.files)
    return len(rows)


# --- results, outbox copies, quarantine ---------------------------------------------------------


def due_result_sets(conn: sqlite3.Connection, results_days: float, now: float) -> tuple[list[dict], int]:
    """Result sets due for deletion (rows of ``results`` with their series' state), and how many
    past ``results_days`` are held because an object of theirs is not delivered."""
    cutoff = _cutoff(results_days, now)
    if cutoff is None:
        return [], 0
    rows = results_state.due_result_rows(conn, cutoff)
    if not rows:
        return [], 0
    deliveries = outbox_table.by_sop(conn)
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
        due.append(row)
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
    # after the files: a crash in between is finished next pass
    results_state.record_purged_result_set(
        conn, row["series_instance_uid"], row["version"], row["folder"], now, removed.files, removed.bytes
    )
    log.info("results_purged", series_uid=removed.series_instance_uid, version=removed.version, files=removed.files, bytes=removed.bytes)
    return removed


def _stray_result_folders(conn: sqlite3.Connection, data_dir: Path, cutoff: float) -> list[Path]:
    """``results/<study>/<series>/v<N>`` folders that no ``results`` row names, last written at or
    before ``cutoff``, and not the folder of a version being built now."""
    root = data_dir / RESULTS_DIR
    if not root.is_dir():
        return []
    known = results_state.result_folders(conn)
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
    rows = outbox_table.by_path(conn)
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
    retention_state.record_pass(
        conn,
        finished_at,
        {
            "series_purged": report.series_purged,
            "result_sets_removed": len(report.result_sets),
            "files_deleted": report.files_deleted,
            "bytes_freed": report.bytes_freed,
            "held_series": len(report.held),
            "seconds": round(report.seconds, 3),
        },
    )


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
