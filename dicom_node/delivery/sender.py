"""The sender: delivers the outbox to each configured destination by C-STORE.

One thread. About twice a second, and at once when the pipeline enqueues (``outbox`` calls
:meth:`Sender.wake`), it takes, for each
destination of ``live_config.current.destinations`` (read on every pass, so ``dest add`` and
``dest remove`` apply without a restart), the pending items whose next attempt is due, opens one
association and sends them in order, recording each outcome as it comes:

- success (0x0000) or a warning (0xB000, 0xB006, 0xB007): ``delivered``, never sent again;
- permanent refusal, ``failed`` with its reason, no retry: 0xA9xx (data set does not match SOP
  class), 0xCxxx (cannot understand), 0x0122 (SOP class not supported), 0x0124 (not authorised),
  0x0117 (invalid SOP instance), or no presentation context accepted for the SOP class;
- anything else is transient and retried with exponential backoff from ``[sender]
  retry_initial`` capped at ``retry_max``: 0xA7xx (out of resources), 0x0110/0x0213 (processing
  failure, resource limitation), an association rejected or aborted, a connection refused or a
  time-out, a failed TLS handshake (the certificate not accepted, the peer not speaking TLS) or
  unusable TLS files. A destination down for minutes therefore gets everything once it is back, at
  most ``retry_max`` seconds later.

A destination with ``tls = true`` is reached over DICOM TLS (PS3.15 B.1): the context of
:func:`dicom_node.delivery.tls.client_context` is built for each association (renewed certificates apply
at once) and passed to pynetdicom as ``tls_args``.

Items of a destination that is no longer configured become ``orphaned`` on the next pass (logged as
``outbox_destination_removed``; ``status`` shows them with the reason; no file is deleted) and
``pending`` again when a destination of that name is configured again
(``outbox_destination_restored``): see :func:`dicom_node.delivery.outbox.reconcile_destinations`.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import structlog
from pynetdicom import AE
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.delivery import outbox
from dicom_node.state.db import connect
from dicom_node.delivery.tls import ClientContext, client_context, describe_handshake_error

log = structlog.get_logger()

POLL_SECONDS = 0.5
BATCH = 100
SUCCESS_WARNINGS = {0xB000, 0xB006, 0xB007}
PERMANENT_STATUSES = {0x0117, 0x0122, 0x0124}


def classify_status(status: int) -> str:
    """``delivered``, ``failed`` (permanent) or ``retry`` for a C-STORE response status."""
    if status == 0x0000 or status in SUCCESS_WARNINGS:
        return "delivered"
    if status in PERMANENT_STATUSES or (status & 0xFF00) == 0xA900 or (status & 0xF000) == 0xC000:
        return "failed"
    return "retry"


class Sender:
    def __init__(self, live_config) -> None:
        self.live_config = live_config
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None

    def start(self) -> None:
        config = self.live_config.current
        self._conn = connect(config.node.data_dir)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._thread.start()
        outbox.add_listener(self.wake)
        log.info("sender_started", destinations=len(config.destinations))

    def stop(self, timeout: float = 30.0) -> None:
        outbox.remove_listener(self.wake)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        log.info("sender_stopped")

    def wake(self) -> None:
        """Look at the outbox now instead of at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.deliver_due()
            except Exception as exc:  # a bad pass must not kill the sender
                log.exception("send_pass_failed", error=str(exc))
            self._wake.wait(POLL_SECONDS)

    def deliver_due(self, now: float | None = None) -> int:
        """One pass over every configured destination; returns the number of objects delivered."""
        config = self.live_config.current
        self._reconcile(config, now)
        delivered = 0
        for destination in config.destinations:
            if self._stop.is_set():
                break
            items = outbox.due_items(self._conn, destination.name, now=now, limit=BATCH)
            if items:
                delivered += self._deliver(config, destination, items)
        return delivered

    def _reconcile(self, config, now: float | None) -> None:
        """Orphan the pending items of removed destinations; restore those of returning ones."""
        orphaned, restored = outbox.reconcile_destinations(self._conn, [d.name for d in config.destinations], now=now)
        for name, count in orphaned.items():
            log.warning("outbox_destination_removed", destination=name, objects=count, state=outbox.ORPHANED)
        for name, count in restored.items():
            log.info("outbox_destination_restored", destination=name, objects=count, state=outbox.PENDING)

    def _defer(self, conn, bound, items, reason: str, retry) -> None:
        delay = 0.0
        for item in items:
            delay = outbox.mark_retry(conn, item.id, reason, retry.retry_initial, retry.retry_max)
        bound.warning("send_deferred", objects=len(items), reason=reason, retry_in=delay)

    def _deliver(self, config, destination, items: list[outbox.OutboxItem]) -> int:
        conn = self._conn
        retry = config.sender
        bound = log.bind(destination=destination.name, tls=destination.tls)
        context: ClientContext | None = None
        if destination.tls:
            try:
                context = client_context(destination, config.tls)
            except ValueError as exc:  # a missing or unreadable file: the admin may fix it meanwhile
                self._defer(conn, bound, items, f"TLS settings of destination {destination.name!r} cannot be used: {exc}", retry)
                return 0
        ae = AE(ae_title=config.node.ae_title)
        ae.acse_timeout = 15
        ae.dimse_timeout = 120
        ae.network_timeout = 60
        ae.connection_timeout = 5
        for sop_class in sorted({i.sop_class_uid for i in items}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        tls_args = (context, destination.host) if context is not None else None
        try:
            assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
        except Exception as exc:  # resolution errors and the like
            assoc = None
            reason = f"association failed: {exc}"
        else:
            reason = "association rejected" if assoc.is_rejected else "association aborted or refused"
        if context is not None and context.handshake_error is not None:
            reason = f"TLS handshake with {destination.host}:{destination.port} failed: {describe_handshake_error(context.handshake_error)}"
            bound.warning("tls_handshake_failed", host=destination.host, port=destination.port, reason=reason)
        elif context is not None and context.handshake_done and assoc is not None and not assoc.is_established:
            reason += " after the TLS handshake (a destination that refuses this node's client certificate also ends here)"
        if assoc is not None and not assoc.is_established and assoc.rejected_contexts and not assoc.accepted_contexts:
            # the peer answered but accepts none of these SOP classes: retrying cannot help
            refused = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
            for item in items:
                if item.sop_class_uid in refused:
                    outbox.mark_failed(conn, item.id, f"not accepted by the destination: SOP class {item.sop_class_uid}")
            bound.error("send_refused", objects=len(items), reason="no presentation context accepted")
            return 0
        if assoc is None or not assoc.is_established:
            self._defer(conn, bound, items, reason, retry)
            return 0
        _no_delay(assoc)
        delivered = 0
        try:
            for item in items:
                if self._stop.is_set() or not assoc.is_established:
                    break
                outcome, why = self._store(assoc, item)
                if outcome == "delivered":
                    outbox.mark_delivered(conn, item.id)
                    delivered += 1
                    bound.info("sent", sop_instance_uid=item.sop_instance_uid)
                elif outcome == "failed":
                    outbox.mark_failed(conn, item.id, why)
                    bound.error("send_refused", sop_instance_uid=item.sop_instance_uid, reason=why)
                else:
                    delay = outbox.mark_retry(conn, item.id, why, retry.retry_initial, retry.retry_max)
                    bound.warning("send_deferred", sop_instance_uid=item.sop_instance_uid, reason=why, retry_in=delay)
        finally:
            if assoc.is_established:
                assoc.release()
        return delivered

    @staticmethod
    def _store(assoc, item: outbox.OutboxItem) -> tuple[str, str]:
        if not Path(item.path).exists():
            return "failed", f"outbox file missing: {item.path.name}"
        try:
            status = assoc.send_c_store(item.path)
        except ValueError as exc:  # no accepted presentation context for the SOP class
            return "failed", f"not accepted by the destination: {exc}"
        except (OSError, RuntimeError) as exc:
            return "retry", f"send failed: {exc}"
        if "Status" not in status:
            return "retry", "no response (connection lost or time-out)"
        code = int(status.Status)
        comment = str(status.get("ErrorComment", "")).strip()
        text = f"status 0x{code:04X}" + (f": {comment}" if comment else "")
        return classify_status(code), text


def _no_delay(assoc) -> None:
    """Send every PDU at once (no Nagle): big SEGs otherwise crawl into peers with delayed ACKs."""
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass
