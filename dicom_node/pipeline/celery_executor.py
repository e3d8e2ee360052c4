"""The pipeline on Celery workers (``[pipeline] executor = "celery"``), Redis as the broker.

The node publishes, the workers run, the node's SQLite stays the truth. Tasks carry identifiers
only (Series Instance UID and version); images, weights and results travel through the shared
``data_dir``, never through the broker.

- **Node** (:class:`Dispatcher`, in place of the local pipeline worker): every queued series
  version that needs a task (:func:`dicom_node.state.tasks.due_for_publishing`) is published to
  ``[pipeline] queue`` and recorded; a series running on a worker that stopped sending heartbeats
  is queued again (:func:`dicom_node.state.tasks.requeue_lost`). While the broker is down nothing
  is lost: the series stay ``queued`` in the database and are published once it is back.
- **Worker** (:func:`run_worker`, ``m2unet-node worker --device cuda:1``): one process per device,
  the solo pool (one job at a time), weights loaded once. A task takes its series only if it is
  still ``queued`` (or ``running`` on a dead worker), runs the same job as the local worker
  (:func:`dicom_node.pipeline.worker.run_job`) and ends. Late acknowledgement with
  ``task_reject_on_worker_lost`` and prefetch 1: a worker killed mid-job leaves its message
  unacknowledged and Redis hands it to another worker after ``visibility_timeout`` seconds.
- **Exactly once, as the PACS sees it**: a job that runs twice rebuilds the same objects (their UIDs
  are derived from the series and version) and the outbox enqueues an object once per destination,
  so the node's sender delivers one SEG and one SR.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import structlog

from dicom_node.state import db
from dicom_node.state import tasks as task_table

log = structlog.get_logger()

TASK_NAME = "m2unet.process_series"
HEARTBEATS_PER_TIMEOUT = 6  # a worker beats every [pipeline] worker_timeout / 6 seconds
POLL_SECONDS = 0.5
BROKER_RETRY_SECONDS = 2.0


def make_app(settings):
    """The Celery application of ``[pipeline]`` (``settings``: :class:`PipelineSettings`)."""
    from celery import Celery

    app = Celery("m2unet_node", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=BROKER_RETRY_SECONDS,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


# --- the node's side -----------------------------------------------------------------------------


class Dispatcher:
    """Publishes queued series to the broker; ``start()``, ``stop()`` like the local worker."""

    def __init__(self, live_config, republish_after: float | None = None) -> None:
        self.live_config = live_config
        settings = live_config.current.pipeline
        self._settings = settings
        self._republish_after = float(republish_after or settings.visibility_timeout)
        self._app = None
        self._conn = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker_down_since: float | None = None

    def start(self) -> None:
        self._app = make_app(self._settings)
        self._conn = db.connect(self.live_config.current.node.data_dir)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="celery-dispatcher", daemon=True)
        self._thread.start()
        log.info("dispatcher_started", queue=self._settings.queue)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        log.info("dispatcher_stopped")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish_due()
            except Exception as exc:  # noqa: BLE001 - the dispatcher must outlive a bad pass
                log.exception("dispatch_failed", error=f"{type(exc).__name__}: {exc}")
            self._stop.wait(POLL_SECONDS if self._broker_down_since is None else BROKER_RETRY_SECONDS)

    def publish_due(self) -> int:
        """One pass: queue again what ran on lost workers, publish what needs a task; returns how
        many tasks were published."""
        for uid in task_table.requeue_lost(self._conn, time.time() - self._settings.worker_timeout):
            log.warning("worker_lost_series_requeued", series_uid=uid)
        published = 0
        for series in task_table.due_for_publishing(self._conn, self._republish_after):
            task_id = f"{series.series_instance_uid}/v{series.version}/{time.time_ns()}"
            try:
                self._app.send_task(
                    TASK_NAME, args=[series.series_instance_uid, series.version], task_id=task_id,
                    queue=self._settings.queue, retry=False,
                )
            except Exception as exc:  # noqa: BLE001 - kombu raises many kinds when Redis is away
                if self._broker_down_since is None:
                    self._broker_down_since = time.time()
                    log.error("broker_unavailable", broker=_redacted(self._settings.broker_url),
                              error=f"{type(exc).__name__}: {exc}", queued_series=published)
                return published
            if self._broker_down_since is not None:
                log.info("broker_available", seconds_down=round(time.time() - self._broker_down_since, 1))
                self._broker_down_since = None
            task_table.record_published(self._conn, series, task_id)
            log.info("task_published", series_uid=series.series_instance_uid, version=series.version, task_id=task_id)
            published += 1
        return published


def _redacted(url: str) -> str:
    """A broker URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


