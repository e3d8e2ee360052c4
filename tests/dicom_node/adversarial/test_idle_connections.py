"""Break 5: idle TCP connections locked the scanners out.

Before the fix 40 connections that never sent an A-ASSOCIATE-RQ made ``echoscu`` fail with
"Rejected Transient, Local Limit Exceeded" for about 30 s, and nothing was logged.
"""

from __future__ import annotations

import socket
import time

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


@needs_dcmtk
def test_forty_idle_connections_do_not_lock_out_an_allowed_scanner(tmp_path):
    with NodeProcess({"sources": [{"ae_title": "CT_1"}]}, tmp_path) as node:
        flood = _idle_sockets(node.port, 40)
        try:
            time.sleep(0.5)  # every connection is accepted and waiting for its first PDU
            started = time.monotonic()
            out = echoscu(node.port, calling_ae="CT_1", called_ae=node.ae_title, extra=["-to", "5", "-ta", "5"])
            took = time.monotonic() - started
            assert out.returncode == 0, out.stdout + out.stderr
            assert took < 4.0, took
            assert "Local Limit Exceeded" not in out.stdout + out.stderr
            # the idle connections are closed by the node: within ARTIM (5 s) the flood is gone
            def closed_by_node() -> bool:
                for s in flood:
                    s.settimeout(0.01)
                    try:
                        if s.recv(1) != b"":
                            return False
                    except socket.timeout:
                        return False
                    except OSError:
                        pass
                return True

            assert wait_until(closed_by_node, timeout=10, step=0.2)
        finally:
            for s in flood:
                s.close()
        events = node.log_events()
        assert any(e.get("event") == "idle_connection_closed" and e.get("peer") == "127.0.0.1" for e in events), (
            node.log_text()[-3000:]
        )
        assert node.echo(calling_ae="CT_1")
        assert node.stop() == 0
