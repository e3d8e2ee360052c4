"""Results waiting for a destination that was removed from the config: ``orphaned``, with the reason,
files kept, shown by ``status``, and ``pending`` again (then delivered) when it comes back.

Real SQLite, real files, a real pynetdicom C-STORE SCP on loopback, the real config file edited
with ``dest remove`` / ``dest add`` and re-read by ``LiveConfig`` while the sender thread runs.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import structlog
from pynetdicom import AE, evt

from dicom_node.state import db

from dicom_node.delivery import outbox
from dicom_node.config.edit import add_destination, remove_destination
from dicom_node.config.live import LiveConfig
from dicom_node.delivery.sender import Sender
from dicom_node.ops.status import collect_status, format_status, print_status
from tests.support.results_data import StaticConfig, destination, node_config, outbox_objects, small_case
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return small_case(tmp_path_factory.mktemp("case"))


@pytest.fixture
def objects(case, tmp_path):
    return outbox_objects(case, tmp_path / "results")


class StoreSCP:
    """A plain Storage SCP on 127.0.0.1 that accepts everything and records the SOP Instance UIDs."""

    def __init__(self, sop_classes):
        self.stored: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event):
        with self._lock:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def scp(objects):
    server = StoreSCP(sorted({o.sop_class_uid for o in objects}))
    yield server
    server.stop()



def _outbox_files(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / outbox.OUTBOX_DIR).glob("*.dcm")}


def test_removed_destination_is_orphaned_with_its_reason_and_nothing_is_deleted(objects, scp, tmp_path):
    data_dir = tmp_path / "data"
    conn = db.connect(data_dir)
    # the same three objects for a destination still configured and for one that was removed
    outbox.enqueue(conn, objects, ["pacs", "old-pacs"])
    files_before = _outbox_files(data_dir)
    assert len(files_before) == 3
    sender = Sender(StaticConfig(node_config(data_dir, [destination("pacs", scp.port)])))
    sender._conn = conn
    with structlog.testing.capture_logs() as logs:
        assert sender.deliver_due() == 3
    assert sorted(scp.stored) == sorted(o.sop_instance_uid for o in objects)

    summary = outbox.delivery_summary(conn)
    assert (summary["delivered"], summary["pending"], summary["orphaned"], summary["failed"]) == (3, 0, 3, 0)
    orphaned = [i for i in summary["items"] if i["state"] == outbox.ORPHANED]
    assert {i["destination"] for i in orphaned} == {"old-pacs"} and len(orphaned) == 3
    for item in orphaned:
        assert item["last_error"] == outbox.removed_reason("old-pacs")
        assert "'old-pacs' removed from the configuration" in item["last_error"]
        assert item["attempts"] == 0
    # the outbox copies stay for the orphaned items although "pacs" got them; so do the results
    assert _outbox_files(data_dir) == files_before
    assert all(o.path.exists() for o in objects)
    # one log line per removed destination, with the count; no patient data
    removed = [e for e in logs if e["event"] == "outbox_destination_removed"]
    assert removed == [
        {"event": "outbox_destination_removed", "destination": "old-pacs", "objects": 3, "state": "orphaned", "log_level": "warning"}
    ]
    assert "SYN-0001" not in repr(logs) and "Test^Synthetic" not in repr(logs)
    # further passes change nothing and do not log again
    with structlog.testing.capture_logs() as logs:
        assert sender.deliver_due(now=time.time() + 1e6) == 0
    assert not [e for e in logs if e["event"].startswith("outbox_destination")]
    assert outbox.delivery_summary(conn)["orphaned"] == 3
    conn.close()


def test_only_pending_items_are_orphaned_and_only_orphaned_ones_restored(objects, tmp_path):
    conn = db.connect(tmp_path / "data")
    outbox.enqueue(conn, objects, ["old"], now=0.0)
    delivered, failed, waiting = outbox.due_items(conn, "old", now=0.0)
    outbox.mark_delivered(conn, delivered.id)
    outbox.mark_failed(conn, failed.id, "status 0xA900: data set does not match SOP class")
    outbox.mark_retry(conn, waiting.id, "association rejected", 5.0, 300.0, now=10.0)

    assert outbox.reconcile_destinations(conn, ["pacs"], now=20.0) == ({"old": 1}, {})
    states = {i["sop_instance_uid"]: i for i in outbox.delivery_summary(conn)["items"]}
    assert states[failed.sop_instance_uid]["state"] == "failed"
    assert "0xA900" in states[failed.sop_instance_uid]["last_error"]
    assert states[waiting.sop_instance_uid]["state"] == "orphaned"
    assert states[waiting.sop_instance_uid]["attempts"] == 1
    assert outbox.due_items(conn, "old", now=1e12) == []  # orphaned items are never due
    assert waiting.path.exists()  # its outbox copy is kept

    # nothing to do: no writes, nothing returned
    assert outbox.reconcile_destinations(conn, ["pacs"], now=30.0) == ({}, {})
    # the destination is back: due at once, attempts kept, the removal note cleared
    assert outbox.reconcile_destinations(conn, ["pacs", "old"], now=40.0) == ({}, {"old": 1})
    (item,) = outbox.due_items(conn, "old", now=40.0)
    assert item.id == waiting.id and item.attempts == 1 and item.last_error is None
    summary = outbox.delivery_summary(conn)
    assert (summary["delivered"], summary["failed"], summary["pending"], summary["orphaned"]) == (1, 1, 1, 0)
    conn.close()


def test_status_shows_orphaned_items_and_pending_items_of_unconfigured_destinations(objects, tmp_path, capsys):
    data_dir = tmp_path / "data"
    config_path = tmp_path / "node.toml"
    config_path.write_text(f'[node]\ndata_dir = "{data_dir}"\n', encoding="utf-8")
    conn = db.connect(data_dir)
    outbox.enqueue(conn, objects, ["old-pacs"])
    outbox.enqueue(conn, objects[:1], ["never-ran"])
    outbox.reconcile_destinations(conn, ["never-ran"])  # what the sender did before "never-ran" was removed
    conn.close()

    assert print_status(config_path, as_json=True) == 0
    deliveries = json.loads(capsys.readouterr().out)["deliveries"]
    assert deliveries["orphaned"] == 3 and deliveries["pending"] == 1
    assert deliveries["not_configured"] == {"old-pacs": 3, "never-ran": 1}
    assert {i["state"] for i in deliveries["items"] if i["destination"] == "old-pacs"} == {"orphaned"}

    assert print_status(config_path) == 0
    text = capsys.readouterr().out
    assert "deliveries: pending 1, failed 0, delivered 0, orphaned 3 (destination removed from the config)" in text
    orphan_lines = [line for line in text.splitlines() if line.strip().startswith("orphaned old-pacs:")]
    assert len(orphan_lines) == 3
    assert all("'old-pacs' removed from the configuration" in line for line in orphan_lines)
    (never,) = [line for line in text.splitlines() if "never-ran:" in line]
    assert never.strip().startswith("pending") and "destination not in the config" in never
    assert "waiting for destinations no longer in the config: never-ran (1), old-pacs (3)" in text
    assert "SYN-0001" not in text and "Test^Synthetic" not in text

    # without a config to compare with (collect_status's default) nothing is flagged as unconfigured
    conn = db.connect(data_dir)
    plain = collect_status(conn)
    conn.close()
    assert "not_configured" not in plain["deliveries"]
    assert "no longer in the config" not in format_status(plain)


def count_passes(sender: Sender) -> list[int]:
    """Record each finished pass of the sender thread (its ``deliver_due`` calls): what it
    delivered (None: the pass raised)."""
    passes: list[int | None] = []
    deliver_due = sender.deliver_due

    def counted(now=None):
        delivered = None
        try:
            delivered = deliver_due(now)
            return delivered
        finally:
            passes.append(delivered)

    sender.deliver_due = counted
    return passes


def test_hot_reload_remove_then_add_back_delivers_what_was_waiting(objects, scp, tmp_path):
    """The running sender thread and the real config file: ``dest remove`` orphans the items,
    ``dest add`` of the same name makes them pending again and they reach the SCP."""
    data_dir = tmp_path / "data"
    config_path = tmp_path / "node.toml"
    config_path.write_text(
        f'# node for the test\n[node]\ndata_dir = "{data_dir}"\n\n[sender]\nretry_initial = 0.2\nretry_max = 0.4\n\n'
        '[[sources]]\nae_title = "CT1"\n\n# the PACS, down at first\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 9\n',
        encoding="utf-8",
    )
    live = LiveConfig(config_path, poll_interval=0.1)
    live.start()
    sender = Sender(live)
    passes = count_passes(sender)
    sender.start()
    check = db.connect(data_dir)
    try:
        outbox.enqueue(check, objects, ["pacs"])
        assert wait_until(lambda: min(i["attempts"] for i in outbox.delivery_summary(check)["items"]) >= 1)

        remove_destination(config_path, "pacs")
        assert wait_until(lambda: outbox.delivery_summary(check)["orphaned"] == 3)
        summary = outbox.delivery_summary(check)
        assert summary["pending"] == 0
        assert all("'pacs' removed from the configuration" in i["last_error"] for i in summary["items"])
        assert len(_outbox_files(data_dir)) == 3 and all(o.path.exists() for o in objects)
        # two more whole passes of the sender thread (woken for the first): still orphaned, nothing sent
        seen = len(passes)
        sender.wake()
        assert wait_until(lambda: len(passes) >= seen + 2)
        assert outbox.delivery_summary(check)["orphaned"] == 3 and scp.stored == []

        add_destination(config_path, "pacs", "PACS", "127.0.0.1", scp.port)  # back, now reachable
        assert wait_until(lambda: outbox.delivery_summary(check)["delivered"] == 3)
        assert sorted(scp.stored) == sorted(o.sop_instance_uid for o in objects)
        summary = outbox.delivery_summary(check)
        assert (summary["pending"], summary["orphaned"], summary["failed"]) == (0, 0, 0)
        assert _outbox_files(data_dir) == set()  # delivered everywhere: the outbox copies go
        assert all(o.path.exists() for o in objects)  # the results folder keeps the originals
        assert config_path.read_text().startswith("# node for the test\n")
    finally:
        sender.stop()
        live.stop()
        check.close()
