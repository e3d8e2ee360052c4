"""The SCP with DCMTK's storescu/echoscu as scanners: storing, refusing, failing, never dying."""

import random
import threading

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from dicom_node.state import db
from dicom_node.series.reconstruct import reconstruct_series
from dicom_node.ingest.spool import uid_key
from tests.support.ct_series import phantom_hu, write_ct_series, write_enhanced_ct
from tests.support.dcmtk import PROPOSE, compress, echoscu, have_dcmtk, storescu
from tests.support.node_process import InProcessSCP
from tests.support.paths import REAL_CT

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK not installed")


@pytest.fixture
def scp(tmp_path):
    with InProcessSCP(tmp_path, sources=("SCANNER", "SCANNER2", "SCANNER3", "SCANNER4"), series_timeout=0.5) as s:
        yield s


@pytest.fixture
def series(tmp_path):
    hu = phantom_hu(10, 24)
    return hu, write_ct_series(tmp_path / "series", hu)


def series_uid(path):
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def send_raw(port, path, calling_ae="SCANNER"):
    """C-STORE a file's bytes as they are (pynetdicom streams it without decoding)."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="M2UNET")
        assert assoc.is_established
        rsp = assoc.send_c_store(path)
        assoc.release()
        return int(rsp.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def test_happy_path_shuffled_arrival_stored_as_sent_and_queued(scp, series):
    hu, files = series
    shuffled = files[:]
    random.Random(1).shuffle(shuffled)
    run = storescu(scp.port, shuffled)
    assert run.returncode == 0 and run.responses == ["Success"] * 10, run.output
    uid = series_uid(files[0])
    record = scp.wait_for_state(uid, ("queued",))
    assert record.instances == 10 and record.calling_ae == "SCANNER" and record.version == 1
    paths = db.series_instance_paths(scp.conn, uid)
    assert len(paths) == 10 and all(p.is_relative_to(scp.data_dir / "spool") for p in paths)
    for original in files:
        sent = pydicom.dcmread(original)
        stored = pydicom.dcmread(scp.spool.instance_path(sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID))
        assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert stored.PixelData == sent.PixelData and stored.SOPInstanceUID == sent.SOPInstanceUID
    assert np.array_equal(reconstruct_series(paths).volume.hu, hu)


def test_duplicates_same_content_change_nothing_different_content_keeps_the_first(scp, series, tmp_path):
    _, files = series
    uid = series_uid(files[0])
    assert storescu(scp.port, files).successes == 10
    first = scp.wait_for_state(uid, ("queued",))
    again = storescu(scp.port, files[:4])
    assert again.responses == ["Success"] * 4
    assert db.get_series(scp.conn, uid) == first  # same content: nothing changed, not re-opened

    original = pydicom.dcmread(files[3])
    changed = pydicom.dcmread(files[3])
    arr = changed.pixel_array.copy()
    arr[0, 0] += 7
    changed.PixelData = arr.tobytes()
    changed.save_as(tmp_path / "changed.dcm")
    responses = storescu(scp.port, [tmp_path / "changed.dcm"]).responses
    assert len(responses) == 1 and responses[0].startswith("Warning"), responses
    assert db.get_series(scp.conn, uid) == first  # not re-opened
    stored = pydicom.dcmread(scp.spool.instance_path(changed.StudyInstanceUID, uid, changed.SOPInstanceUID))
    assert stored.pixel_array[0, 0] == original.pixel_array[0, 0]  # the first copy is kept


def test_unknown_calling_ae_and_wrong_called_ae_are_refused(scp, series):
    _, files = series
    stranger = storescu(scp.port, files[:1], calling_ae="STRANGER")
    assert stranger.association_rejected and "Calling AE Title Not Recognized" in stranger.output
    wrong = echoscu(scp.port, called_ae="NOT_ME")
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stderr + wrong.stdout
    assert echoscu(scp.port).returncode == 0
    assert db.list_series(scp.conn) == []


def test_bad_objects_get_failure_statuses_and_the_node_goes_on(scp, series, tmp_path):
    _, files = series
    sc = pydicom.dcmread(files[0])
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    sc.save_as(tmp_path / "sc.dcm")
    no_pixels = pydicom.dcmread(files[1])
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopixels.dcm")
    run = storescu(scp.port, [tmp_path / "sc.dcm", tmp_path / "nopixels.dcm", files[2]])
    assert run.responses[0] == "Refused: SOPClassNotSupported"
    assert run.responses[1].startswith("Error: DataSetDoesNotMatchSOPClass"), run.responses
    assert run.responses[2] == "Success"

    raw = files[3].read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(raw[: len(raw) - 300])
    assert send_raw(scp.port, tmp_path / "truncated.dcm") == 0xA900
    meta_end = 132 + 12 + pydicom.dcmread(files[3]).file_meta.FileMetaInformationGroupLength
    (tmp_path / "garbage.dcm").write_bytes(raw[:meta_end] + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\x01\x02\x03")
    assert 0xC000 <= send_raw(scp.port, tmp_path / "garbage.dcm") <= 0xCFFF
    assert echoscu(scp.port).returncode == 0
    assert db.get_series(scp.conn, series_uid(files[0])).instances == 1


def test_accept_other_storage_stores_and_ignores(tmp_path, series):
    _, files = series
    sc = pydicom.dcmread(files[0])
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    sc.SeriesInstanceUID = pydicom.uid.generate_uid()
    sc.save_as(tmp_path / "sc.dcm")
    with InProcessSCP(tmp_path, series_timeout=0.3, accept_other_storage=True) as scp:
        assert storescu(scp.port, [tmp_path / "sc.dcm"]).responses == ["Success"]
        record = scp.wait_for_state(str(sc.SeriesInstanceUID), ("skipped",))
        assert "not_ct_image 1" in record.reason


def test_write_error_answers_out_of_resources(scp, series):
    _, files = series
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    blocker = scp.data_dir / "spool" / uid_key(str(ds.StudyInstanceUID))
    blocker.write_bytes(b"not a folder")  # every write into this study fails
    run = storescu(scp.port, files[:2])
    assert len(run.responses) == 2 and all("OutOfResources" in r or "A7" in r for r in run.responses), run.output
    blocker.unlink()
    assert storescu(scp.port, files[:2]).responses == ["Success"] * 2


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hostile_uid_cannot_escape_data_dir(scp, tmp_path, series):
    _, files = series
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = "../../../../escaped"
    ds.save_as(tmp_path / "hostile.dcm")
    assert send_raw(scp.port, tmp_path / "hostile.dcm") == 0xA900  # not a UID: refused (receive)
    assert db.series_instance_paths(scp.conn, "../../../../escaped") == []
    assert not any(tmp_path.parent.glob("escaped*"))
    # and were one stored, its path is hashed: see test_spool's uid_key tests
    assert "/" not in uid_key("../../../../escaped")


def test_compressed_instances_are_kept_as_they_arrived(scp, series, tmp_path):
    _, files = series
    packed = compress(files[:3], tmp_path / "jls", "jpeg-ls")
    assert storescu(scp.port, packed, extra=[PROPOSE["jpeg-ls"]]).responses == ["Success"] * 3
    for p in packed:
        sent = pydicom.dcmread(p)
        stored = pydicom.dcmread(scp.spool.instance_path(sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID))
        assert stored.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
        assert stored.PixelData == sent.PixelData


def test_four_concurrent_senders_lose_nothing(scp, tmp_path):
    sets = [write_ct_series(tmp_path / f"s{i}", phantom_hu(10, 16, seed=i)) for i in range(4)]
    runs = [None] * 4

    def send(i):
        runs[i] = storescu(scp.port, sets[i], calling_ae=["SCANNER", "SCANNER2", "SCANNER3", "SCANNER4"][i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.responses == ["Success"] * 10 for r in runs)
    for files in sets:
        record = scp.wait_for_state(series_uid(files[0]), ("queued",))
        assert record.instances == 10
    assert sum(1 for _ in (scp.data_dir / "spool").rglob("*.dcm")) == 40


@pytest.mark.skipif(not REAL_CT.is_dir(), reason="real CT series not present")
def test_real_scanner_series_is_received_and_reconstructs(scp):
    files = sorted(REAL_CT.glob("*.dcm"))
    run = storescu(scp.port, files)
    assert run.responses == ["Success"] * 64, run.output[-2000:]
    uid = series_uid(files[0])
    assert scp.wait_for_state(uid, ("queued",)).instances == 64
    rec = reconstruct_series(db.series_instance_paths(scp.conn, uid))
    assert rec.volume.shape == (64, 512, 512)
    assert rec.volume.spacing == pytest.approx((0.841796875, 0.841796875, 5.0))


def test_deflated_transfer_is_stored_deflated_and_reads_back(scp, series):
    hu, files = series
    run = storescu(scp.port, files, extra=["-xd"])
    assert run.responses == ["Success"] * 10, run.output[-1500:]
    uid = series_uid(files[0])
    paths = db.series_instance_paths(scp.conn, uid)
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in paths} == {
        pydicom.uid.DeflatedExplicitVRLittleEndian
    }
    assert np.array_equal(reconstruct_series(paths).volume.hu, hu)


def test_enhanced_ct_multiframe_is_received_and_reconstructs(scp, tmp_path):
    hu = phantom_hu(10, 16)
    path = write_enhanced_ct(tmp_path / "enhanced.dcm", hu, frame_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert storescu(scp.port, [path]).responses == ["Success"]
    uid = series_uid(path)
    assert scp.wait_for_state(uid, ("queued",)).instances == 1
    rec = reconstruct_series(db.series_instance_paths(scp.conn, uid))
    assert np.array_equal(rec.volume.hu, hu) and rec.instances[0].frame_number == 10


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_compressed_dataset_gets_a_failure_status(tmp_path):
    """Receiver level (DCMTK will not send a file it cannot read, and pynetdicom only streams
    uncompressed files raw): a JPEG-LS dataset cut short is refused, nothing stored."""
    from pydicom.filereader import read_file_meta_info

    from dicom_node.ingest.receive import Receiver
    from dicom_node.ingest.spool import Spool

    [original] = write_ct_series(tmp_path / "o", phantom_hu(1, 64))
    [packed] = compress([original], tmp_path / "jls", "jpeg-ls")
    meta = read_file_meta_info(packed)
    body = packed.read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength:]
    conn = db.connect(tmp_path / "data")
    receiver = Receiver(conn, Spool(tmp_path / "data"), "1.2.3", "TEST")
    for cut in (10, 1000):
        result = receiver.receive(
            body[:-cut], meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID, "SCANNER", False
        )
        assert 0xA900 <= result.status <= 0xCFFF, result
    assert db.list_series(conn) == [] and not list((tmp_path / "data" / "spool").rglob("*.dcm"))
    ok = receiver.receive(body, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID, "SCANNER", False)
    assert ok.status == 0
    conn.close()