# --- the worker's side ---------------------------------------------------------------------------


class _Worker:
    """What a worker process holds: its name, config, database connection and predictor."""

    def __init__(self, config, device: str, name: str) -> None:
        from dicom_node.pipeline.process import load_predictor

        self.config = config
        self.device = device
        self.name = name
        self.started_at = time.time()
        self.conn = db.connect(config.node.data_dir)
        self.predictor = load_predictor(config)
        log.info("weights_loaded", worker=name, device=str(self.predictor.device), weights_sha256=self.predictor.sha256)
        self._beat_stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="worker-heartbeat", daemon=True)

    def start_heartbeat(self) -> None:
        task_table.heartbeat(self.conn, self.name, self.device, os.getpid(), self.started_at)
        self._beat.start()

    def stop_heartbeat(self) -> None:
        self._beat_stop.set()

    def _heartbeat(self) -> None:
        conn = db.connect(self.config.node.data_dir)
        try:
            while not self._beat_stop.wait(self.config.pipeline.worker_timeout / HEARTBEATS_PER_TIMEOUT):
                try:
                    task_table.heartbeat(conn, self.name, self.device, os.getpid(), self.started_at)
                except Exception as exc:  # noqa: BLE001 - a busy database: the next beat tries again
                    log.warning("worker_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def process(self, series_instance_uid: str, version: int) -> str:
        """Run the job if this worker may take it; ``"busy"``: it runs on another live worker."""
        from dicom_node.pipeline.worker import run_job

        lost_before = time.time() - self.config.pipeline.worker_timeout
        record = task_table.take(self.conn, series_instance_uid, version, self.name, lost_before)
        bound = log.bind(series_uid=series_instance_uid, version=version, worker=self.name)
        if record == task_table.BUSY:
            bound.info("task_deferred", why="the series runs on another live worker")
            return task_table.BUSY
        if record is None:
            bound.info("task_skipped", why="the series version is not waiting for this worker")
            return "skipped"
        bound.info("task_started")
        try:
            outcome = run_job(self.conn, record, self.predictor, self.config)
        except Exception as exc:  # noqa: BLE001 - a job that cannot even record its end fails
            bound.exception("task_crashed", error=f"{type(exc).__name__}: {exc}")
            db.set_series_state(self.conn, series_instance_uid, db.SeriesState.FAILED,
                                reason=f"the worker failed: {type(exc).__name__}", version=version)
            outcome = "failed"
        task_table.finish(self.conn, series_instance_uid, version, self.name, outcome)
        bound.info("task_finished", outcome=outcome)
        return outcome


def worker_name(device: str) -> str:
    return f"{socket.gethostname()}-{device.replace(':', '')}-{os.getpid()}"


def run_worker(config, device: str | None = None, name: str | None = None) -> int:
    """``m2unet-node worker``: serve ``[pipeline] queue`` until SIGTERM (which finishes the job in
    hand, then exits 0)."""
    from dataclasses import replace

    if config.pipeline.executor != "celery":
        log.error("worker_needs_celery", executor=config.pipeline.executor)
        return 2
    if device:
        config = replace(config, model=replace(config.model, device=device))
    device = config.model.device
    name = name or worker_name(device)
    state = _Worker(config, device, name)
    app = make_app(config.pipeline)

    @app.task(name=TASK_NAME, bind=True)
    def process_series_task(self, series_instance_uid: str, version: int) -> str:
        outcome = state.process(series_instance_uid, int(version))
        if outcome == task_table.BUSY:  # a redelivered or duplicate task: look again once it ended or died
            raise self.retry(countdown=config.pipeline.worker_timeout / 2, max_retries=None)
        return outcome

    from celery.signals import setup_logging

    # the node's logging (structlog, JSON lines) stays: Celery configures none when this is connected
    setup_logging.connect(lambda **_: None, weak=False)
    state.start_heartbeat()
    log.info("worker_started", worker=name, device=device, queue=config.pipeline.queue)
    try:
        app.worker_main([
            "--quiet", "worker", "--pool=solo", "--concurrency=1", f"--queues={config.pipeline.queue}",
            "--prefetch-multiplier=1", f"--hostname={name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--loglevel=WARNING",
        ])
    finally:
        state.stop_heartbeat()
        log.info("worker_stopped", worker=name)
    return 0
