"""Which errors are transient resource errors (wait and retry) and which are not (fail)."""

import errno
import os
import sqlite3

import pytest

from dicom_node.pipeline.resource_errors import transient_resource_error


@pytest.mark.parametrize(
    "code,what",
    [
        (errno.ENOSPC, "disk full (ENOSPC)"),
        (errno.EDQUOT, "disk quota exceeded (EDQUOT)"),
        (errno.EMFILE, "too many open files (EMFILE)"),
        (errno.ENOMEM, "out of memory (ENOMEM)"),
    ],
)
def test_resource_errnos(code, what):
    assert transient_resource_error(OSError(code, os.strerror(code))) == what


def test_wrapped_errors_are_found_through_their_cause():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("unreadable instance file") from inner
    except ValueError as outer:
        assert transient_resource_error(outer) == "disk full (ENOSPC)"


def test_database_full_and_memory():
    assert transient_resource_error(sqlite3.OperationalError("database or disk is full")) == "disk full (database)"
    assert transient_resource_error(MemoryError()) == "out of memory"


@pytest.mark.parametrize(
    "exc",
    [OSError(errno.EACCES, "Permission denied"), FileNotFoundError(2, "gone"), ValueError("bad"), RuntimeError("model")],
)
def test_other_errors_are_not_transient(exc):
    assert transient_resource_error(exc) is None
