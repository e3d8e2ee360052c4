"""Repairs of what the result objects inherit from the source images.

highdicom copies the root attributes of the source's Patient and Study modules into every result
(``SOPClass.copy_patient_and_study_information``): Referenced Study Sequence, Procedure Code
Sequence, De-identification Method Code Sequence and the like come along as the scanner wrote
them. Real scanners write broken ones: the series in ``shared/data/real-ct`` has a Referenced
Study Sequence item without Referenced SOP Class UID, which dciodvfy reports as an error in every
object that copies it. We repair copies of the source headers before handing them to highdicom:

- a reference item (one holding Referenced SOP Instance UID or Referenced SOP Class UID) that
  lacks either of the two, or has an empty one, is dropped;
- a code item (one holding Code Value, Code Meaning or Coding Scheme Designator) without a
  value, scheme or meaning is dropped;
- a sequence left with no item is removed (all of these sequences are Type 3 in the modules
  copied);
- attributes outside what the results need (private tags, pixel data, overlays, curves) are not
  copied at all.

The source files themselves are never modified.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

_REFERENCE_KEYS = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")
_CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
_CODE_VALUE_KEYS = ("CodeValue", "LongCodeValue", "URNCodeValue")


def sanitized_header(dataset: Dataset) -> Dataset:
    """A repaired copy of a source image's header (no pixel data, no private tags)."""
    header = Dataset()
    for element in dataset:
        if element.tag.is_private or element.tag.group in (0x7FE0,) or 0x6000 <= element.tag.group <= 0x60FF:
            continue
        # sequences are repaired in place below, so they are copied deeply; other values are
        # never modified, so a shallow copy of their element is enough (and 5x faster)
        header.add(copy.deepcopy(element) if element.VR == "SQ" else copy.copy(element))
    header.file_meta = copy.copy(getattr(dataset, "file_meta", Dataset()))
    _repair(header)
    return header


def _repair(dataset: Dataset) -> None:
    for element in list(dataset):
        if element.VR != "SQ":
            continue
        kept = []
        for item in element.value:
            _repair(item)
            if _is_broken_reference(item) or _is_broken_code(item):
                continue
            kept.append(item)
        if kept:
            element.value = Sequence(kept)
        else:
            del dataset[element.tag]


def _present(item: Dataset, keyword: str) -> bool:
    return keyword in item and item[keyword].value not in (None, "", b"")


def _is_broken_reference(item: Dataset) -> bool:
    if not any(k in item for k in _REFERENCE_KEYS):
        return False
    return not all(_present(item, k) for k in _REFERENCE_KEYS)


def _is_broken_code(item: Dataset) -> bool:
    if not any(k in item for k in (*_CODE_KEYS, "LongCodeValue", "URNCodeValue")):
        return False
    has_value = any(_present(item, k) for k in _CODE_VALUE_KEYS)
    return not (has_value and _present(item, "CodeMeaning") and (_present(item, "CodingSchemeDesignator") or _present(item, "URNCodeValue")))
