"""Structured logs: JSON lines for services, console lines on a terminal, no patient identity ever."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from datetime import datetime

import pydicom
import pytest
import structlog

from dicom_node.ops.logs import REDACTED, configure_logging, is_identity_key, reset_logging, resolve_format


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    yield
    reset_logging()


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_iso_timestamp_level_and_fields():
    out = io.StringIO()
    assert configure_logging("json", stream=out) == "json"
    log = structlog.get_logger().bind(study_uid="1.2.3", calling_ae="CT_1")
    log.info("series_complete", series_uid="1.2.3.4", instances=312, seconds=1.25)
    [record] = json_lines(out)
    assert record["event"] == "series_complete"
    assert record["level"] == "info"
    assert record["study_uid"] == "1.2.3" and record["calling_ae"] == "CT_1"
    assert record["instances"] == 312 and record["seconds"] == 1.25
    assert datetime.fromisoformat(record["timestamp"]).tzinfo is not None
    assert list(record)[:3] == ["timestamp", "level", "event"]


def test_level_filters_and_stdlib_logs_share_the_format():
    out = io.StringIO()
    configure_logging("json", level="warning", stream=out)
    structlog.get_logger().info("not_shown")
    structlog.get_logger().warning("shown")
    logging.getLogger("some.library").error("library says %s", "hello")
    assert [(r["event"], r["level"]) for r in json_lines(out)] == [("shown", "warning"), ("library says hello", "error")]


def test_exceptions_are_one_json_line():
    out = io.StringIO()
    configure_logging("json", stream=out)
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        structlog.get_logger().exception("job_failed", series_uid="1.2")
    [record] = json_lines(out)
    assert "RuntimeError: broken" in record["exception"]


def test_console_format_is_readable_text():
    out = io.StringIO()
    configure_logging("console", stream=out)
    structlog.get_logger().info("association_accepted", calling_ae="CT_1")
    line = out.getvalue()
    assert "association_accepted" in line and "calling_ae=CT_1" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_auto_is_console_on_a_terminal_and_json_otherwise(monkeypatch):
    assert resolve_format("auto", Terminal()) == "console"
    assert resolve_format("auto", io.StringIO()) == "json"
    monkeypatch.setenv("INVOCATION_ID", "0123abcd")  # set by systemd for a service
    assert resolve_format("auto", Terminal()) == "json"
    with pytest.raises(ValueError, match="log_format"):
        resolve_format("xml", io.StringIO())


@pytest.mark.parametrize(
    "key",
    ["patient_name", "PatientName", "patient_id", "PatientID", "birth_date", "PatientBirthDate", "patients_name", "OtherPatientIDs"],
)
def test_identity_keys_are_recognised(key):
    assert is_identity_key(key)


@pytest.mark.parametrize("key", ["study_uid", "series_uid", "calling_ae", "instances", "name", "patient_count"])
def test_other_keys_are_not(key):
    assert not is_identity_key(key)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_patient_identity_is_never_emitted(fmt):
    out = io.StringIO()
    configure_logging(fmt, stream=out)
    ds = pydicom.Dataset()
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "MRN-0042"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1"
    log = structlog.get_logger()
    log.info("stored", patient_name="DOE^JANE", PatientID="MRN-0042", birth_date="19700101", series_uid="1.2.3")
    log.info("nested", detail={"PatientBirthDate": "19700101", "ok": 1}, items=[{"patient_id": "MRN-0042"}])
    log.info("dataset", dataset=ds)
    log.info("careless", who=ds.PatientName)  # a person name under an innocent key
    text = out.getvalue()
    for secret in ("DOE^JANE", "MRN-0042", "19700101"):
        assert secret not in text
    assert text.count(REDACTED) == 6
    assert "1.2.826.0.1.3680043.2.1" in text and "1.2.3" in text  # UIDs stay


def test_reconfiguring_replaces_the_handler():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", stream=first)
    configure_logging("json", stream=second)
    structlog.get_logger().info("once")
    assert first.getvalue() == ""
    assert [r["event"] for r in json_lines(second)] == ["once"]


def test_level_from_the_environment(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("M2UNET_LOG_LEVEL", "debug")
    configure_logging("json", stream=out)
    structlog.get_logger().debug("detail", series_uid="1.2")
    assert [r["event"] for r in json_lines(out)] == ["detail"]
    monkeypatch.setenv("M2UNET_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", stream=out)


def test_library_chatter_is_quiet_but_library_warnings_show():
    out = io.StringIO()
    configure_logging("json", stream=out)
    logging.getLogger("highdicom.base").info("copy attributes of module \"Patient\"")
    logging.getLogger("pynetdicom.assoc").info("Association Accepted")
    logging.getLogger("highdicom.seg").warning("odd segment")
    assert [r["event"] for r in json_lines(out)] == ["odd segment"]


def test_a_pydicom_invalid_value_warning_is_one_json_line_without_the_value():
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("json", stream=out)
        ds = pydicom.Dataset()
        ds.PatientBirthDate = "1961-02-03"  # not a DA: pydicom warns, quoting the value
    text = out.getvalue()
    records = json_lines(out)  # every line is JSON: no raw "UserWarning:" line between them
    [warning] = [r for r in records if r["event"] == "python_warning"]
    assert warning["level"] == "warning" and warning["category"] == "UserWarning"
    assert warning["message"].startswith("Invalid value for VR DA: '[redacted]'.")
    assert re.fullmatch(r"[\w.]+\.py:\d+", warning["where"]), warning["where"]  # file:line, no folder
    assert "1961-02-03" not in text and "19610203" not in text


@pytest.mark.parametrize(
    "message,secret",
    [
        ("Invalid value for VR PN: \"O'Brien^Mary\".", "Brien"),  # repr in double quotes (it holds a ')
        ("Invalid value for VR DA: b'1961-02-03'.", "1961"),  # a bytes value
        ("Invalid value for VR LO: 'it\\'s \"Mary\"'.", "Mary"),  # both quotes, escaped
        ("Unable to convert non-conformant value '19610203X' to 'DA' object", "19610203"),
        ("Non-conformant 'Patient ID' value 'MRN-0042'", "MRN-0042"),
    ],
)
def test_quoted_values_of_library_warnings_are_stripped(message, secret):
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("json", stream=out)
        warnings.warn(message, UserWarning)
    [record] = json_lines(out)
    assert record["event"] == "python_warning" and "[redacted]" in record["message"]
    assert secret not in out.getvalue()


def test_other_warnings_keep_their_message_and_category():
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("json", stream=out)
        warnings.warn("weights trained on synthetic phantoms only", RuntimeWarning)
    [record] = json_lines(out)
    assert (record["event"], record["category"], record["message"]) == (
        "python_warning",
        "RuntimeWarning",
        "weights trained on synthetic phantoms only",
    )
