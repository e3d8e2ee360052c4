"""Hot reload on a running ``m2unet-node run``: scanners come and go without a restart, and a
broken hand edit leaves the node running on its last good config."""

from __future__ import annotations

import pytest

from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.dcmtk import echoscu, have_dcmtk, storescu
from tests.support.node_process import NodeProcess
from tests.support.polling import wait_until

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu, echoscu) not installed")

CONFIG = """\
# a node for the hot reload tests
[node]
ae_title = "M2UNET"
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir}"
series_timeout = 1
log_format = "json"

# the scanner that is always there
[[sources]]
ae_title = "CT_1"
"""


def eventually(condition, timeout: float = 10.0) -> bool:
    """True as soon as ``condition()`` is (the node checks its config file every second)."""
    return bool(wait_until(condition, timeout=timeout, step=0.2))


def accepted(node: NodeProcess, calling_ae: str) -> bool:
    return echoscu(node.port, calling_ae=calling_ae, called_ae=node.ae_title).returncode == 0


def events(node: NodeProcess, name: str) -> list[dict]:
    return [e for e in node.log_events() if e.get("event") == name]


def test_ae_add_lets_a_new_scanner_in_and_ae_remove_shuts_it_out(tmp_path):
    files = write_ct_series(tmp_path / "series", phantom_hu(n=3, size=16))
    with NodeProcess(CONFIG, tmp_path) as node:
        pid = node.proc.pid
        assert accepted(node, "CT_1")
        assert not accepted(node, "CT_NEW")

        added = node.run_cli("ae", "add", "CT_NEW", "--host", "127.0.0.1")
        assert added.returncode == 0, added.stderr
        assert eventually(lambda: accepted(node, "CT_NEW"))
        sent = storescu(node.port, files, calling_ae="CT_NEW", called_ae=node.ae_title)
        assert sent.successes == 3, sent.output[-2000:]

        removed = node.run_cli("ae", "remove", "CT_NEW")
        assert removed.returncode == 0, removed.stderr
        assert eventually(lambda: not accepted(node, "CT_NEW"))
        refused = storescu(node.port, files, calling_ae="CT_NEW", called_ae=node.ae_title)
        assert refused.association_rejected and refused.successes == 0
        assert accepted(node, "CT_1")

        assert node.proc.pid == pid and len(events(node, "node_started")) == 1  # never restarted
    text = node.config_path.read_text()
    assert "# the scanner that is always there" in text and "# a node for the hot reload tests" in text


def test_a_broken_hand_edit_leaves_the_node_on_its_last_good_config(tmp_path):
    with NodeProcess(CONFIG, tmp_path) as node:
        good = node.config_path.read_text()
        # A hand edit that swaps CT_1 for CT_2 and misspells a key: refused as a whole.
        broken = good.replace('ae_title = "CT_1"', 'ae_title = "CT_2"\nhots = "127.0.0.1"')
        node.config_path.write_text(broken)
        assert eventually(lambda: events(node, "config_rejected"))
        [rejected] = events(node, "config_rejected")
        assert rejected["problem"] == "sources[0].hots = \"127.0.0.1\": unknown key; did you mean 'host'?"
        assert node.running
        assert accepted(node, "CT_1") and not accepted(node, "CT_2")

        node.reload()  # SIGHUP re-reads it: still refused, still running
        assert eventually(lambda: len(events(node, "config_rejected")) == 2)
        assert node.running and accepted(node, "CT_1")

        node.config_path.write_text(broken.replace('\nhots = "127.0.0.1"', ""))  # fixed
        assert eventually(lambda: accepted(node, "CT_2"))
        assert not accepted(node, "CT_1")
        assert len(events(node, "config_reloaded")) >= 1
        assert node.stop() == 0
