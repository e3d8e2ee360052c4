"""What a valid UID is (PS3.5 9.1), and how a bad one is named without its value."""

import pytest

from dicom_node.ingest.uid_syntax import loggable_uid, uid_problem


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "0", "1." + "2" * 62, "1.2.840.0123"])
def test_valid_uids(uid):
    assert uid_problem(uid) is None
    assert loggable_uid(uid) == uid


@pytest.mark.parametrize(
    "uid,problem",
    [
        ("", "empty"),
        ("1." + "2" * 63, "longer than 64 characters"),
        ("1.2.3/4", "characters other than 0-9 and '.'"),
        ("1.2.3.Doe^John", "characters other than 0-9 and '.'"),
        ("1.2. 3", "characters other than 0-9 and '.'"),
        ("1.2..3", "an empty component"),
        (".1.2", "an empty component"),
        ("1.2.", "an empty component"),
    ],
)
def test_invalid_uids_are_named_without_their_value(uid, problem):
    assert uid_problem(uid) == problem
    if uid:
        assert uid not in loggable_uid(uid) and problem in loggable_uid(uid)
