"""The assembler: decides when a series is complete and hands it to the pipeline queue.

Rule: a series is complete ``series_timeout`` seconds after its last new instance, where the
timeout is the sending source's ``[[sources]] series_timeout`` if set, else ``[node]
series_timeout`` (read from the live config when the timer fires). Each series has one
APScheduler job; when it fires it compares against the database's ``last_received`` and re-arms
itself if an instance came meanwhile, so receiving an instance costs no scheduler work.

On completion the series goes ``complete``, series selection reads its instance headers, and it
becomes ``queued`` (the pipeline's hand-off) or ``skipped`` with the reason (for example too few
usable slices). An instance arriving after completion re-opens the series (``receiving``,
``version`` + 1, see :mod:`dicom_node.state.db`): it completes again after a new quiet period and is
re-queued, so the results cover every instance.

After a restart :meth:`Assembler.start` re-arms a timer for every series still ``receiving``, due
at its last instance plus the timeout (at once if that is past).

A completion that raises (a header selection cannot make sense of, a database error) is logged
with its traceback (``series_completion_failed``, with ``attempt``) and tried again after
``COMPLETION_RETRY_S``; a series left ``complete`` by a failed selection resumes at selection.
After ``MAX_COMPLETION_FAILURES`` failures of one series in a row it is ``failed`` with the
reason ("completion failed 3 times: ValueError: ...") and ``series_completion_abandoned`` is
logged once; a late instance re-opens it as usual. Transient resource errors (a full disk:
:mod:`dicom_node.pipeline.resource_errors`) say nothing about the series: they are retried
without being counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.state import db
from dicom_node.ingest.access import series_timeout_for
from dicom_node.config.model import NodeConfig
from dicom_node.series.frames import frames_of
from dicom_node.series.selection import Exclusion, Selection, select_frames
from dicom_node.pipeline.resource_errors import transient_resource_error
from dicom_node.results.sanitize import scrub_text

log = structlog.get_logger()

COMPLETION_RETRY_S = 5.0  # wait before a failed completion is tried again
MAX_COMPLETION_FAILURES = 3  # failures of one series in a row before it is marked failed


def select_series_files(paths: list[Path]) -> Selection:
    """Series selection from the instance headers alone (pixel data is not read)."""
    frames, unreadable = [], []
    for p in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            frames += frames_of(ds, p)
        except Exception:
            unreadable.append(Exclusion(p.name, None, "unreadable"))
    selection = select_frames(frames)
    if unreadable:
        selection = Selection(selection.usable, selection.excluded + unreadable, selection.skip_reason)
    return selection


class Assembler:
    """Per-series completion timers; ``start()``/``stop()``; :meth:`instance_arrived` from the SCP."""

    def __init__(self, data_dir: str | Path, config_provider: Callable[[], NodeConfig]) -> None:
        self.config_provider = config_provider
        self.conn = db.connect(data_dir)
        self.scheduler = BackgroundScheduler(timezone=timezone.utc, job_defaults={"misfire_grace_time": None, "coalesce": True})
        self._armed: set[str] = set()
        self._failures: dict[str, int] = {}  # series UID -> completions failed in a row
        self._lock = threading.Lock()

    def start(self) -> None:
        self.scheduler.start()
        resumed = db.list_series(self.conn, states=(db.SeriesState.RECEIVING,))
        for series in resumed:
            self._arm(series.series_instance_uid, self._due(series))
        log.info("assembler_started", resumed_series=len(resumed))

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)
        self.conn.close()

    def _timeout(self, calling_ae: str) -> float:
        return series_timeout_for(self.config_provider(), calling_ae)

    def _due(self, series: db.SeriesRecord) -> float:
        return series.last_received + self._timeout(series.calling_ae)

    def _arm(self, series_uid: str, due: float) -> None:
        with self._lock:
            self._armed.add(series_uid)
            self.scheduler.add_job(
                self._fire,
                "date",
                run_date=datetime.fromtimestamp(max(due, time.time()), tz=timezone.utc) + timedelta(milliseconds=5),
                args=[series_uid],
                id=series_uid,
                replace_existing=True,
            )

    def instance_arrived(self, record: db.RecordResult) -> None:
        """Called after each new or replaced instance is durable; arms the series' timer if needed."""
        series = record.series
        if record.reopened:
            log.info("series_reopened", series_uid=series.series_instance_uid, study_uid=series.study_instance_uid, version=series.version)
        with self._lock:
            armed = series.series_instance_uid in self._armed
        if not armed:
            self._arm(series.series_instance_uid, self._due(series))

    def _fire(self, series_uid: str) -> None:
        try:
            self._complete(series_uid)
        except Exception as exc:  # keep the scheduler alive; retry later, a bounded number of times
            self._completion_failed(series_uid, exc)
        else:
            with self._lock:
                self._failures.pop(series_uid, None)

    def _completion_failed(self, series_uid: str, exc: Exception) -> None:
        # the message may quote a header value of the series: its quoted values are redacted
        detail = scrub_text(exc)[:300]
        what = transient_resource_error(exc)
        if what is not None:  # a full disk says nothing about the series: not counted
            log.error("series_completion_failed", series_uid=series_uid, error=type(exc).__name__, detail=detail, what=what)
            self._arm(series_uid, time.time() + COMPLETION_RETRY_S)
            return
        with self._lock:
            attempt = self._failures[series_uid] = self._failures.get(series_uid, 0) + 1
        log.error(
            "series_completion_failed", series_uid=series_uid, error=type(exc).__name__, detail=detail, attempt=attempt, exc_info=exc
        )
        if attempt >= MAX_COMPLETION_FAILURES:
            reason = f"completion failed {attempt} times: {type(exc).__name__}: {detail}"
            if self._abandon(series_uid, reason, attempt):
                return
        self._arm(series_uid, time.time() + COMPLETION_RETRY_S)

    def _abandon(self, series_uid: str, reason: str, failures: int) -> bool:
        """Mark the series ``failed`` with ``reason`` (unless an instance re-opened it meanwhile:
        its own timer completes the new version); False when the database could not say so."""
        try:
            series = db.get_series(self.conn, series_uid)
            failed = series is not None and db.complete_series(self.conn, series_uid, series.version, db.SeriesState.FAILED, reason)
        except Exception as exc:
            log.error("series_completion_abandon_failed", series_uid=series_uid, error=type(exc).__name__, detail=scrub_text(exc)[:300], exc_info=exc)
            return False  # tried again at the next failure
        with self._lock:
            self._failures.pop(series_uid, None)
        if failed:
            log.error(
                "series_completion_abandoned", series_uid=series_uid, study_uid=series.study_instance_uid,
                version=series.version, failures=failures, reason=reason,
            )
        return True

    def _complete(self, series_uid: str) -> None:
        with self._lock:
            self._armed.discard(series_uid)
        series = db.get_series(self.conn, series_uid)
        if series is None or series.state not in (db.SeriesState.RECEIVING, db.SeriesState.COMPLETE):
            return
        if series.state == db.SeriesState.RECEIVING:  # else complete: a retry of a failed selection
            due = self._due(series)
            if time.time() < due:
                self._arm(series_uid, due)
                return
            if not db.complete_series(self.conn, series_uid, series.version, db.SeriesState.COMPLETE):
                self._arm(series_uid, time.time())
                return
        selection = select_series_files(db.series_instance_paths(self.conn, series_uid))
        state = db.SeriesState.SKIPPED if selection.skip_reason else db.SeriesState.QUEUED
        if not db.complete_series(self.conn, series_uid, series.version, state, selection.skip_reason):
            return  # an instance arrived meanwhile: its own timer completes the new version
        log.info(
            "series_complete",
            series_uid=series_uid,
            study_uid=series.study_instance_uid,
            calling_ae=series.calling_ae,
            instances=series.instances,
            receive_seconds=round(series.last_received - series.first_received, 3),
            usable_slices=len(selection.usable),
            excluded=selection.reason_counts(),
            state=state.value,
            version=series.version,
        )
