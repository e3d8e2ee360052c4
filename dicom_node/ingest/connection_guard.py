"""Bounds on open TCP connections, so that idle or flooding peers cannot lock out the scanners.

pynetdicom gives every accepted TCP connection a thread and counts it against the AE's
association limit from the moment it opens, before the peer has sent anything. Forty connections
that never send an A-ASSOCIATE-RQ used to fill the limit (every scanner then got "Rejected
Transient, Local Limit Exceeded") for the 30 s of pynetdicom's default ARTIM timer. The node now:

- closes a connection that sends no A-ASSOCIATE-RQ within ``ARTIM_S`` seconds (the SCP's
  ``acse_timeout``, which is pynetdicom's ARTIM timer);
- keeps at most ``PENDING_PER_PEER`` connections per peer address, and ``PENDING_TOTAL`` in all,
  that have not yet sent their A-ASSOCIATE-RQ: a new one closes the oldest such connection (so a
  scanner connecting during a flood from its own address is still served);
- refuses a new connection from an address that already has ``PEER_CONNECTIONS_MAX`` open;
- counts established associations itself (``StorageSCP``: ``ASSOCIATIONS_MAX``), with pynetdicom's
  own limit set above the sum, so idle connections never count against the scanners.

Refusals and closes are logged (``connection_refused``, ``idle_connection_closed``) with the peer
address, at most once per peer every ``LOG_EVERY_S`` seconds with a count of those not logged.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import OrderedDict

import structlog

log = structlog.get_logger()

ARTIM_S = 5.0
PENDING_PER_PEER = 8
PENDING_TOTAL = 32
PEER_CONNECTIONS_MAX = 48
LOG_EVERY_S = 10.0


def close_connection(assoc) -> None:
    """Shut the association's socket down: its DUL sees the close and the thread ends."""
    try:
        raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if raw is not None:
            raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class ConnectionGuard:
    def __init__(
        self,
        pending_per_peer: int = PENDING_PER_PEER,
        pending_total: int = PENDING_TOTAL,
        peer_connections_max: int = PEER_CONNECTIONS_MAX,
    ) -> None:
        self.pending_per_peer = pending_per_peer
        self.pending_total = pending_total
        self.peer_connections_max = peer_connections_max
        self._lock = threading.Lock()
        self._open: dict[int, tuple[object, str]] = {}  # id(assoc) -> (assoc, peer)
        self._pending: OrderedDict[int, tuple[object, str]] = OrderedDict()  # oldest first
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # (event, peer) -> (last, not logged)

    def _prune(self) -> None:
        for key, (assoc, _) in list(self._open.items()):
            if assoc.ident is not None and not assoc.is_alive():  # started, and ended
                self._open.pop(key, None)
                self._pending.pop(key, None)

    def opened(self, assoc, peer: str) -> bool:
        """A new TCP connection from ``peer``; False: refuse it (the caller's socket is closed here)."""
        evict = []
        with self._lock:
            self._prune()
            from_peer = sum(1 for _, p in self._open.values() if p == peer)
            if from_peer >= self.peer_connections_max:
                refused = True
            else:
                refused = False
                pending_peer = [k for k, (_, p) in self._pending.items() if p == peer]
                while len(pending_peer) >= self.pending_per_peer:
                    evict.append(self._pending.pop(pending_peer.pop(0)))
                while len(self._pending) >= self.pending_total:
                    evict.append(self._pending.popitem(last=False)[1])
                self._open[id(assoc)] = (assoc, peer)
                self._pending[id(assoc)] = (assoc, peer)
        if refused:
            self._log("connection_refused", peer, open=from_peer, limit=self.peer_connections_max,
                      reason="too many open connections from this address")
            close_connection(assoc)
            return False
        for old, old_peer in evict:
            self._log("idle_connection_closed", old_peer,
                      reason="no A-ASSOCIATE-RQ yet and newer connections waiting")
            close_connection(old)
        return True

    def requested(self, assoc) -> None:
        """The connection sent its A-ASSOCIATE-RQ: no longer idle."""
        with self._lock:
            self._pending.pop(id(assoc), None)

    def closed(self, assoc) -> None:
        with self._lock:
            self._open.pop(id(assoc), None)
            self._pending.pop(id(assoc), None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            self._prune()
            return {"open": len(self._open), "pending": len(self._pending)}

    def _log(self, event: str, peer: str, **values) -> None:
        now = time.monotonic()
        with self._lock:
            last, skipped = self._logged.get((event, peer), (None, 0))
            if last is not None and now - last < LOG_EVERY_S:
                self._logged[(event, peer)] = (last, skipped + 1)
                return
            self._logged[(event, peer)] = (now, 0)
            if len(self._logged) > 1024:  # many peers: forget the oldest
                for key in list(self._logged)[:512]:
                    self._logged.pop(key, None)
        log.warning(event, peer=peer, not_logged_since_last=skipped, **values)
