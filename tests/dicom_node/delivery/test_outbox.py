"""The durable outbox: enqueue once, backoff schedule, states, summary for ``status``."""

from __future__ import annotations

import pytest

from dicom_node.state import db

from dicom_node.delivery import outbox
from dicom_node.results.records import record_result, result_folder
from tests.support.results_data import outbox_objects, small_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return small_case(tmp_path_factory.mktemp("case"))


@pytest.fixture
def conn(tmp_path):
    connection = db.connect(tmp_path / "data")
    yield connection
    connection.close()


def test_backoff_doubles_from_initial_and_is_capped():
    assert [outbox.backoff_delay(n, 5.0, 300.0) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert outbox.backoff_delay(1000, 5.0, 300.0) == 300.0
    assert outbox.backoff_delay(0, 5.0, 300.0) == 0.0


def test_enqueue_is_idempotent_per_destination(case, conn, tmp_path):
    objects = outbox_objects(case, tmp_path / "results")
    assert outbox.enqueue(conn, objects, ["pacs", "archive"], now=100.0) == 6
    assert outbox.enqueue(conn, objects, ["pacs", "archive"], now=200.0) == 0  # a re-run adds nothing
    due = outbox.due_items(conn, "pacs", now=100.0)
    assert [i.sop_instance_uid for i in due] == [o.sop_instance_uid for o in objects]
    for item, obj in zip(due, objects):  # the sender reads its own copy under data_dir/outbox
        assert item.path.parent == tmp_path / "data" / "outbox"
        assert item.path.read_bytes() == obj.path.read_bytes()
    assert outbox.enqueue(conn, objects, []) == 0


def test_delivered_is_never_due_again_even_when_enqueued_again(case, conn, tmp_path):
    objects = outbox_objects(case, tmp_path / "results")
    outbox.enqueue(conn, objects, ["pacs"], now=0.0)
    for item in outbox.due_items(conn, "pacs", now=0.0):
        outbox.mark_delivered(conn, item.id)
    outbox.enqueue(conn, objects, ["pacs"], now=0.0)
    assert outbox.due_items(conn, "pacs", now=1e12) == []
    summary = outbox.delivery_summary(conn)
    assert (summary["pending"], summary["delivered"], summary["failed"]) == (0, 3, 0)
    assert not list((tmp_path / "data" / "outbox").glob("*.dcm"))  # copies removed once delivered


def test_retry_schedule_and_failure_are_recorded(case, conn, tmp_path):
    objects = outbox_objects(case, tmp_path / "results")
    outbox.enqueue(conn, objects[:2], ["pacs"], now=0.0)
    first, second = outbox.due_items(conn, "pacs", now=0.0)
    assert outbox.mark_retry(conn, first.id, "association rejected", 2.0, 5.0, now=10.0) == 2.0
    assert [i.id for i in outbox.due_items(conn, "pacs", now=11.9)] == [second.id]
    assert outbox.mark_retry(conn, first.id, "association rejected", 2.0, 5.0, now=12.0) == 4.0
    assert outbox.mark_retry(conn, first.id, "association rejected", 2.0, 5.0, now=16.0) == 5.0  # capped
    assert outbox.next_due(conn, ["pacs"]) == pytest.approx(0.0)
    outbox.mark_failed(conn, second.id, "status 0xA900: data set does not match SOP class")
    summary = outbox.delivery_summary(conn)
    assert (summary["pending"], summary["failed"]) == (1, 1)
    items = {i["sop_instance_uid"]: i for i in summary["items"]}
    assert items[first.sop_instance_uid]["attempts"] == 3
    assert items[first.sop_instance_uid]["last_error"] == "association rejected"
    assert items[second.sop_instance_uid]["state"] == "failed"
    assert "0xA900" in items[second.sop_instance_uid]["last_error"]


def test_outbox_survives_a_new_connection(case, tmp_path):
    conn = db.connect(tmp_path / "data")
    outbox.enqueue(conn, outbox_objects(case, tmp_path / "results"), ["pacs"], now=0.0)
    conn.close()
    again = db.connect(tmp_path / "data")
    try:
        assert len(outbox.due_items(again, "pacs", now=1.0)) == 3
    finally:
        again.close()


def test_summary_says_where_results_stay_without_destination(case, conn, tmp_path):
    data_dir = tmp_path / "data"
    folder = result_folder(data_dir, case.source.study_instance_uid, case.source.series_instance_uid, 1)
    outbox_objects(case, folder)
    record_result(
        conn,
        series_instance_uid=case.source.series_instance_uid,
        version=1,
        study_instance_uid=case.source.study_instance_uid,
        folder=folder,
        seg_sop_instance_uid=case.result_set.seg.SOPInstanceUID,
        sr_sop_instance_uid=case.result_set.sr.SOPInstanceUID,
        summary_sop_instance_uid=None,
        destinations=0,
        severity="severe",
        probability_severe=0.9,
    )
    summary = outbox.delivery_summary(conn)
    assert summary["results_dir"] == str(data_dir / "results")
    assert summary["kept"] == [
        {
            "study_instance_uid": case.source.study_instance_uid,
            "series_instance_uid": case.source.series_instance_uid,
            "version": 1,
            "folder": str(folder),
        }
    ]
    assert (folder / "seg.dcm").exists() and folder.is_relative_to(data_dir / "results")
