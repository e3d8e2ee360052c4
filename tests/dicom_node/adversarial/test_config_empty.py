"""Break 3: an empty or comment-only config was taken as valid.

Before the fix ``check-config`` said ``ok (0 sources)`` for an empty file, and a running node that
hot-reloaded one dropped every source, so every scanner was refused.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.dicom_node.adversarial.conftest import needs_dcmtk
from tests.support.dcmtk import echoscu
from tests.support.node_process import NodeProcess
from tests.support.paths import REPO
from tests.support.polling import wait_until

CASES = {
    "empty": ("", ("node = (missing)", "sources = (missing)")),
    "comment-only": ("# the node's config\n# (to be written)\n", ("node = (missing)", "sources = (missing)")),
    "no [node]": ('[[sources]]\nae_title = "CT_1"\n', ("node = (missing)",)),
    "no [[sources]]": ('[node]\nae_title = "M2UNET"\nport = 11112\n', ("sources = (missing)",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_config_refuses(tmp_path, case):
    text, expected = CASES[case]
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(path), "check-config"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    for problem in expected:
        assert problem in out.stderr, out.stderr
    assert "ok" not in out.stdout


def test_zero_sources_is_valid_when_any_ae_may_send(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[node]\nae_title = "M2UNET"\nreject_unknown_sources = false\n', encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(path), "check-config"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert out.returncode == 0, out.stderr


@needs_dcmtk
def test_hot_reload_of_a_comment_only_file_keeps_the_last_good_config(tmp_path):
    with NodeProcess({"sources": [{"ae_title": "CT_1"}]}, tmp_path) as node:
        assert echoscu(node.port, calling_ae="CT_1", called_ae=node.ae_title).returncode == 0
        node.config_path.write_text("# emptied by a careless edit\n", encoding="utf-8")
        node.reload()
        wait_until(lambda: any(e.get("event") == "config_rejected" for e in node.log_events()), timeout=15, step=0.2)
        rejected = [e for e in node.log_events() if e.get("event") == "config_rejected"]
        assert rejected, node.log_text()[-3000:]
        assert any("sources" in str(e.get("problem", "")) for e in rejected)
        # the scanner is still served by the last good config
        assert echoscu(node.port, calling_ae="CT_1", called_ae=node.ae_title).returncode == 0
        assert node.stop() == 0
