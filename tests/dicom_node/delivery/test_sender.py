"""The sender against real peers: Orthanc as the PACS (down, then back), and pynetdicom SCPs that
refuse with a real DIMSE status over a real association."""

from __future__ import annotations

import time

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from dicom_node.state import db

from dicom_node.delivery import outbox
from dicom_node.delivery.sender import Sender, classify_status
from tests.support.orthanc import OrthancServer, free_port, orthanc_available
from tests.support.results_data import StaticConfig, destination, node_config, outbox_objects, small_case
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return small_case(tmp_path_factory.mktemp("case"))


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"



def test_status_classes():
    assert classify_status(0x0000) == "delivered"
    assert classify_status(0xB000) == "delivered"
    assert classify_status(0xA900) == "failed"
    assert classify_status(0xA9FF) == "failed"
    assert classify_status(0xC123) == "failed"
    assert classify_status(0x0122) == "failed"
    assert classify_status(0xA700) == "retry"
    assert classify_status(0xA7FF) == "retry"
    assert classify_status(0x0110) == "retry"


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")
def test_delivers_once_to_orthanc_in_source_study(case, data_dir, tmp_path):
    with OrthancServer(tmp_path / "orthanc") as pacs:
        config = node_config(data_dir, [destination("pacs", pacs.dicom_port)])
        conn = db.connect(data_dir)
        objects = outbox_objects(case, tmp_path / "results")
        outbox.enqueue(conn, objects, ["pacs"])
        sender = Sender(StaticConfig(config))
        sender._conn = conn
        assert sender.deliver_due() == 3
        stored = pacs.instances_by_sop_uid()
        assert set(stored) == {o.sop_instance_uid for o in objects}
        for tags in stored.values():
            assert tags["StudyInstanceUID"] == case.source.study_instance_uid
        received = pacs.statistics()["CountInstances"]
        # nothing is sent again: not by another pass, not after the job enqueues the same objects
        outbox.enqueue(conn, objects, ["pacs"])
        assert sender.deliver_due(now=time.time() + 1e6) == 0
        assert pacs.statistics()["CountInstances"] == received == 3
        assert outbox.delivery_summary(conn)["delivered"] == 3
        conn.close()


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")
def test_pacs_down_then_back_gets_everything_once(case, data_dir, tmp_path):
    pacs = OrthancServer(tmp_path / "orthanc")  # not started: the PACS is down
    config = node_config(data_dir, [destination("pacs", pacs.dicom_port)], retry_initial=0.2, retry_max=0.8)
    conn = db.connect(data_dir)
    objects = outbox_objects(case, tmp_path / "results")
    outbox.enqueue(conn, objects, ["pacs"])
    conn.close()
    sender = Sender(StaticConfig(config))
    sender.start()
    try:
        check = db.connect(data_dir)
        summary = wait_until(lambda: (s := outbox.delivery_summary(check)) and min(i["attempts"] for i in s["items"]) >= 2 and s)
        assert summary["pending"] == 3 and summary["delivered"] == 0
        assert all(i["last_error"] for i in summary["items"])
        sender.stop()  # a restart while the PACS is down: the schedule is in the database
        sender = Sender(StaticConfig(config))
        sender.start()
        pacs.start()
        assert wait_until(lambda: outbox.delivery_summary(check)["delivered"] == 3)
        assert set(pacs.instances_by_sop_uid()) == {o.sop_instance_uid for o in objects}
        assert pacs.statistics()["CountInstances"] == 3
        check.close()
    finally:
        sender.stop()
        pacs.stop()


def _refusing_scp(status: int, accept_all: bool = True):
    ae = AE(ae_title="REFUSER")
    if accept_all:
        for cx in (
            "1.2.840.10008.5.1.4.1.1.66.4",  # SEG
            "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
            "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        ):
            ae.add_supported_context(cx)
    else:
        ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: status)])
    return server, port


@pytest.mark.parametrize(
    ("status", "state", "attempts"),
    [(0xA900, "failed", 1), (0xC000, "failed", 1), (0xA700, "pending", 1)],
)
def test_refusals_permanent_or_transient(case, data_dir, tmp_path, status, state, attempts):
    server, port = _refusing_scp(status)
    try:
        config = node_config(data_dir, [destination("refuser", port, "REFUSER")], retry_initial=60, retry_max=60)
        conn = db.connect(data_dir)
        objects = outbox_objects(case, tmp_path / "results")
        outbox.enqueue(conn, objects[:1], ["refuser"])
        sender = Sender(StaticConfig(config))
        sender._conn = conn
        assert sender.deliver_due() == 0
        (item,) = outbox.delivery_summary(conn)["items"]
        assert item["state"] == state
        assert item["attempts"] == attempts
        assert f"0x{status:04X}" in item["last_error"]
        assert sender.deliver_due() == 0 and outbox.delivery_summary(conn)["items"][0]["attempts"] == attempts
        conn.close()
    finally:
        server.shutdown()


def test_sop_class_not_accepted_is_permanent(case, data_dir, tmp_path):
    server, port = _refusing_scp(0x0000, accept_all=False)
    try:
        config = node_config(data_dir, [destination("ct-only", port, "REFUSER")])
        conn = db.connect(data_dir)
        outbox.enqueue(conn, outbox_objects(case, tmp_path / "results")[:1], ["ct-only"])
        sender = Sender(StaticConfig(config))
        sender._conn = conn
        sender.deliver_due()
        (item,) = outbox.delivery_summary(conn)["items"]
        assert item["state"] == "failed"
        assert "not accepted" in item["last_error"]
        conn.close()
    finally:
        server.shutdown()


def test_items_of_unconfigured_destination_become_orphaned(case, data_dir, tmp_path):
    conn = db.connect(data_dir)
    outbox.enqueue(conn, outbox_objects(case, tmp_path / "results"), ["gone"])
    sender = Sender(StaticConfig(node_config(data_dir, [])))
    sender._conn = conn
    assert sender.deliver_due() == 0
    summary = outbox.delivery_summary(conn)
    assert (summary["pending"], summary["orphaned"]) == (0, 3)
    assert all("'gone' removed from the configuration" in i["last_error"] for i in summary["items"])
    conn.close()
