"""Smaller break: UIDs with ``/`` were accepted and copied into the delivered SEG (an invalid UI).

Now a Study, Series, SOP Instance or Frame of Reference UID that is not a valid UID (characters
other than 0-9 and '.', longer than 64, an empty component) is refused at C-STORE with 0xA900 and
an Error Comment naming the attribute, never the value; nothing is stored, the node goes on.
"""

from __future__ import annotations

import warnings

import pydicom
import pytest
from structlog.testing import capture_logs

from dicom_node.state import db
from tests.dicom_node.adversarial.conftest import c_store, edited_series
from tests.support.node_process import InProcessSCP, echo

HOSTILE = "1.2.826.0.1.3680043.8.498.7/Doe^John"  # a careless site's UID: a path and a name


@pytest.fixture
def scp(tmp_path):
    with InProcessSCP(tmp_path, sources=("SCANNER",), series_timeout=30) as running:
        yield running


def _with(ds, keyword: str, value: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UI value we set on purpose
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
    return ds


@pytest.mark.parametrize(
    "keyword,value,problem",
    [
        ("SOPInstanceUID", HOSTILE, "characters other than 0-9 and '.'"),
        ("SeriesInstanceUID", HOSTILE, "characters other than 0-9 and '.'"),
        ("StudyInstanceUID", "1.2.840.abc.5", "characters other than 0-9 and '.'"),
        ("SeriesInstanceUID", "1.2." + "3" * 62, "longer than 64 characters"),
        ("StudyInstanceUID", "1.2..3", "an empty component"),
        ("SeriesInstanceUID", "1.2.3.", "an empty component"),
        ("FrameOfReferenceUID", HOSTILE, "characters other than 0-9 and '.'"),
    ],
)
def test_invalid_uid_is_refused_naming_the_attribute_and_the_node_goes_on(scp, tmp_path, keyword, value, problem):
    files = edited_series(tmp_path / "series", n=3, size=16)
    bad = _with(pydicom.dcmread(files[0]), keyword, value)
    good = pydicom.dcmread(files[1])
    with capture_logs() as logs:
        bad_rsp, good_rsp = c_store(scp.port, [bad, good])
    assert bad_rsp.Status == 0xA900, bad_rsp
    assert bad_rsp.ErrorComment == f"{keyword}: {problem}"
    assert good_rsp.Status == 0x0000
    assert echo(scp.port, calling_ae="SCANNER")
    assert db.stored_instance(scp.conn, str(bad.SOPInstanceUID)) is None
    assert db.get_series(scp.conn, str(good.SeriesInstanceUID)).instances == 1
    refused = [e for e in logs if e["event"] == "store_refused"]
    assert [e["reason"] for e in refused] == [f"invalid_{keyword}"]
    for text in (repr(logs), bad_rsp.ErrorComment):
        assert "Doe^John" not in text and value not in text
