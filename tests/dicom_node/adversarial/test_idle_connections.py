"""Break 5: idle TCP connections locked the scanners out.

Before the fix 40 connections that never sent an A-ASSOCIATE-RQ made ``echoscu`` fail with
"Rejected Transient, Local Limit Exceeded" for about 30 s, and nothing was logged.
"""

from __future__ import annotations

import socket
import time

from dicom_node.ingest.connection_guard import ARTIM_S, PENDING_PER_PEER
from tests.dicom_node.adversarial.conftest import needs_dcmtk
from tests.support.dcmtk import echoscu
from tests.support.node_process import NodeProcess
from tests.support.polling import wait_until


def _idle_sockets(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(s)
    return sockets


def _closed_by_node(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the node has closed (end of stream or reset)."""
    closed = 0
    for s in sockets:
        s.settimeout(0.01)
        try:
            if s.recv(1) == b"":
                closed += 1
        except socket.timeout:
            pass
        except OSError:
            closed += 1
    return closed


@needs_dcmtk
def test_forty_idle_connections_do_not_lock_out_an_allowed_scanner(tmp_path):
    with NodeProcess({"sources": [{"ae_title": "CT_1"}]}, tmp_path) as node:
        flood = _idle_sockets(node.port, 40)
        try:
            # every connection is accepted: the node keeps PENDING_PER_PEER idle ones of a peer and
            # closes the oldest as each newer one comes, so 40 - PENDING_PER_PEER closed = all 40 seen
            assert wait_until(lambda: _closed_by_node(flood) >= len(flood) - PENDING_PER_PEER, timeout=ARTIM_S, step=0.05)
            started = time.monotonic()
            out = echoscu(node.port, calling_ae="CT_1", called_ae=node.ae_title, extra=["-to", "5", "-ta", "5"])
            took = time.monotonic() - started
            assert out.returncode == 0, out.stdout + out.stderr
            assert took < 4.0, took
            assert "Local Limit Exceeded" not in out.stdout + out.stderr
            # the idle connections are closed by the node: within ARTIM (5 s) the flood is gone
            assert wait_until(lambda: _closed_by_node(flood) == len(flood), timeout=10, step=0.2)
        finally:
            for s in flood:
                s.close()
        events = node.log_events()
        assert any(e.get("event") == "idle_connection_closed" and e.get("peer") == "127.0.0.1" for e in events), (
            node.log_text()[-3000:]
        )
        assert node.echo(calling_ae="CT_1")
        assert node.stop() == 0
