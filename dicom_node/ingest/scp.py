"""The Storage SCP: C-ECHO and C-STORE over DICOM (optionally TLS), as the node's front door.

SOP classes: Verification, CT Image Storage, Enhanced CT Image Storage and Legacy Converted
Enhanced CT Image Storage. Every other storage class is accepted at association time (scanners
propose many) and then, per ``[node] accept_other_storage``: false (the default) answers each
C-STORE with 0x0122 "SOP class not supported"; true stores the instance and ignores it (selection
leaves it out of any volume with the reason ``not_ct_image``).

Transfer syntaxes: implicit and explicit VR little endian, deflated explicit VR little endian,
JPEG baseline, extended and lossless (process 14 and SV1), JPEG-LS lossless and near-lossless,
JPEG 2000 lossless and lossy, RLE lossless. Data sets are kept as they arrive.

Each accepted socket is tuned (:mod:`dicom_node.ingest.socket_tuning`: TCP_NODELAY, TCP_QUICKACK, large
reads): without it Nagle's algorithm and delayed ACKs cost tens of milliseconds per PDU. Access control runs on each A-ASSOCIATE-RQ against the config of that
moment (``config_provider()``), so a hot-reloaded ``[[sources]]`` applies at once.

Idle connections cannot lock scanners out (:mod:`dicom_node.ingest.connection_guard`): a connection
that sends no A-ASSOCIATE-RQ within ``ARTIM_S`` (5 s) is closed, idle connections are bounded per
peer address and in all (a new one closes the oldest), and ``ASSOCIATIONS_MAX`` counts
established associations only; refusals are logged with the peer address.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable

import structlog
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dicom_node.ingest.access import Refusal, RejectReason, check_association
from dicom_node.config.model import NodeConfig
from dicom_node.ingest.connection_guard import ARTIM_S, PENDING_TOTAL, ConnectionGuard
from dicom_node.state.db import RecordResult
from dicom_node.series.frames import CT_STORAGE_CLASSES
from dicom_node.ingest.receive import Receiver, Received, StoreStatus
from dicom_node.ingest.socket_tuning import tune_accepted_socket
from dicom_node.ingest.uid_syntax import loggable_uid
from dicom_node.results.sanitize import scrub_text

log = structlog.get_logger()

TRANSFER_SYNTAXES = [
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEGLSNearLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000,
    uids.RLELossless,
]
MAX_PDU = 0  # no limit: fewer, larger PDUs
ASSOCIATIONS_MAX = 32
SHUTDOWN_GRACE_S = 10.0

InstanceCallback = Callable[[RecordResult], None]


class _LocalLimit(Refusal):
    """A-ASSOCIATE-RJ rejected-transient, presentation-related, local-limit-exceeded (PS3.8 9.3.4)."""

    @property
    def result(self) -> int:
        return 0x02

    @property
    def source(self) -> int:
        return 0x03


LOCAL_LIMIT_EXCEEDED = _LocalLimit(0x02, "too_many_associations")  # reason 2 of source 3: local limit exceeded


class _AssociationStats:
    __slots__ = ("calling_ae", "started", "stored", "duplicates", "conflicts", "failed", "bytes")

    def __init__(self, calling_ae: str) -> None:
        self.calling_ae = calling_ae
        self.started = time.monotonic()
        self.stored = self.duplicates = self.conflicts = self.failed = self.bytes = 0


def store_response(result: Received) -> int | Dataset:
    """The C-STORE response status: the bare status, or with its Error Comment when it has one."""
    if not result.comment:
        return int(result.status)
    response = Dataset()
    response.Status = int(result.status)
    response.ErrorComment = result.comment
    return response


class StorageSCP:
    """``start()`` listens on ``(host, port)``; ``stop()`` stops accepting and drains associations."""

    def __init__(
        self,
        config_provider: Callable[[], NodeConfig],
        receiver: Receiver,
        on_instance: InstanceCallback | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tune_sockets: bool = True,
    ) -> None:
        self.config_provider = config_provider
        self.receiver = receiver
        self.on_instance = on_instance
        self.ssl_context = ssl_context
        self.tune_sockets = tune_sockets
        config = config_provider()
        self.ae_title = config.node.ae_title
        self.host, self.port = config.node.host, config.node.port
        self._server = None
        self._stats: dict[int, _AssociationStats] = {}
        self._stats_lock = threading.Lock()
        self.guard = ConnectionGuard()
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = MAX_PDU
        # pynetdicom counts every open connection, idle ones included: its limit is set above ours
        # (established associations, checked in _on_requested) plus the idle ones the guard allows
        ae.maximum_associations = ASSOCIATIONS_MAX + PENDING_TOTAL + 8
        ae.require_called_aet = False  # checked in _on_requested, against the live config
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        ae.acse_timeout = ARTIM_S  # the acceptor's ARTIM: time from connect to A-ASSOCIATE-RQ
        ae.add_supported_context(Verification)
        seen = set()
        for uid in CT_STORAGE_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
            seen.add(uid)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax not in seen:
                ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
                seen.add(cx.abstract_syntax)
        return ae

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (useful with port 0)."""
        if self._server is None:
            return (self.host, self.port)
        return self._server.server_address[:2]

    def start(self) -> None:
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_ended),  # a connection dropped without release or abort
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._server = self.ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
        )
        log.info("scp_listening", ae_title=self.ae_title, host=self.host, port=self.address[1], tls=self.ssl_context is not None)

    def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting; let running associations finish for up to ``grace_s``, then abort them."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(a.is_alive() for a in self.ae.active_associations):
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        log.info("scp_stopped", ae_title=self.ae_title)

    # -- handlers: each does one thing and returns a status where DICOM wants one --

    def _on_conn_open(self, event) -> None:
        address = getattr(event, "address", None)
        peer = str(address[0]) if isinstance(address, (tuple, list)) and address else str(address)
        if not self.guard.opened(event.assoc, peer):
            return
        if self.tune_sockets:
            tune_accepted_socket(event.assoc)

    def _on_requested(self, event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling_ae = str(rq.calling_ae_title).strip()
        called_ae = str(rq.called_ae_title).strip()
        peer = assoc.requestor.address
        self.guard.requested(assoc)
        try:
            refusal = check_association(self.config_provider(), called_ae, calling_ae, peer)
        except Exception as exc:  # fail closed: an error in the check never lets a peer in
            log.error("access_check_failed", calling_ae=calling_ae, error=type(exc).__name__, detail=scrub_text(exc)[:300], exc_info=True)
            refusal = Refusal(RejectReason.NO_REASON_GIVEN, "access_check_failed")
        if refusal is None:
            with self._stats_lock:
                established = len(self._stats)
            if established >= ASSOCIATIONS_MAX:
                refusal = LOCAL_LIMIT_EXCEEDED
        if refusal is not None:
            log.warning(
                "association_rejected", calling_ae=calling_ae, called_ae=called_ae, peer=peer,
                reason=refusal.why, diagnostic=int(refusal.reason),
            )
            assoc.acse.send_reject(refusal.result, refusal.source, int(refusal.reason))
            assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ, as pynetdicom's own rejections do

    def _on_accepted(self, event) -> None:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        with self._stats_lock:
            self._stats[id(event.assoc)] = _AssociationStats(calling_ae)
        log.info("association_accepted", calling_ae=calling_ae, peer=event.assoc.requestor.address)

    def _on_ended(self, event) -> None:
        self.guard.closed(event.assoc)
        with self._stats_lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None:
            return
        log.info(
            "association_ended",
            calling_ae=stats.calling_ae,
            how={evt.EVT_RELEASED: "released", evt.EVT_ABORTED: "aborted"}.get(event.event, "closed"),
            stored=stats.stored,
            duplicates=stats.duplicates,
            conflicts=stats.conflicts,
            failed=stats.failed,
            megabytes=round(stats.bytes / 1e6, 1),
            seconds=round(time.monotonic() - stats.started, 3),
        )

    def _on_echo(self, event) -> int:
        return 0x0000

    def _on_store(self, event) -> int:
        t0 = time.monotonic()
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        request = event.request
        with self._stats_lock:
            stats = self._stats.get(id(event.assoc))
        try:
            dataset = request.DataSet.getvalue()
            result = self.receiver.receive(
                dataset,
                sop_class_uid=request.AffectedSOPClassUID,
                sop_instance_uid=request.AffectedSOPInstanceUID,
                transfer_syntax=event.context.transfer_syntax,
                calling_ae=calling_ae,
                accept_other_storage=self.config_provider().node.accept_other_storage,
            )
            size = len(dataset)
        except Exception as exc:  # the node never dies on bad input
            # the message and traceback may come from the received dataset: its quoted values are redacted
            log.error(
                "store_failed", calling_ae=calling_ae, sop_instance_uid=loggable_uid(request.AffectedSOPInstanceUID),
                error=type(exc).__name__, detail=scrub_text(exc)[:300], exc_info=True,
            )
            if stats:
                stats.failed += 1
            return int(StoreStatus.CANNOT_UNDERSTAND)
        if result.status == StoreStatus.ELEMENTS_DISCARDED:  # a conflicting duplicate: the receiver logged it
            if stats:
                stats.conflicts += 1
            return store_response(result)
        if result.status != StoreStatus.SUCCESS:
            log.warning(
                "store_refused",
                calling_ae=calling_ae,
                sop_instance_uid=loggable_uid(request.AffectedSOPInstanceUID),
                sop_class_uid=loggable_uid(request.AffectedSOPClassUID),
                status=f"0x{int(result.status):04X}",
                reason=result.why,
            )
            if stats:
                stats.failed += 1
            return store_response(result)
        record = result.record
        duplicate = record.outcome.value == "duplicate"
        if stats:
            stats.bytes += size
            if duplicate:
                stats.duplicates += 1
            else:
                stats.stored += 1
        log.debug(
            "instance_stored",
            calling_ae=calling_ae,
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            series_uid=record.series.series_instance_uid,
            outcome=record.outcome.value,
            ms=round((time.monotonic() - t0) * 1000, 2),
        )
        if self.on_instance is not None and not duplicate:
            try:
                self.on_instance(record)
            except Exception as exc:  # the instance is safe on disk; the assembler re-reads the DB on restart
                log.error(
                    "assembler_notify_failed", series_uid=record.series.series_instance_uid,
                    error=type(exc).__name__, detail=scrub_text(exc)[:300], exc_info=True,
                )
        return int(StoreStatus.SUCCESS)
