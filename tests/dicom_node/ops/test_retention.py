"""Retention: what a pass deletes and what it must keep, crash safety, the late instance after a
purge (through a real C-STORE), the job inside the node, the config keys and ``m2unet-node purge``.

Real SQLite databases and real files in tmp folders; time moves by passing ``now`` to the pass.
"""

from __future__ import annotations

import copy
import io
import json
import os
import sqlite3
import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.state import db, schema
from dicom_node.state import results as results_state
from dicom_node.state import retention as retention_state

from dicom_node.delivery import outbox

from dicom_node.ops import retention

from dicom_node.ops import retention_worker
from dicom_node.config.model import ConfigError, RetentionSettings, config_from_text
from dicom_node.config.validation import validate_config
from dicom_node.ops.logs import configure_logging, reset_logging
from dicom_node.ops.recovery import reconcile_spool
from dicom_node.results.records import record_result, result_folder
from dicom_node.ingest.spool import Spool
from tests.support.paths import REPO
from tests.support.polling import wait_until

DAY = 86400.0
CT = "1.2.840.10008.5.1.4.1.1.2"
SETTINGS = RetentionSettings(received_days=7, results_days=30, check_interval=3600)


# --- building a data_dir -------------------------------------------------------------------------


class DataDir:
    """A data_dir with real spool files, real result folders and the node's tables."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conn = db.connect(root)
        self.spool = Spool(root)
        self.n = 0

    def receive(self, series: str, count: int = 3, size: int = 1000, study: str = "1.2.9") -> list[Path]:
        """``count`` instances of ``series`` stored as ingest stores them (file, then row)."""
        paths = []
        for _ in range(count):
            self.n += 1
            sop = f"{series}.{self.n}"
            path = self.spool.instance_path(study, series, sop)
            self.spool.write(path, [os.urandom(size)])
            db.record_instance(
                self.conn,
                db.InstanceRecord(sop, series, study, CT, "1.2.840.10008.1.2.1", path.relative_to(self.root).as_posix(), sop, size, "CT_1"),
            )
            paths.append(path)
        return paths

    def finish(self, series: str, state: str = "done", reason: str | None = None) -> None:
        """receiving -> queued -> running -> ``state`` (or skipped straight from the assembler)."""
        record = db.get_series(self.conn, series)
        if state == "skipped":
            assert db.complete_series(self.conn, series, record.version, "skipped", reason or "too few usable slices: 1 < 8")
            return
        assert db.complete_series(self.conn, series, record.version, "queued")
        if state == "queued":
            return
        assert db.set_series_state(self.conn, series, "running", version=record.version)
        if state != "running":
            assert db.set_series_state(self.conn, series, state, reason=reason, version=record.version)

    def results(self, series: str, destinations: list[str], study: str = "1.2.9", size: int = 500) -> list[str]:
        """A result set written and recorded as the pipeline does; its objects queued for
        ``destinations``. Returns the SOP Instance UIDs (seg, sr, summary)."""
        version = db.get_series(self.conn, series).version
        folder = result_folder(self.root, study, series, version)
        folder.mkdir(parents=True, exist_ok=True)
        uids, objects = [], []
        for kind in ("seg", "sr", "summary"):
            uid = f"2.25.{abs(hash((series, version, kind))) % 10**30}"
            path = folder / f"{kind}.dcm"
            path.write_bytes(os.urandom(size))
            uids.append(uid)
            objects.append(outbox.OutboxObject(path, CT, uid, study, series))
        (folder / "findings.json").write_text("{}")
        outbox.enqueue(self.conn, objects, destinations)
        record_result(
            self.conn,
            series_instance_uid=series,
            version=version,
            study_instance_uid=study,
            folder=folder,
            seg_sop_instance_uid=uids[0],
            sr_sop_instance_uid=uids[1],
            summary_sop_instance_uid=uids[2],
            destinations=len(destinations),
            severity="non-severe",
            probability_severe=0.1,
        )
        return uids

    def outbox_ids(self, series: str, destination: str | None = None) -> list[int]:
        sql, args = "SELECT id FROM outbox WHERE source_series_uid = ?", [series]
        if destination:
            sql, args = sql + " AND destination = ?", args + [destination]
        return [r[0] for r in self.conn.execute(sql, args).fetchall()]

    def deliver(self, series: str, destination: str | None = None, at: float | None = None) -> None:
        for item_id in self.outbox_ids(series, destination):
            outbox.mark_delivered(self.conn, item_id, now=at)

    def rows(self, series: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM instances WHERE series_instance_uid = ?", (series,)).fetchone()[0]

    def series(self, uid: str) -> db.SeriesRecord:
        return db.get_series(self.conn, uid)


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path / "data")
    yield d
    d.conn.close()


def later(days: float) -> float:
    return time.time() + days * DAY


# --- received instances --------------------------------------------------------------------------


def test_done_and_delivered_long_ago_is_purged_files_gone_bytes_counted(data):
    files = data.receive("1.2.3", count=4, size=1234)
    data.finish("1.2.3", "done")
    data.results("1.2.3", ["pacs"])
    data.deliver("1.2.3")
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    assert [s.series_instance_uid for s in report.series] == ["1.2.3"]
    assert report.spool_files == 4 and report.series[0].files == 4
    assert report.series[0].bytes == 4 * 1234 and report.bytes_freed >= 4 * 1234
    assert not any(p.exists() for p in files)
    assert data.rows("1.2.3") == 0
    s = data.series("1.2.3")
    assert s.state == "done" and s.purged and s.purged_instances == 4 and s.instances == 0 and s.version == 1
    assert db.purged_series_count(data.conn) == 1
    assert data.conn.execute("SELECT purge_started_at FROM series").fetchone()[0] is None
    # a second pass finds nothing more to do
    again = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(9))
    assert again.series_purged == 0 and again.spool_files == 0


def test_recent_series_and_recent_deliveries_are_kept(data):
    recent = data.receive("1.2.3")
    data.finish("1.2.3", "done")
    old_but_late_delivery = data.receive("1.2.4")
    data.finish("1.2.4", "done")
    data.results("1.2.4", ["pacs"])
    data.deliver("1.2.4", at=later(5))  # the PACS was down for five days
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(6))
    assert report.series_purged == 0 and all(p.exists() for p in recent)
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    assert [s.series_instance_uid for s in report.series] == ["1.2.3"]  # 1.2.4: 3 days after delivery
    assert all(p.exists() for p in old_but_late_delivery)
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(12.5))
    assert [s.series_instance_uid for s in report.series] == ["1.2.4"]


def test_series_with_pending_orphaned_or_failed_deliveries_are_held(data):
    for uid in ("1.2.10", "1.2.11", "1.2.12", "1.2.13"):
        data.receive(uid)
        data.finish(uid, "done")
        data.results(uid, ["pacs", "archive"])
    data.deliver("1.2.10", "pacs")  # archive still pending
    data.deliver("1.2.11", "pacs")
    data.conn.execute("UPDATE outbox SET state = 'orphaned' WHERE source_series_uid = '1.2.11' AND destination = 'archive'")
    data.deliver("1.2.12", "pacs")
    for item_id in data.outbox_ids("1.2.12", "archive"):
        outbox.mark_failed(data.conn, item_id, "refused: 0xA700")
    data.deliver("1.2.13")  # everything delivered to both
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(60))
    assert [s.series_instance_uid for s in report.series] == ["1.2.13"]
    held = {h.series_instance_uid: h.waiting for h in report.held}
    assert held == {"1.2.10": {"pending": 3}, "1.2.11": {"orphaned": 3}, "1.2.12": {"failed": 3}}
    for uid in held:
        assert data.rows(uid) == 3 and not data.series(uid).purged
    # their result folders are kept as well (the only copy of an undelivered result)
    assert report.held_result_sets == 3 and {r.series_instance_uid for r in report.result_sets} == {"1.2.13"}
    for uid in held:
        assert (result_folder(data.root, "1.2.9", uid, 1) / "seg.dcm").exists()


@pytest.mark.parametrize("state", ["receiving", "queued", "running"])
def test_series_not_final_are_never_touched(data, state):
    files = data.receive("1.2.3")
    if state != "receiving":
        data.finish("1.2.3", state)
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(400))
    assert report.series_purged == 0 and all(p.exists() for p in files) and data.rows("1.2.3") == 3


@pytest.mark.parametrize("state", ["failed", "skipped"])
def test_failed_and_skipped_series_are_purged_after_received_days(data, state):
    files = data.receive("1.2.3")
    data.finish("1.2.3", state, reason="reconstruction: slices not evenly spaced")
    assert retention.apply_retention(data.conn, data.root, SETTINGS, now=later(6.9)).series_purged == 0
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(7.1))
    assert report.series_purged == 1 and not any(p.exists() for p in files)
    s = data.series("1.2.3")
    assert s.state == state and s.reason and s.purged


def test_zero_days_keeps_everything_forever(data):
    files = data.receive("1.2.3")
    data.finish("1.2.3", "done")
    data.results("1.2.3", [])
    quarantined = data.root / "quarantine" / "x.dcm"
    quarantined.parent.mkdir()
    quarantined.write_bytes(b"junk")
    os.utime(quarantined, (0, 0))
    report = retention.apply_retention(
        data.conn, data.root, RetentionSettings(received_days=0, results_days=0), now=later(100000)
    )
    assert report.files_deleted == 0 and report.series_purged == 0 and not report.result_sets
    assert all(p.exists() for p in files) and quarantined.exists()
    assert (result_folder(data.root, "1.2.9", "1.2.3", 1) / "seg.dcm").exists()


def test_dry_run_reports_and_deletes_nothing(data):
    files = data.receive("1.2.3", count=2, size=100)
    data.finish("1.2.3", "done")
    data.results("1.2.3", [], size=50)
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(31), dry_run=True)
    assert report.dry_run and report.series_purged == 1 and report.spool_files == 2 and len(report.result_sets) == 1
    assert report.bytes_freed >= 2 * 100 + 3 * 50
    assert all(p.exists() for p in files) and data.rows("1.2.3") == 2 and not data.series("1.2.3").purged
    assert (result_folder(data.root, "1.2.9", "1.2.3", 1) / "seg.dcm").exists()
    assert retention_state.last_pass(data.conn) is None  # a dry run is not a pass


# --- results, outbox copies, quarantine ---------------------------------------------------------


def test_results_kept_on_disk_are_removed_after_results_days(data):
    data.receive("1.2.3")
    data.finish("1.2.3", "done")
    data.results("1.2.3", [])  # no destination: kept on disk
    folder = result_folder(data.root, "1.2.9", "1.2.3", 1)
    assert not retention.apply_retention(data.conn, data.root, SETTINGS, now=later(29)).result_sets
    assert folder.is_dir()
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(31))
    assert [(r.series_instance_uid, r.version, r.files) for r in report.result_sets] == [("1.2.3", 1, 4)]
    assert not folder.exists() and report.result_files == 4
    assert results_state.purged_result_sets(data.conn) == {("1.2.3", 1)}
    from dicom_node.ops.status import collect_status

    assert collect_status(data.conn)["deliveries"]["kept"] == []  # status no longer lists it as kept


def test_delivered_results_go_results_days_after_delivery_failed_ones_stay(data):
    for uid in ("1.2.3", "1.2.4"):
        data.receive(uid)
        data.finish(uid, "done")
        data.results(uid, ["pacs"])
    data.deliver("1.2.3", at=later(10))
    for item_id in data.outbox_ids("1.2.4"):
        outbox.mark_failed(data.conn, item_id, "refused")
    settings = RetentionSettings(received_days=0, results_days=30)
    assert not retention.apply_retention(data.conn, data.root, settings, now=later(35)).result_sets
    report = retention.apply_retention(data.conn, data.root, settings, now=later(41))
    assert [r.series_instance_uid for r in report.result_sets] == ["1.2.3"] and report.held_result_sets == 1
    assert not result_folder(data.root, "1.2.9", "1.2.3", 1).exists()
    assert (result_folder(data.root, "1.2.9", "1.2.4", 1) / "seg.dcm").exists()


def test_stray_outbox_copies_unrecorded_result_folders_and_quarantine_go(data):
    data.receive("1.2.3")
    data.finish("1.2.3", "done")
    uids = data.results("1.2.3", ["pacs"])
    pending_copy = data.root / "outbox" / f"{uids[0]}.dcm"
    stray_copy = data.root / "outbox" / "2.25.999.dcm"  # an enqueue that crashed before its rows
    stray_copy.write_bytes(b"x" * 10)
    stale = data.root / "results" / "aaaa" / "bbbb" / "v1"  # a run overtaken by a newer version
    stale.mkdir(parents=True)
    (stale / "seg.dcm").write_bytes(b"y" * 20)
    quarantined = data.root / "quarantine" / "bad.dcm"
    quarantined.parent.mkdir()
    quarantined.write_bytes(b"z" * 30)
    young = data.root / "quarantine" / "new.dcm"
    young.write_bytes(b"z")
    past = time.time() - 40 * DAY
    for p in (stray_copy, stale / "seg.dcm", stale, quarantined):
        os.utime(p, (past, past))
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=time.time())
    assert not stray_copy.exists() and not stale.exists() and not quarantined.exists()
    assert young.exists() and pending_copy.exists()  # still waiting to be sent: never touched
    assert report.outbox_files == 1 and report.stray_result_folders == 1 and report.quarantine_files == 1
    assert report.bytes_freed == 10 + 20 + 30
    assert (result_folder(data.root, "1.2.9", "1.2.3", 1) / "seg.dcm").exists()


def test_start_up_tidy_removes_emptied_folders_only(data):
    files = data.receive("1.2.3")
    data.finish("1.2.3", "done")
    keep = data.receive("1.2.4", study="1.2.8")
    retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    assert files[0].parent.is_dir()  # emptied, not removed while the node runs
    assert retention.remove_empty_folders(data.root) == 2  # series and study folder of 1.2.3
    assert not files[0].parent.exists() and not files[0].parent.parent.exists() and all(p.exists() for p in keep)
    assert (data.root / "spool").is_dir()


# --- crash safety --------------------------------------------------------------------------------


def test_crash_after_deleting_files_resurrects_nothing_and_is_finished_at_start_up(data, monkeypatch):
    files = data.receive("1.2.3", count=5)
    data.finish("1.2.3", "done")

    real_remove = retention._Deleter.remove
    calls = []

    def remove_some(self, path):  # the process dies after three files
        calls.append(path)
        if len(calls) > 3:
            raise KeyboardInterrupt("killed")
        return real_remove(self, path)

    monkeypatch.setattr(retention._Deleter, "remove", remove_some)
    with pytest.raises(KeyboardInterrupt):
        retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    monkeypatch.undo()
    # the state a crash leaves: marked, some files gone, every row still there
    s = data.series("1.2.3")
    assert s.state == "done" and not s.purged
    assert data.conn.execute("SELECT purge_started_at FROM series").fetchone()[0] is not None
    assert sum(p.exists() for p in files) == 2 and data.rows("1.2.3") == 5
    # start-up: recovery re-records spool files without rows; here every file has its row
    assert reconcile_spool(data.conn, data.spool) == 0
    assert data.series("1.2.3").version == 1 and data.series("1.2.3").state == "done"
    # a pass never picks a series whose purge is under way as new, and the resume finishes it
    assert retention.due_series(data.conn, 7, later(8))[0] == []
    assert retention.resume_interrupted_purges(data.conn, data.root) == 1
    assert not any(p.exists() for p in files) and data.rows("1.2.3") == 0
    s = data.series("1.2.3")
    assert s.purged and s.purged_instances == 5 and s.version == 1
    assert data.conn.execute("SELECT purge_started_at FROM series").fetchone()[0] is None


def test_files_are_deleted_before_rows_so_recovery_cannot_bring_a_series_back(data, monkeypatch):
    """A crash right after the files are gone and before the rows go: nothing to re-record."""
    files = data.receive("1.2.3", count=3)
    data.finish("1.2.3", "done")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the rows went")

    monkeypatch.setattr(retention, "_finish_purge", crash)
    with pytest.raises(KeyboardInterrupt):
        retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    monkeypatch.undo()
    assert not any(p.exists() for p in files)
    assert reconcile_spool(data.conn, data.spool) == 0 and data.series("1.2.3").version == 1
    retention.apply_retention(data.conn, data.root, SETTINGS, now=later(9))  # the next pass finishes it
    assert data.rows("1.2.3") == 0 and data.series("1.2.3").purged


def test_a_series_reopened_between_selection_and_purge_is_left_alone(data, monkeypatch):
    files = data.receive("1.2.3")
    data.finish("1.2.3", "done")
    real = retention.due_series

    def due_then_late_instance(*args, **kwargs):
        result = real(*args, **kwargs)
        data.receive("1.2.3", count=1)  # arrives while the pass runs
        return result

    monkeypatch.setattr(retention, "due_series", due_then_late_instance)
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    assert report.series_purged == 0 and all(p.exists() for p in files)
    assert data.series("1.2.3").state == "receiving" and data.rows("1.2.3") == 4


def test_an_existing_database_is_migrated(tmp_path):
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    old = sqlite3.connect(data_dir / db.DB_FILENAME)
    old.executescript(schema.TABLES)
    old.execute(
        "INSERT INTO series (series_instance_uid, study_instance_uid, calling_ae, state, version, instances,"
        " first_received, last_received, updated_at) VALUES ('1.2.3', '1.2', 'CT_1', 'done', 1, 0, 1, 1, 1)"
    )
    old.commit()
    old.close()
    conn = db.connect(data_dir)
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(series)")}
        assert {"purged_at", "purged_version", "purged_instances", "purge_started_at"} <= columns
        s = db.get_series(conn, "1.2.3")
        assert s.state == "done" and s.purged_at is None and not s.purged
        db.connect(data_dir).close()  # a second connect adds nothing
    finally:
        conn.close()


# --- the late instance after a purge, through a real C-STORE -------------------------------------


def test_late_instance_after_purge_reopens_only_with_its_own_instances(tmp_path):
    from tests.support.ct_series import phantom_hu, write_ct_series
    from tests.support.dcmtk import have_dcmtk, storescu
    from tests.support.node_process import InProcessSCP

    if not have_dcmtk():
        pytest.skip("DCMTK not installed")
    files = write_ct_series(tmp_path / "series", phantom_hu(10, 16))
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    with InProcessSCP(tmp_path, sources=("SCANNER",), series_timeout=0.3) as scp:
        assert storescu(scp.port, files).responses == ["Success"] * 10
        first = scp.wait_for_state(uid, ("queued",))
        assert first.instances == 10 and first.version == 1
        assert db.claim_queued_series(scp.conn).series_instance_uid == uid  # the pipeline's run
        assert db.set_series_state(scp.conn, uid, "done", version=1)
        spooled = db.series_instance_paths(scp.conn, uid)

        report = retention.apply_retention(scp.conn, scp.data_dir, SETTINGS, now=later(8))
        assert report.series_purged == 1 and not any(p.exists() for p in spooled)

        # one image re-sent a week later: stored, the series re-opens as v2 with that image only
        run = storescu(scp.port, files[4:5])
        assert run.responses == ["Success"], run.output
        reopened = scp.wait_for_state(uid, ("skipped",))
        assert reopened.version == 2 and reopened.instances == 1
        assert reopened.reason.startswith("too few usable slices: 1 < 8")
        assert reopened.purged_version == 1 and not reopened.purged and reopened.purged_at is not None
        assert len(db.series_instance_paths(scp.conn, uid)) == 1

        from dicom_node.ops.status import collect_status, format_status

        status = collect_status(scp.conn)
        entry = next(s for s in status["series"] if s["series_instance_uid"] == uid)
        assert entry["purged_version"] == 1 and entry["version"] == 2 and entry["purged"] is False
        assert "re-opened after purge" in format_status(status)

        # the whole series re-sent: processed again, as a new version with every image
        assert storescu(scp.port, files).responses == ["Success"] * 10
        again = scp.wait_for_state(uid, ("queued",))
        assert again.version == 3 and again.instances == 10


def test_late_instance_after_purge_is_logged(data):
    data.receive("1.2.3")
    data.finish("1.2.3", "done")
    retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    out = io.StringIO()
    configure_logging("json", stream=out)
    try:
        path = data.spool.instance_path("1.2.9", "1.2.3", "1.2.3.99")
        data.spool.write(path, [b"late"])
        record = db.record_instance(
            data.conn,
            db.InstanceRecord("1.2.3.99", "1.2.3", "1.2.9", CT, "1.2.840.10008.1.2.1", path.relative_to(data.root).as_posix(), "d", 4, "CT_1"),
        )
        retention_worker.note_late_instance(record)
    finally:
        reset_logging()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["series_reopened_after_purge"]
    assert events[0]["series_uid"] == "1.2.3" and events[0]["version"] == 2 and events[0]["purged_version"] == 1


# --- the job inside the node ---------------------------------------------------------------------


class FakeLiveConfig:
    def __init__(self, config) -> None:
        self.current = config
        self.subscribers = []

    def subscribe(self, callback):
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def change(self, config) -> None:
        self.current = config
        for callback in list(self.subscribers):
            callback(config)


def node_config(data_dir: Path, **retention_keys):
    text = f'[node]\ndata_dir = "{data_dir}"\n[retention]\n' + "".join(f"{k} = {v}\n" for k, v in retention_keys.items())
    return config_from_text(text)


@pytest.fixture
def log_events():
    out = io.StringIO()
    configure_logging("json", stream=out)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    reset_logging()


def test_worker_runs_at_start_up_logs_counts_and_survives_a_failing_pass(data, monkeypatch, log_events):
    files = data.receive("1.2.3", count=2)
    data.finish("1.2.3", "done")
    data.conn.execute("UPDATE series SET updated_at = ?", (time.time() - 8 * DAY,))
    live = FakeLiveConfig(node_config(data.root, received_days=7, results_days=30, check_interval=60))
    worker = retention_worker.RetentionWorker(live, first_delay=0.0)
    worker.start()
    try:
        wait_until(lambda: worker.last_report is not None, timeout=20)
        assert worker.last_report is not None and worker.last_report.series_purged == 1
        assert not any(p.exists() for p in files)

        def broken(*args, **kwargs):
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(retention_worker, "apply_retention", broken)
        assert worker.run_once() is None  # logged, not raised
        monkeypatch.undo()
        assert worker.run_once() is not None  # the next pass goes on

        live.change(node_config(data.root, received_days=3, check_interval=120))  # hot reload
        job = worker._scheduler.get_job(retention_worker.RetentionWorker.JOB_ID)
        assert job.trigger.interval.total_seconds() == 120
    finally:
        worker.stop()
    events = log_events()
    passes = [e for e in events if e["event"] == "retention_pass"]
    assert passes and passes[0]["series_purged"] == 1 and passes[0]["spool_files"] == 2 and "bytes_freed" in passes[0]
    assert any(e["event"] == "retention_pass_failed" and e["error"] == "OperationalError" for e in events)
    assert any(e["event"] == "retention_rescheduled" and e["check_interval"] == 120 for e in events)
    purged = [e for e in events if e["event"] == "series_purged"]
    assert purged and set(purged[0]) <= {"event", "level", "logger", "timestamp", "series_uid", "study_uid", "version", "state", "instances", "bytes"}


def test_worker_reads_the_settings_at_each_pass(data):
    files = data.receive("1.2.3")
    data.finish("1.2.3", "done")
    data.conn.execute("UPDATE series SET updated_at = ?", (time.time() - 2 * DAY,))
    live = FakeLiveConfig(node_config(data.root, received_days=7))
    worker = retention_worker.RetentionWorker(live, first_delay=3600)
    worker.start()
    try:
        assert worker.run_once().series_purged == 0
        live.change(node_config(data.root, received_days=1))  # an edit of the file, hot-reloaded
        assert worker.run_once().series_purged == 1 and not any(p.exists() for p in files)
    finally:
        worker.stop()


def test_node_process_runs_a_pass_at_start_up(tmp_path):
    from tests.support.dcmtk import have_dcmtk
    from tests.support.node_process import NodeProcess

    if not have_dcmtk():
        pytest.skip("DCMTK not installed")
    node = NodeProcess({"sources": [{"ae_title": "SCANNER"}], "retention": {"received_days": 7}}, tmp_path)
    d = DataDir(node.data_dir)
    files = d.receive("1.2.3", count=3)
    d.finish("1.2.3", "done")
    d.conn.execute("UPDATE series SET updated_at = ?", (time.time() - 8 * DAY,))
    d.conn.close()
    node.start()
    try:
        wait_until(lambda: any(e["event"] == "retention_pass" for e in node.log_events()), timeout=30, step=0.2)
        status = node.status_json()
    finally:
        assert node.stop() == 0
    passes = [e for e in node.log_events() if e["event"] == "retention_pass"]
    assert passes and passes[0]["series_purged"] == 1 and passes[0]["spool_files"] == 3
    assert not any(p.exists() for p in files)
    assert status["retention"]["purged_series"] == 1 and status["retention"]["received_days"] == 7
    assert status["retention"]["last_pass"]["series_purged"] == 1


# --- config --------------------------------------------------------------------------------------


def test_defaults_and_shipped_config():
    assert RetentionSettings() == RetentionSettings(received_days=7, results_days=30, check_interval=3600)
    assert config_from_text('[node]\nae_title = "X"\n').retention == RetentionSettings()
    shipped = (REPO / "config" / "node.toml").read_text()
    assert config_from_text(shipped).retention == RetentionSettings()
    for key in ("received_days", "results_days", "check_interval"):
        assert f"\n{key} = " in shipped


GOOD = {"node": {"ae_title": "M2UNET"}, "retention": {"received_days": 7, "results_days": 30, "check_interval": 3600}}


@pytest.mark.parametrize(
    "key,value,reason",
    [
        ("received_days", -1, "must not be negative"),
        ("received_days", "7", "number of days"),
        ("received_days", True, "number of days"),
        ("results_days", float("nan"), "finite"),
        ("results_days", 100000, "at most 36500"),
        ("check_interval", 10, "at least 60"),
        ("check_interval", "hourly", "number of seconds"),
    ],
)
def test_bad_retention_values_name_key_and_value(key, value, reason):
    doc = copy.deepcopy(GOOD)
    doc["retention"][key] = value
    problems = validate_config(doc)
    assert [p.key for p in problems] == [f"retention.{key}"] and problems[0].value is value
    assert reason in problems[0].reason
    assert str(problems[0]).startswith(f"retention.{key} = ")


def test_good_retention_values_and_unknown_keys():
    for key, value in (("received_days", 0), ("received_days", 0.5), ("results_days", 0), ("check_interval", 60)):
        doc = copy.deepcopy(GOOD)
        doc["retention"][key] = value
        assert validate_config(doc) == []
    doc = copy.deepcopy(GOOD)
    doc["retention"]["recieved_days"] = 3
    problems = validate_config(doc)
    assert problems[0].key == "retention.recieved_days" and "did you mean 'received_days'" in problems[0].reason
    with pytest.raises(ConfigError):
        config_from_text("[retention]\nreceived_days = -3\n")


def test_retention_keys_apply_without_a_restart():
    from dicom_node.config.live import restart_keys_changed

    a = config_from_text("[retention]\nreceived_days = 7\n")
    b = config_from_text("[retention]\nreceived_days = 2\ncheck_interval = 600\n")
    assert restart_keys_changed(a, b) == []


# --- m2unet-node purge ---------------------------------------------------------------------------


def test_cli_purge_dry_run_then_for_real(tmp_path, capsys):
    from dicom_node.cli import main

    d = DataDir(tmp_path / "data")
    files = d.receive("1.2.3", count=2)
    d.finish("1.2.3", "done")
    d.receive("1.2.4", count=1)
    d.finish("1.2.4", "done")
    d.results("1.2.4", ["pacs"])  # pending: held
    d.conn.execute("UPDATE series SET updated_at = ?", (time.time() - 8 * DAY,))
    d.conn.close()
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{d.root}"\n[retention]\nreceived_days = 7\n')

    assert main(["--config", str(config), "purge", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] and dry["series_purged"] == 1 and dry["series"][0]["series_instance_uid"] == "1.2.3"
    assert dry["held"] == [{"series_instance_uid": "1.2.4", "version": 1, "waiting": {"pending": 3}}]
    assert all(p.exists() for p in files)

    assert main(["--config", str(config), "purge", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "would delete" in text and "1.2.3" in text and "held" in text

    try:
        assert main(["purge", "--config", str(config)]) == 0  # logs its deletions to standard error
    finally:
        reset_logging()  # that stream is pytest's capture: later tests must not log to it
    out = capsys.readouterr()
    assert "series_purged" in out.err and "retention_pass" in out.err
    assert "deleted: received instances of 1 series (2 files)" in out.out
    assert not any(p.exists() for p in files)
    assert main(["--config", str(tmp_path / "missing.toml"), "purge"]) == 2


def test_two_passes_at_once_purge_a_series_once(data):
    """The node's pass and `m2unet-node purge` selecting the same series: the second finds it done."""
    data.receive("1.2.3", count=3)
    data.finish("1.2.3", "done")
    due, _ = retention.due_series(data.conn, 7, later(8))
    first = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    assert first.series_purged == 1
    assert retention.purge_series(data.conn, data.root, due[0], later(8)) is None  # selected before, runs after
    assert data.series("1.2.3").purged_instances == 3


def test_a_file_that_cannot_be_deleted_keeps_its_row_and_is_tried_again(data, monkeypatch):
    files = data.receive("1.2.3", count=3)
    data.finish("1.2.3", "done")
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if Path(path) == files[1]:
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(8))
    monkeypatch.undo()
    assert report.errors == 1 and report.spool_files == 2 and files[1].exists() and data.rows("1.2.3") == 1
    report = retention.apply_retention(data.conn, data.root, SETTINGS, now=later(9))
    assert report.spool_files == 1 and data.rows("1.2.3") == 0
    s = data.series("1.2.3")
    assert s.purged and s.purged_instances == 3
