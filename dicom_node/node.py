"""``m2unet-node run``: wires the SCP, assembler, pipeline worker and sender, and runs until a signal.

Start-up: read the config (live, hot-reloaded), configure logging, open the database, put series
left ``running`` by a dead process back in the queue (and make series waiting out a full disk due
at once), remove half-written spool files and result / outbox ``.tmp`` files, record
spool files whose database rows a power cut lost (:mod:`dicom_node.ops.recovery`), finish retention
purges a crash interrupted and remove folders earlier purges emptied (:mod:`dicom_node.ops.retention`),
then start the assembler (which re-arms timers for series still ``receiving``), the pipeline
worker, the sender, the retention job (a pass at start-up, then every ``[retention]
check_interval``), and last the SCP, so that nothing is accepted before it can be handled.

SIGTERM / SIGINT: stop accepting (the SCP first, letting running associations finish), then stop
the assembler, pipeline and sender (each persists or finishes its work: every state is in the
database, and whatever was in flight resumes at the next start), exit 0. SIGHUP: reload the config.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import structlog

from dicom_node.state import db
from dicom_node.series.assembler import Assembler
from dicom_node.config.model import ConfigError, NodeConfig
from dicom_node.config.live import LiveConfig
from dicom_node.ops.logs import configure_logging
from dicom_node.delivery.outbox import OUTBOX_DIR
from dicom_node.pipeline.worker import PipelineWorker
from dicom_node.ingest.receive import Receiver
from dicom_node.ops.recovery import reconcile_spool
from dicom_node.durable import sweep_temporary
from dicom_node.results.records import results_dir
from dicom_node.ops.retention import remove_empty_folders, resume_interrupted_purges
from dicom_node.ops.retention_worker import RetentionWorker, note_late_instance
from dicom_node.ingest.scp import StorageSCP
from dicom_node.delivery.sender import Sender
from dicom_node.ingest.spool import Spool

log = structlog.get_logger()


def _implementation_uid() -> tuple[str, str]:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

    return str(PYNETDICOM_IMPLEMENTATION_UID), "M2UNET_NODE"


class Node:
    """The running node's parts; :meth:`start` and :meth:`stop` in dependency order."""

    def __init__(self, live_config) -> None:
        self.live_config = live_config
        config: NodeConfig = live_config.current
        self.data_dir = config.node.data_dir
        self.conn = db.connect(self.data_dir)
        celery = config.pipeline.executor == "celery"
        # local: a job running when the process died runs again; celery: the workers own running jobs
        requeued = 0 if celery else db.requeue_running(self.conn)
        self.spool = Spool(self.data_dir)
        swept = self.spool.sweep()
        swept_results = sweep_temporary(results_dir(self.data_dir)) + sweep_temporary(self.data_dir / OUTBOX_DIR)
        recovered = reconcile_spool(self.conn, self.spool)
        resumed = resume_interrupted_purges(self.conn, self.data_dir)
        emptied = remove_empty_folders(self.data_dir)  # now, before the spool writes: see retention
        log.info(
            "state_opened",
            requeued_series=requeued,
            removed_partial_files=swept,
            removed_partial_results=swept_results,
            recovered_instances=recovered,
            resumed_purges=resumed,
            removed_empty_folders=emptied,
            counts=db.state_counts(self.conn),
        )
        ssl_context = None
        if config.tls.enabled:
            from dicom_node.ingest.tls import server_context

            ssl_context = server_context(config.tls)
        provider: Callable[[], NodeConfig] = lambda: self.live_config.current  # noqa: E731
        self.assembler = Assembler(self.data_dir, provider)
        impl_uid, impl_version = _implementation_uid()
        self.scp = StorageSCP(
            provider,
            Receiver(self.conn, self.spool, impl_uid, impl_version),
            on_instance=self._instance_arrived,
            ssl_context=ssl_context,
        )
        if celery:
            from dicom_node.pipeline.celery_executor import Dispatcher

            self.pipeline = Dispatcher(live_config)
        else:
            self.pipeline = PipelineWorker(live_config)
        self.sender = Sender(live_config)
        self.retention = RetentionWorker(live_config)
        self.web = None
        if config.web.enabled:  # the console and REST API (dicom_node.web)
            from dicom_node.web.server import WebServer

            self.web = WebServer(live_config)

    def _instance_arrived(self, record: db.RecordResult) -> None:
        note_late_instance(record)
        self.assembler.instance_arrived(record)

    def start(self) -> None:
        self.live_config.start()
        self.assembler.start()
        self.pipeline.start()
        self.sender.start()
        self.retention.start()
        self.scp.start()
        if self.web is not None:
            self.web.start()

    def stop(self) -> None:
        steps = [
            *([("web", self.web.stop)] if self.web is not None else []),
            ("scp", self.scp.stop),
            ("retention", self.retention.stop),
            ("assembler", self.assembler.stop),
            ("pipeline", self.pipeline.stop),
            ("sender", self.sender.stop),
            ("live_config", self.live_config.stop),
        ]
        for name, stop in steps:
            try:
                stop()
            except Exception as exc:
                log.error("stop_failed", part=name, error=type(exc).__name__, detail=str(exc)[:300], exc_info=True)
        self.conn.close()


def run_node(config_path) -> int:
    """Run in the foreground until SIGTERM/SIGINT; 0 on a clean stop, 2 on a bad config."""
    try:
        live_config = LiveConfig(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    config: NodeConfig = live_config.current
    configure_logging(config.node.log_format)
    try:
        node = Node(live_config)
    except (ValueError, OSError) as exc:
        log.error("node_start_failed", error=str(exc))
        return 2

    stopping = threading.Event()

    def on_stop(signum, frame) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        stopping.set()

    def on_hup(signum, frame) -> None:
        log.info("signal_received", signal="SIGHUP")
        threading.Thread(target=live_config.reload, name="config-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)
    try:
        node.start()
    except OSError as exc:
        log.error("node_start_failed", error=str(exc))
        node.stop()
        return 2
    log.info("node_started", ae_title=config.node.ae_title, port=config.node.port, data_dir=str(node.data_dir))
    while not stopping.wait(0.5):
        pass
    log.info("node_stopping")
    node.stop()
    log.info("node_stopped")
    return 0
