"""One received instance: check it, spool it durably, record it; answer with a C-STORE status.

Network-free so it can be tested alone; :mod:`dicom_node.ingest.scp` calls :meth:`Receiver.receive` from
its C-STORE handler. The bytes are stored as they arrived (the peer's transfer syntax, nothing
decoded or re-encoded); pixel data is never decompressed here, only its length checked.

Statuses (PS3.4 B.2.3 and GG.4): success 0x0000; 0x0122 SOP class not supported (a non-CT
storage class while ``accept_other_storage`` is false); 0xA700 out of resources (disk full, write
or database error); 0xA900 data set does not match SOP class (UIDs missing, invalid or different
from the command's, pixel data missing or shorter than Rows x Columns x frames says); 0xC000
cannot understand (the bytes do not parse as a dataset); warning 0xB006 elements discarded (a
duplicate SOP Instance UID with other content, below).

UIDs: the Study, Series and SOP Instance UIDs (and the Frame of Reference UID when present) must
be valid UIDs (:mod:`dicom_node.ingest.uid_syntax`: 1-64 characters, digits and '.', no empty
component), since they are copied into every result object. An invalid one is refused with
0xA900 and an Error Comment naming the attribute and the problem ("SeriesInstanceUID: characters
other than 0-9 and '.'"), never the value.

A repeated SOP Instance UID: the same dataset bytes are a duplicate (success, nothing changes;
a missing spool file is written again). Other bytes (another content, or another series or study)
never replace the first copy: it is kept, the new one is discarded, ``duplicate_sop_instance_conflict``
is logged with the UIDs (no patient data) and the answer is warning 0xB006 "elements discarded"
with the Error Comment "duplicate SOP Instance UID, other content: first kept". A warning, not a
failure: the sender learns that its copy was not taken but does not retry it forever. Each SOP
Instance UID is checked, written and recorded under a lock, so two associations sending the same
UID at once cannot both win.
"""

from __future__ import annotations

import enum
import errno
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from io import BytesIO

import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

from dicom_node.state import db
from dicom_node.series.frames import CT_STORAGE_CLASSES
from dicom_node.ingest.spool import Spool, content_digest
from dicom_node.ingest.uid_syntax import uid_problem

log = structlog.get_logger()

ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO
CONFLICT_COMMENT = "duplicate SOP Instance UID, other content: first kept"
UID_LOCK_STRIPES = 64


class StoreStatus(enum.IntEnum):
    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    ELEMENTS_DISCARDED = 0xB006  # warning: here, a duplicate SOP Instance UID with other content


@dataclass(frozen=True)
class Received:
    status: StoreStatus
    why: str | None = None  # short word for the log on failure
    record: db.RecordResult | None = None  # set when stored (or found identical)
    comment: str | None = None  # the response's Error Comment (at most 64 characters, no patient data)


class InvalidInstance(ValueError):
    def __init__(self, status: StoreStatus, why: str, comment: str | None = None) -> None:
        super().__init__(why)
        self.status = status
        self.why = why
        self.comment = comment[:ERROR_COMMENT_MAX] if comment else None


def _parse(dataset: bytes, transfer_syntax: UID) -> Dataset:
    """Decode the element structure (values stay raw bytes until used; pixel data is not decoded)."""
    try:
        raw = bytes(dataset)
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            raw = zlib.decompress(raw, -zlib.MAX_WBITS)
        return read_dataset(
            BytesIO(raw),
            is_implicit_VR=transfer_syntax == ImplicitVRLittleEndian,
            is_little_endian=transfer_syntax.is_little_endian,
        )
    except Exception as exc:
        raise InvalidInstance(StoreStatus.CANNOT_UNDERSTAND, f"unparsable_dataset:{type(exc).__name__}") from exc


def _uid(ds: Dataset, keyword: str, required: bool = True) -> str:
    """The UID ``keyword`` of ``ds``, checked (``required``: missing is refused too)."""
    try:
        value = ds.get(keyword)
    except Exception as exc:
        raise InvalidInstance(StoreStatus.CANNOT_UNDERSTAND, f"unreadable_{keyword}") from exc
    value = str(value).strip() if value is not None else ""
    if not value:
        if not required:
            return value
        raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"missing_{keyword}", f"{keyword} missing")
    problem = uid_problem(value)
    if problem is not None:
        raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"invalid_{keyword}", f"{keyword}: {problem}")
    return value


