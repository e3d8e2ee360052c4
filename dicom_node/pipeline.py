"""The pipeline worker: queued series -> volume -> predictor -> quantification -> results -> outbox.

One thread with its own database connection. It loads the predictor once (``[model] weights``
and ``device`` are bound at start-up); while the weights cannot be loaded it claims nothing, logs
``weights_unusable`` and tries again every 30 s, so series wait ``queued`` instead of failing.
Then, in a loop, it claims the oldest ``queued`` series (``db.claim_queued_series``: ``running``)
and runs the job:

1. ``jobs`` row: the time this series version was first started (the creation time stamped on
   every object, so a re-run rebuilds identical bytes);
2. ``reconstruct_series`` (ingest) on the series' spool files; an unusable series -> ``failed``
   with ingest's reason;
3. ``analyse`` (predictor and quantification), ``build_result_set`` (SEG, SR, summary if
   ``[results] summary_image``), written to ``data_dir/results/<study>/<series>/v<version>/``
   with ``findings.json``;
4. if the series is still this version and ``running`` (a late instance re-opens it: ingest
   bumps ``version`` and the newer version will be processed instead), the objects are queued in
   the outbox for every destination of ``live_config.current`` (none: they stay in the folder),
   the result set is recorded in ``results``, and the series becomes ``done``.

Restarts: a series left ``running`` by a dead process is put back to ``queued`` by ingest's
``requeue_running`` at start-up; the job runs again from step 1 and yields the same objects (same
UIDs, same bytes), and the outbox ignores what it already holds, so nothing is delivered twice.
A re-sent series (new ``version``) yields a new result set with new UIDs and higher series
numbers (``results.uids``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import structlog

from dicom_node import db, outbox
from dicom_node.results.analysis import analyse
from dicom_node.results.build import build_result_set, write_result_set
from dicom_node.results.findings import findings_dict
from dicom_node.results.records import record_result, result_folder, start_job
from dicom_node.results.sanitize import scrub_text

log = structlog.get_logger()

POLL_SECONDS = 0.5
WEIGHTS_RETRY_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 120.0


def load_predictor(config):
    """The predictor of ``[model]`` (``weights``, ``device``, and ``bags`` when the config has
    that key; else the engine's default number of bags); raises ``ValueError`` when the weights
    are unusable or lack the lobes or the severity."""
    from m2unet.predictor import Predictor

    bags = getattr(config.model, "bags", None)  # [model] bags, once the config has it
    options = {"bags": int(bags)} if bags else {}
    predictor = Predictor.from_weights(config.model.weights, config.model.device, **options)
    predictor.require_variant(lobes=True, severity=True)
    return predictor


def run_job(conn, record: db.SeriesRecord, predictor, config) -> str:
    """Process one claimed series; returns the state it ends in (``done``, ``failed`` or, when
    the series moved on to a newer version meanwhile, ``stale``)."""
    from dicom_node.reconstruct import reconstruct_series

    uid, version = record.series_instance_uid, record.version
    bound = log.bind(study_uid=record.study_instance_uid, series_uid=uid, calling_ae=record.calling_ae, version=version)
    started = time.perf_counter()
    created = start_job(conn, uid, version)
    paths = db.series_instance_paths(conn, uid)
    bound.info("job_started", instances=len(paths))
    try:
        reconstructed = reconstruct_series(paths)
    except ValueError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        db.set_series_state(conn, uid, db.SeriesState.FAILED.value, reason=reason, version=version)
        bound.warning("job_failed", reason=reason)
        return "failed"
    try:
        analysis = analyse(reconstructed, predictor)
        result_set = build_result_set(
            analysis.source,
            analysis.hu,
            analysis.lobe_map,
            analysis.findings,
            version=version,
            ae_title=config.node.ae_title,
            created=created,
            summary_image=config.results.summary_image,
        )
        folder = result_folder(config.node.data_dir, record.study_instance_uid, uid, version)
        written = write_result_set(result_set, folder)
        write_json(folder / "findings.json", with_exclusions(findings_dict(analysis.findings), reconstructed))
    except Exception as exc:  # the model or a builder failed: the series fails, the node goes on
        # no patient/study value in status, the database or the log (the traceback is left out:
        # its frames may hold such values)
        reason = scrub_text(f"{type(exc).__name__}: {exc}", reconstructed.datasets)[:500]
        db.set_series_state(conn, uid, db.SeriesState.FAILED.value, reason=reason, version=version)
        bound.error("job_failed", reason=reason, where=_failed_where(exc))
        return "failed"
    current = db.get_series(conn, uid)
    if current is None or current.version != version or current.state != db.SeriesState.RUNNING.value:
        bound.info("job_stale", current_version=getattr(current, "version", None), state=getattr(current, "state", None))
        return "stale"
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
        severity=analysis.findings.severity,
        probability_severe=analysis.findings.probability_severe,
        qc=analysis.findings.qc,
    )
    # what was left out stays visible in status ("1 instance excluded: other image size 128x128")
    note = reconstructed.exclusion_note()
    db.set_series_state(conn, uid, db.SeriesState.DONE.value, reason=note, version=version)
    qc = analysis.findings.qc
    bound.info(
        "job_done",
        severity=analysis.findings.severity,
        qc_passed=None if qc is None else qc.passed,
        qc_failed=[] if qc is None else [c.name for c in qc.failed],  # check names only, never details
        objects=len(objects),
        queued=queued,
        destinations=len(destinations),
        seg_sop_instance_uid=str(result_set.seg.SOPInstanceUID),
        seconds=round(time.perf_counter() - started, 2),
        predict_seconds=round(analysis.timings["predict"], 2),
        **({} if destinations else {"kept_in": str(folder)}),
    )
    return "done"


def with_exclusions(findings: dict, reconstructed) -> dict:
    """``findings["excluded_instances"] = {"count", "of", "reasons", "details"}`` when reconstruction
    left images out (duplicates aside)."""
    summary = reconstructed.exclusion_summary()
    if summary is not None:
        findings["excluded_instances"] = summary
    return findings


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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class PipelineWorker:
    def __init__(self, live_config, predictor=None) -> None:
        self.live_config = live_config
        self._predictor = predictor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None

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
                log.exception("job_crashed", series_uid=record.series_instance_uid, error=str(exc))


__all__ = ["PipelineWorker", "run_job", "load_predictor"]
