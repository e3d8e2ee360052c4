"""The syntax of a DICOM UID (PS3.5 9.1): what ingest refuses before a UID is stored or copied.

A UID is one to 64 characters, digits and '.' only, as components separated by single dots (no
leading, trailing or doubled dot). Components with a leading zero ("1.02") break the rule too but
are common in real scanners' UIDs and harm nothing downstream, so they are let through.

:func:`uid_problem` names what is wrong without repeating the value: a malformed UID may hold
anything a careless site put in it, patient data included.
"""

from __future__ import annotations

import re

UID_MAX_LENGTH = 64
_ALLOWED = re.compile(r"[0-9.]*")


def uid_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a UID, in words without the value ("longer than 64
    characters"), or None when it is a valid UID."""
    if not value:
        return "empty"
    if len(value) > UID_MAX_LENGTH:
        return f"longer than {UID_MAX_LENGTH} characters"
    if not _ALLOWED.fullmatch(value):
        return "characters other than 0-9 and '.'"
    if "" in value.split("."):
        return "an empty component"
    return None


def loggable_uid(value: object) -> str:
    """``value`` when it is a valid UID, else a placeholder that says so (for log lines)."""
    text = str(value or "").strip()
    problem = uid_problem(text)
    return text if problem is None else f"[invalid UID: {problem}]"
