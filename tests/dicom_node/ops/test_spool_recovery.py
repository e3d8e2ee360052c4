"""Start-up recovery: spool files whose database rows were lost are recorded again; unreadable
files are quarantined."""

import pydicom

from dicom_node.state import db
from dicom_node.ops.recovery import reconcile_spool
from dicom_node.ingest.receive import Receiver
from dicom_node.ingest.spool import Spool
from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.node_process import receive_file


def test_lost_rows_are_rebuilt_from_the_spool(tmp_path):
    data_dir = tmp_path / "data"
    conn = db.connect(data_dir)
    spool = Spool(data_dir)
    receiver = Receiver(conn, spool, "1.2.3", "TEST")
    files = write_ct_series(tmp_path / "s", phantom_hu(6, 8))
    for f in files:
        receive_file(receiver, f, calling_ae="CT_7")
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    before = {r.sop_instance_uid: r for r in db.series_instances(conn, uid)}
    db.complete_series(conn, uid, 1, "queued")
    # a power cut lost the last commits: three rows are gone
    lost = sorted(before)[:3]
    conn.execute(f"DELETE FROM instances WHERE sop_instance_uid IN ({','.join('?' * 3)})", lost)
    junk = spool.root / ("0" * 32) / ("1" * 32)
    junk.mkdir(parents=True)
    (junk / "x.dcm").write_bytes(b"not dicom")

    assert reconcile_spool(conn, spool) == 3
    after = {r.sop_instance_uid: r for r in db.series_instances(conn, uid)}
    assert after == before  # same paths, digests, sizes, calling AE
    series = db.get_series(conn, uid)
    assert series.state == "receiving" and series.instances == 6 and series.version == 2
    assert (data_dir / "quarantine" / "x.dcm").exists() and not (junk / "x.dcm").exists()
    assert reconcile_spool(conn, spool) == 0
