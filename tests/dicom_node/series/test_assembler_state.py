"""The database contract the pipeline relies on: claim, set state (version guard), requeue."""

import threading

from dicom_node.state import db


def record(conn, sop, series="1.2.9", calling_ae="CT"):
    return db.record_instance(
        conn,
        db.InstanceRecord(sop, series, "1.2", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", f"spool/{sop}", f"d{sop}", 10, calling_ae),
    )


def test_claim_is_atomic_oldest_first_and_requeue_running(tmp_path):
    conn = db.connect(tmp_path)
    for i, series in enumerate(("1.2.1", "1.2.2", "1.2.3")):
        record(conn, f"1.2.{i}.1", series)
        assert db.complete_series(conn, series, 1, "queued")
    claimed, lock = [], threading.Lock()

    def worker():
        c = db.connect(tmp_path)
        while (s := db.claim_queued_series(c)) is not None:
            with lock:
                claimed.append(s.series_instance_uid)
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ["1.2.1", "1.2.2", "1.2.3"]  # each exactly once
    assert db.state_counts(conn)["running"] == 3
    assert db.requeue_running(conn) == 3
    assert db.claim_queued_series(conn).series_instance_uid == "1.2.1"


def test_set_state_with_version_and_reason(tmp_path):
    conn = db.connect(tmp_path)
    record(conn, "1.2.9.1")
    db.complete_series(conn, "1.2.9", 1, "queued")
    s = db.claim_queued_series(conn)
    assert db.set_series_state(conn, "1.2.9", "failed", "model error", version=2) is False
    assert db.set_series_state(conn, "1.2.9", "failed", "model error", version=s.version) is True
    got = db.get_series(conn, "1.2.9")
    assert (got.state, got.reason) == ("failed", "model error")
    record(conn, "1.2.9.2")  # a late instance re-opens a finished series
    got = db.get_series(conn, "1.2.9")
    assert (got.state, got.reason, got.version, got.instances) == ("receiving", None, 2, 2)
    assert [p.name for p in db.series_instance_paths(conn, "1.2.9")] == ["1.2.9.1", "1.2.9.2"]
    assert db.series_instance_paths(conn, "1.2.9")[0].parent.parent == tmp_path