def _check_pixel_data(ds: Dataset, transfer_syntax: UID) -> None:
    """Pixel data present and as long as the image attributes say (no decoding)."""
    try:
        if "PixelData" not in ds:
            raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "missing_PixelData")
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits, spp = int(ds.BitsAllocated), int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        value = ds.PixelData
    except InvalidInstance:
        raise
    except Exception as exc:
        raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "bad_image_attributes") from exc
    if min(rows, cols, bits, spp, frames) < 1:
        raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "bad_image_attributes")
    if transfer_syntax.is_encapsulated:
        try:
            fragments = sum(1 for _ in generate_fragments(value))
        except Exception as exc:
            raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "truncated_PixelData") from exc
        if fragments < 1:
            raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "empty_PixelData")
        return
    expected = (rows * cols * frames * spp * bits + 7) // 8
    if len(value) < expected:
        raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "truncated_PixelData")


def _preamble(file_meta: FileMetaDataset) -> bytes:
    from pydicom.filewriter import write_file_meta_info
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, file_meta, enforce_standard=True)
    return buf.getvalue()


class Receiver:
    """Checks, spools and records instances; safe to call from many association threads."""

    def __init__(self, conn: sqlite3.Connection, spool: Spool, implementation_class_uid: str, implementation_version: str) -> None:
        self.conn = conn
        self.spool = spool
        self.data_dir = conn.data_dir
        self.implementation_class_uid = implementation_class_uid
        self.implementation_version = implementation_version
        self._uid_locks = [threading.Lock() for _ in range(UID_LOCK_STRIPES)]

    def _lock_for(self, sop_instance_uid: str) -> threading.Lock:
        return self._uid_locks[hash(sop_instance_uid) % UID_LOCK_STRIPES]

    def receive(
        self,
        dataset: bytes,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        calling_ae: str,
        accept_other_storage: bool,
    ) -> Received:
        sop_class_uid = str(sop_class_uid or "").strip()
        sop_instance_uid = str(sop_instance_uid or "").strip()
        is_ct = sop_class_uid in CT_STORAGE_CLASSES
        if not is_ct and not accept_other_storage:
            return Received(StoreStatus.SOP_CLASS_NOT_SUPPORTED, "sop_class_not_accepted")
        ts = UID(transfer_syntax)
        try:
            ds = _parse(dataset, ts)
            study_uid = _uid(ds, "StudyInstanceUID")
            series_uid = _uid(ds, "SeriesInstanceUID")
            if _uid(ds, "SOPInstanceUID") != sop_instance_uid:
                raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID_differs_from_command")
            if _uid(ds, "SOPClassUID") != sop_class_uid:
                raise InvalidInstance(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID_differs_from_command")
            _uid(ds, "FrameOfReferenceUID", required=False)
            if is_ct:
                _check_pixel_data(ds, ts)
        except InvalidInstance as exc:
            return Received(exc.status, exc.why, comment=exc.comment)

        digest = content_digest(dataset)
        path = self.spool.instance_path(study_uid, series_uid, sop_instance_uid)
        rel = path.relative_to(self.data_dir).as_posix()
        try:
            with self._lock_for(sop_instance_uid):
                before = db.stored_instance(self.conn, sop_instance_uid)
                if before is not None and (before.digest, before.path) != (digest, rel):
                    log.warning(
                        "duplicate_sop_instance_conflict",
                        sop_instance_uid=sop_instance_uid,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        stored_series_uid=before.series_instance_uid,
                        calling_ae=calling_ae,
                        kept="first",
                    )
                    return Received(StoreStatus.ELEMENTS_DISCARDED, "duplicate_sop_instance_conflict", comment=CONFLICT_COMMENT)
                if before is None or not path.exists():
                    meta = FileMetaDataset()
                    meta.MediaStorageSOPClassUID = sop_class_uid
                    meta.MediaStorageSOPInstanceUID = sop_instance_uid
                    meta.TransferSyntaxUID = ts
                    meta.ImplementationClassUID = self.implementation_class_uid
                    meta.ImplementationVersionName = self.implementation_version
                    meta.SourceApplicationEntityTitle = calling_ae[:16]
                    self.spool.write(path, [_preamble(meta), dataset])
                record = db.record_instance(
                    self.conn,
                    db.InstanceRecord(
                        sop_instance_uid=sop_instance_uid,
                        series_instance_uid=series_uid,
                        study_instance_uid=study_uid,
                        sop_class_uid=sop_class_uid,
                        transfer_syntax_uid=str(ts),
                        path=rel,
                        digest=digest,
                        size=len(dataset),
                        calling_ae=calling_ae,
                    ),
                    now=time.time(),
                )
        except OSError as exc:
            why = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"write_error:{errno.errorcode.get(exc.errno or 0, 'unknown')}"
            return Received(StoreStatus.OUT_OF_RESOURCES, why)
        except sqlite3.Error as exc:
            return Received(StoreStatus.OUT_OF_RESOURCES, f"database_error:{type(exc).__name__}")
        return Received(StoreStatus.SUCCESS, None, record)
