"""The pipeline worker: queued series -> volume -> predictor -> quantification -> results -> outbox.

One thread with its own database connection. It loads the predictor once (``[model] weights``
and ``device`` are bound at start-up); while the weights cannot be loaded it claims nothing, logs
``weights_unusable`` and tries again every 30 s, so series wait ``queued`` instead of failing.
Then, in a loop, it claims the oldest ``queued`` series (``db.claim_queued_series``: ``running``)
and runs the job:

1. ``jobs`` row: the time this series version was first started (the creation time stamped on
   every object, so a re-run rebuilds identical bytes);
2. :func:`dicom_node.pipeline.process.process_series` on the series' spool files (the steps
   ``m2unet-node process`` runs too): ``reconstruct_series`` (an unusable series -> ``failed``
   with reconstruction's reason), the predictor, quantification and quality check, and
   ``build_result_set`` (SEG, SR, summary if ``[results] summary_image``);
3. the objects written to ``data_dir/results/<study>/<series>/v<version>/`` with
   ``findings.json``;
4. if the series is still this version and ``running`` (a late instance re-opens it: ingest
   bumps ``version`` and the newer version will be processed instead), the objects are queued in
   the outbox for every destination of ``live_config.current`` (none: they stay in the folder),
   the result set is recorded in ``results``, and the series becomes ``done``.

Transient resource errors (:mod:`dicom_node.pipeline.resource_errors`: disk full, quota, too many open
files, out of memory) never fail a series: the job stops, leaves no partial file (results are
written to ``.tmp`` files renamed when whole, removed on failure, and swept at start-up), and the
series goes back to ``queued`` with a retry time (``db.defer_series``) after
``RESOURCE_RETRY_INITIAL_S`` (60 s) doubling with each attempt of that version up to
``RESOURCE_RETRY_MAX_S`` (15 min); ``status`` says so ("waiting: disk full (ENOSPC) while writing
results, retry in 60 s (attempt 1)") and ``job_waiting`` is logged. A restart retries at once;
``m2unet-node retry`` too. The job then runs from step 1 and builds the same objects.

Restarts: a series left ``running`` by a dead process is put back to ``queued`` by
``db.requeue_running`` at start-up (:mod:`dicom_node.node`); the job runs again from step 1 and
yields the same objects (same UIDs, same bytes), and the outbox ignores what it already holds, so nothing is delivered twice.
A re-sent series (new ``version``) yields a new result set with new UIDs and higher series
numbers (``results.uids``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from dicom_node.state import db

from dicom_node.delivery import outbox
from dicom_node.pipeline.process import load_predictor, process_series
from dicom_node.pipeline.resource_errors import transient_resource_error
from dicom_node.durable import atomic_write
from dicom_node.results.build import write_result_set
from dicom_node.results.records import record_result, result_folder
from dicom_node.state.results import job_attempts, start_job
from dicom_node.results.sanitize import scrub_text

log = structlog.get_logger()

POLL_SECONDS = 0.5
WEIGHTS_RETRY_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 120.0
RESOURCE_RETRY_INITIAL_S = 60.0  # first wait after a transient resource error; doubles per attempt
RESOURCE_RETRY_MAX_S = 900.0


# process_series' steps as a wait's reason names them ("... while building results")
_STAGE_OF_STEP = {"read": "reading the series", "analyse": "analysing the series", "build": "building results"}


@dataclass
class _Stage:
    """Where the job is, for the reason of a wait ("while writing results"), and the series once
    it is read (whose patient and study values a failure's reason must not carry)."""

    name: str = "starting the job"
    reconstructed: object = None

    def step(self, step: str, reconstructed) -> None:  # process_series' on_step
        self.name = _STAGE_OF_STEP[step]
        self.reconstructed = reconstructed


def run_job(conn, record: db.SeriesRecord, predictor, config) -> str:
    """Process one claimed series; returns the state it ends in: ``done``, ``failed``,
    ``waiting`` (a transient resource error: queued again with a retry time) or, when the series
    moved on to a newer version meanwhile, ``stale``."""
    uid, version = record.series_instance_uid, record.version
    bound = log.bind(study_uid=record.study_instance_uid, series_uid=uid, calling_ae=record.calling_ae, version=version)
    stage = _Stage()
    try:
        return _run_job(conn, record, predictor, config, bound, stage)
    except Exception as exc:
        what = transient_resource_error(exc)
        if what is None:
            raise
        return _wait(conn, record, bound, what, stage.name)


def _duration(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


def _wait(conn, record: db.SeriesRecord, bound, what: str, stage: str) -> str:
    """Queue the series again with a retry time after a transient resource error (see above)."""
    uid, version = record.series_instance_uid, record.version
    attempt = max(job_attempts(conn, uid, version), 1)
    delay = outbox.backoff_delay(attempt, RESOURCE_RETRY_INITIAL_S, RESOURCE_RETRY_MAX_S)
    reason = f"waiting: {what} while {stage}, retry in {_duration(delay)} (attempt {attempt})"
    if not db.defer_series(conn, uid, version, time.time() + delay, reason):
        bound.info("job_stale", stage=stage)
        return "stale"
    bound.warning("job_waiting", what=what, stage=stage, retry_in=delay, attempt=attempt)
    return "waiting"


def _run_job(conn, record: db.SeriesRecord, predictor, config, bound, stage: _Stage) -> str:
    uid, version = record.series_instance_uid, record.version
    started = time.perf_counter()
    # whole seconds: the same value whatever float rounding the database applies; local time, as DICOM dates are
    created = datetime.fromtimestamp(int(start_job(conn, uid, version)))
    paths = db.series_instance_paths(conn, uid)
    bound.info("job_started", instances=len(paths))
    try:
        processed = process_series(paths, predictor, config, version=version, created=created, on_step=stage.step)
        stage.name = "writing results"
        folder = result_folder(config.node.data_dir, record.study_instance_uid, uid, version)
        written = write_result_set(processed.result_set, folder)
        write_json(folder / "findings.json", processed.findings_json())
    except Exception as exc:  # the series is unusable, or the model or a builder failed: the series fails, the node goes on
        if transient_resource_error(exc):  # ...unless the disk, descriptors or memory ran out: wait and retry
            raise
        if stage.reconstructed is None:  # reconstruction refused the series (anything else: a crash)
            if not isinstance(exc, ValueError):
                raise
            reason = getattr(exc, "reason", None) or str(exc)
            db.set_series_state(conn, uid, db.SeriesState.FAILED, reason=reason, version=version)
            bound.warning("job_failed", reason=reason)
            return "failed"
        # no patient/study value in status, the database or the log (the traceback is left out:
        # its frames may hold such values)
        reason = scrub_text(f"{type(exc).__name__}: {exc}", stage.reconstructed.datasets)[:500]
        db.set_series_state(conn, uid, db.SeriesState.FAILED, reason=reason, version=version)
        bound.error("job_failed", reason=reason, where=_failed_where(exc))
        return "failed"
    current = db.get_series(conn, uid)
    if current is None or current.version != version or current.state != db.SeriesState.RUNNING:
        bound.info("job_stale", current_version=getattr(current, "version", None), state=getattr(current, "state", None))
        return "stale"
    stage.name = "queueing results for delivery"
    result_set, findings, reconstructed = processed.result_set, processed.findings, processed.reconstructed
    destinations = [d.name for d in config.destinations]
    objects = [
        outbox.OutboxObject(
            path=written[kind],
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            study_instance_uid=record.study_instance_uid,
            source_series_uid=uid,
        )
        for kind, dataset in result_set.objects().items()
    ]
    queued = outbox.enqueue(conn, objects, destinations)
    record_result(
        conn,
        series_instance_uid=uid,
        version=version,
        study_instance_uid=record.study_instance_uid,
        folder=folder,
        seg_sop_instance_uid=str(result_set.seg.SOPInstanceUID),
        sr_sop_instance_uid=str(result_set.sr.SOPInstanceUID),
        summary_sop_instance_uid=str(result_set.summary.SOPInstanceUID) if result_set.summary is not None else None,
        destinations=len(destinations),
        severity=findings.severity,
        probability_severe=findings.probability_severe,
        qc=findings.qc,
    )
    # what was left out stays visible in status ("1 instance excluded: other image size 128x128")
    note = reconstructed.exclusion_note()
    db.set_series_state(conn, uid, db.SeriesState.DONE, reason=note, version=version)
    qc = findings.qc
    bound.info(
        "job_done",
        severity=findings.severity,
        qc_passed=None if qc is None else qc.passed,
        qc_failed=[] if qc is None else [c.name for c in qc.failed],  # check names only, never details
        objects=len(objects),
        queued=queued,
        destinations=len(destinations),
        seg_sop_instance_uid=str(result_set.seg.SOPInstanceUID),
        seconds=round(time.perf_counter() - started, 2),
        predict_seconds=round(processed.timings["predict"], 2),
        **({} if destinations else {"kept_in": str(folder)}),
    )
    return "done"


def _failed_where(exc: BaseException) -> str:
    """``file:line function`` of the innermost frame: where it failed, without the message."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    code = tb.tb_frame.f_code
    return f"{Path(code.co_filename).name}:{tb.tb_lineno} {code.co_name}"


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2), sync_folder=False)


class PipelineWorker:
    def __init__(self, live_config, predictor=None) -> None:
        self.live_config = live_config
        self._predictor = predictor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None
        self._stranded: list[db.SeriesRecord] = []  # waits the database could not record yet

    def start(self) -> None:
        self._conn = db.connect(self.live_config.current.node.data_dir)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()
        log.info("pipeline_started")

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop claiming; wait for a job in flight to finish (up to ``timeout``: beyond, it stays
        ``running`` and is re-queued at the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("pipeline_stop_timeout", seconds=timeout)
            else:
                self._conn.close()
            self._thread = None
        log.info("pipeline_stopped")

    def _predictor_or_none(self):
        if self._predictor is None:
            config = self.live_config.current
            try:
                self._predictor = load_predictor(config)
                log.info("weights_loaded", weights_sha256=self._predictor.sha256, device=str(self._predictor.device))
            except (ValueError, OSError, RuntimeError) as exc:
                log.error("weights_unusable", error=f"{type(exc).__name__}: {exc}", retry_in=WEIGHTS_RETRY_SECONDS)
                return None
        return self._predictor

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._stranded:
                self._defer_stranded()
            predictor = self._predictor_or_none()
            if predictor is None:
                self._stop.wait(WEIGHTS_RETRY_SECONDS)
                continue
            try:
                record = db.claim_queued_series(self._conn)
            except Exception as exc:
                log.exception("claim_failed", error=str(exc))
                self._stop.wait(POLL_SECONDS)
                continue
            if record is None:
                self._stop.wait(POLL_SECONDS)
                continue
            try:
                run_job(self._conn, record, predictor, self.live_config.current)
            except Exception as exc:  # a database error: leave the series running, re-queued at restart
                what = transient_resource_error(exc)
                if what is None:
                    log.exception("job_crashed", series_uid=record.series_instance_uid, error=str(exc))
                else:  # the database could not even record the wait (its disk is full): retry that
                    log.error("job_wait_unrecorded", series_uid=record.series_instance_uid, what=what)
                    self._stranded.append(record)

    def _defer_stranded(self) -> None:
        """Series whose wait the database could not record: queue them again once it can."""
        for record in list(self._stranded):
            try:
                db.defer_series(
                    self._conn,
                    record.series_instance_uid,
                    record.version,
                    time.time() + RESOURCE_RETRY_INITIAL_S,
                    "waiting: the database could not be written (disk full?), retry in "
                    f"{_duration(RESOURCE_RETRY_INITIAL_S)}",
                )
            except Exception:
                return
            self._stranded.remove(record)


__all__ = ["PipelineWorker", "run_job", "load_predictor"]
