"""The retention job inside the node (:mod:`dicom_node.ops.retention` does the deleting), and the log
line of a series re-opened after its instances were purged."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import structlog

from dicom_node.state import db
from dicom_node.ops.retention import RetentionReport, apply_retention

log = structlog.get_logger()


class RetentionWorker:
    """Runs :func:`apply_retention` at start-up and every ``[retention] check_interval`` seconds
    (APScheduler, one job, never two at once). Settings come from ``live_config.current`` at each
    pass; a changed ``check_interval`` re-schedules the job. A failed pass is logged
    (``retention_pass_failed``) and the next one runs as planned: it never stops the node."""

    JOB_ID = "retention"

    def __init__(self, live_config, first_delay: float = 5.0) -> None:
        self.live_config = live_config
        self.first_delay = first_delay
        self.data_dir = Path(live_config.current.node.data_dir)
        self._stop = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._scheduler = None
        self._interval: float | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.last_report: RetentionReport | None = None

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._stop.clear()
        self._conn = db.connect(self.data_dir)
        self._scheduler = BackgroundScheduler(
            timezone=timezone.utc, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self._scheduler.start()
        self._interval = self.live_config.current.retention.check_interval
        self._scheduler.add_job(
            self.run_once,
            "interval",
            seconds=self._interval,
            id=self.JOB_ID,
            next_run_time=datetime.now(timezone.utc) + timedelta(seconds=self.first_delay),
        )
        self._unsubscribe = self.live_config.subscribe(self._config_changed)
        settings = self.live_config.current.retention
        log.info(
            "retention_started",
            received_days=settings.received_days,
            results_days=settings.results_days,
            check_interval=settings.check_interval,
        )

    def _config_changed(self, config) -> None:
        interval = config.retention.check_interval
        if self._scheduler is None or interval == self._interval:
            return
        self._interval = interval
        self._scheduler.reschedule_job(self.JOB_ID, trigger="interval", seconds=interval)
        log.info("retention_rescheduled", check_interval=interval)

    def run_once(self) -> RetentionReport | None:
        """One pass now (also what the scheduler calls); None when it failed (logged)."""
        if self._conn is None or self._stop.is_set():
            return None
        settings = self.live_config.current.retention
        try:
            report = apply_retention(self._conn, self.data_dir, settings, stop=self._stop)
        except Exception as exc:  # noqa: BLE001 - a failed pass must never stop the node
            log.error("retention_pass_failed", error=type(exc).__name__, detail=str(exc)[:300], exc_info=True)
            return None
        self.last_report = report
        log.info(
            "retention_pass",
            received_days=settings.received_days,
            results_days=settings.results_days,
            seconds=round(report.seconds, 3),
            **report.counts(),
        )
        return report

    def stop(self) -> None:
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def note_late_instance(record: db.RecordResult) -> None:
    """Log a series re-opened after its instances were purged (the SCP's ``on_instance`` hook)."""
    series = record.series
    if record.reopened and series.purged_at is not None and series.purged_version == series.version - 1:
        log.warning(
            "series_reopened_after_purge",
            series_uid=series.series_instance_uid,
            study_uid=series.study_instance_uid,
            version=series.version,
            purged_version=series.purged_version,
            instances=series.instances,
        )
