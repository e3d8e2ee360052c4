"""LiveConfig: the last good config, re-read on change; a bad edit is refused and logged."""

from __future__ import annotations

import io
import json
import threading

import pytest

from dicom_node.config.model import ConfigError
from dicom_node.config.edit import add_source, remove_source
from dicom_node.config.live import LiveConfig
from dicom_node.ops.logs import configure_logging, reset_logging
from tests.support.polling import wait_until

BASE = """\
[node]
ae_title = "M2UNET"
port = 11112

[[sources]]
ae_title = "CT_1"
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(BASE)
    return path


@pytest.fixture
def log_lines():
    out = io.StringIO()
    configure_logging("json", stream=out)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    reset_logging()


def wait_for(condition, timeout=10.0):
    """Poll ``condition`` until true (the watcher polls every 0.1 s in these tests)."""
    return wait_until(condition, timeout=timeout, step=0.02)


def count_watcher_polls(live: LiveConfig) -> list[int]:
    """Count the watcher's looks at the file (its ``check_file`` calls): one entry per look."""
    looks: list[int] = []
    check_file = live.check_file

    def counted():
        try:
            return check_file()
        finally:
            looks.append(1)

    live.check_file = counted
    return looks


def titles(live: LiveConfig) -> list[str]:
    return [s.ae_title for s in live.current.sources]


def test_a_bad_file_at_start_raises(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[node]\nport = "x"\n')
    with pytest.raises(ConfigError, match="node.port"):
        LiveConfig(path)
    with pytest.raises(ConfigError, match="cannot read"):
        LiveConfig(tmp_path / "absent.toml")


def test_reload_takes_a_good_edit(config_file):
    live = LiveConfig(config_file)
    seen = []
    live.subscribe(seen.append)
    config_file.write_text(BASE + '\n[[sources]]\nae_title = "CT_2"\nhost = "10.0.0.2"\n')
    assert live.reload() is True
    assert titles(live) == ["CT_1", "CT_2"]
    assert [titles_of(c) for c in seen] == [["CT_1", "CT_2"]]
    assert live.reload() is True  # unchanged: still good, subscribers not called again
    assert len(seen) == 1


def titles_of(config) -> list[str]:
    return [s.ae_title for s in config.sources]


def test_bad_edit_is_refused_logged_and_the_last_good_config_stays(config_file, log_lines):
    live = LiveConfig(config_file)
    seen = []
    live.subscribe(seen.append)
    config_file.write_text(BASE + '\n[[sources]]\nae_title = "THIS_TITLE_IS_TOO_LONG"\n[node2]\n')
    assert live.reload() is False
    assert titles(live) == ["CT_1"]
    assert seen == []
    rejected = [r for r in log_lines() if r["event"] == "config_rejected"]
    assert [r["problem"] for r in rejected] == [
        'sources[1].ae_title = "THIS_TITLE_IS_TOO_LONG": must be at most 16 characters (has 22)',
        "node2 = {...}: unknown key; did you mean 'node'?",
    ]
    config_file.write_text("[node\n")  # not even TOML
    assert live.reload() is False
    config_file.unlink()
    assert live.reload() is False
    assert titles(live) == ["CT_1"]


def test_restart_bound_keys_keep_their_start_up_values_and_are_reported(config_file, log_lines):
    live = LiveConfig(config_file)
    start = live.current
    seen = []
    live.subscribe(seen.append)
    edited = BASE.replace("11112", "11113").replace("[node]\n", '[node]\ndata_dir = "elsewhere"\nseries_timeout = 7\n')
    config_file.write_text(edited)
    assert live.reload() is True
    assert live.current.node.port == 11112  # the socket is bound: only a restart moves it
    assert live.current.node.data_dir == start.node.data_dir
    assert live.current.node.series_timeout == 7  # live keys do change
    [record] = [r for r in log_lines() if r["event"] == "config_needs_restart"]
    assert record["keys"] == ["node.port", "node.data_dir"]
    assert len(seen) == 1


def test_watcher_applies_cli_edits_and_ignores_broken_hand_edits(config_file, log_lines):
    live = LiveConfig(config_file, poll_interval=0.1)
    looks = count_watcher_polls(live)
    with live:
        add_source(config_file, "CT_2")
        assert wait_for(lambda: titles(live) == ["CT_1", "CT_2"])
        config_file.write_text(config_file.read_text() + "\n[[sources]]\nhost = 5\n")
        assert wait_for(lambda: any(r["event"] == "config_rejected" for r in log_lines()))
        assert titles(live) == ["CT_1", "CT_2"]
        # the broken content is looked at once, not re-logged on every poll: several more polls
        after_rejection = len(looks)
        assert wait_for(lambda: len(looks) >= after_rejection + 3)
        assert sum(r["event"] == "config_kept" for r in log_lines()) == 1
        config_file.write_text(BASE)  # fixed by hand
        assert wait_for(lambda: titles(live) == ["CT_1"])
        add_source(config_file, "CT_3")
        remove_source(config_file, "CT_1")
        assert wait_for(lambda: titles(live) == ["CT_3"])
    assert not any(t.name == "config-watcher" for t in threading.enumerate())


def test_request_reload_from_a_signal_handler_is_served_by_the_watcher(config_file):
    live = LiveConfig(config_file, poll_interval=60)  # polling would take a minute
    with live:
        config_file.write_text(BASE.replace("CT_1", "CT_9"))
        live.request_reload()
        assert wait_for(lambda: titles(live) == ["CT_9"], timeout=5)


def test_a_failing_subscriber_does_not_stop_the_others(config_file, log_lines):
    live = LiveConfig(config_file)
    seen = []

    def broken(config):
        raise RuntimeError("subscriber bug")

    live.subscribe(broken)
    unsubscribe = live.subscribe(seen.append)
    config_file.write_text(BASE.replace("CT_1", "CT_2"))
    assert live.reload() is True
    assert len(seen) == 1
    assert any(r["event"] == "config_subscriber_failed" for r in log_lines())
    unsubscribe()
    config_file.write_text(BASE)
    live.reload()
    assert len(seen) == 1
