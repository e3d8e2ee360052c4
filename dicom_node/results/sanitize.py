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
  copied at all;
- an attribute of the Patient or Study modules whose value is not valid for its VR (a
  PatientBirthDate "1961-02-03", a PatientSex "X") is copied empty, and the Type 2 attributes the
  result objects require (PatientBirthDate, PatientSex, StudyDate, ...) are added empty when the
  source lacks them (anonymised series). ``sanitized_header(ds, repairs)`` records the keywords
  of both in ``repairs`` (never a value), for one warning per series.

No value of those modules may reach a log line, ``status`` or the database: error texts are passed
through :func:`scrub_text` first.

The source files themselves are never modified.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import DA, DT, TM, validate_value

from dicom_node.ops.logs import redact_quoted_values

_REFERENCE_KEYS = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")
_CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
_CODE_VALUE_KEYS = ("CodeValue", "LongCodeValue", "URNCodeValue")


# Study-level attributes outside group 0x0010 (General Study, Patient Study modules); every root
# attribute of group 0x0010 belongs to the Patient / Patient Study / Clinical Trial Subject modules.
_STUDY_KEYWORDS = frozenset(
    {
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy",
        "AdmittingDiagnosesDescription",
        "StudyID",
        "ClinicalTrialSponsorName",
        "ClinicalTrialProtocolID",
        "ClinicalTrialProtocolName",
        "ClinicalTrialSiteID",
        "ClinicalTrialSiteName",
        "ClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID",
        "ClinicalTrialTimePointID",
        "ClinicalTrialTimePointDescription",
    }
)
# Type 2 in the Patient and General Study modules of every result IOD: highdicom reads them.
REQUIRED_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
_PATIENT_SEX = frozenset({"M", "F", "O"})
_PARSERS = {"DA": DA, "TM": TM, "DT": DT}
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


@dataclass
class HeaderRepairs:
    """Keywords of patient/study attributes copied empty (``invalid``) or added empty (``missing``)."""

    invalid: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.invalid or self.missing)


def is_patient_or_study_attribute(element) -> bool:
    return element.tag.group == 0x0010 or element.keyword in _STUDY_KEYWORDS


def _valid_value(keyword: str, vr: str, value) -> bool:
    if vr not in _TEXT_VRS:
        return True
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    for v in values:
        if v is None or v == "":
            continue
        if isinstance(v, bytes):
            return False  # undecodable text
        text = str(v)
        try:
            validate_value(vr, text, pydicom_config.RAISE)
            if vr in _PARSERS:
                _PARSERS[vr](text)
        except (ValueError, TypeError, OverflowError):
            return False
        if keyword == "PatientSex" and text not in _PATIENT_SEX:
            return False
    return True


def _repair_patient_and_study(header: Dataset, repairs: HeaderRepairs) -> None:
    for element in list(header):
        if element.VR == "SQ" or not is_patient_or_study_attribute(element):
            continue
        try:
            valid = _valid_value(element.keyword, element.VR, element.value)
        except Exception:  # a value pydicom cannot even decode
            valid = False
        if not valid:
            header[element.tag].value = None  # copied empty: Type 2 stays present, Type 3 may be empty
            repairs.invalid.add(element.keyword or str(element.tag))
    for keyword in REQUIRED_TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
            repairs.missing.add(keyword)


def scrub_text(text: str, datasets=()) -> str:
    """``text`` with no value of a patient/study attribute of ``datasets`` left in it, and with
    the quoted values of pydicom's and highdicom's value errors replaced: for error texts that go
    to a log, ``status`` or the database."""
    text = redact_quoted_values(str(text))
    secrets: set[str] = set()
    for dataset in [datasets] if isinstance(datasets, Dataset) else list(datasets):
        for element in dataset:
            if element.VR == "SQ" or not is_patient_or_study_attribute(element):
                continue
            try:
                values = element.value if isinstance(element.value, (MultiValue, list, tuple)) else [element.value]
                for v in values:
                    for part in re.split(r"[\^=\\]", str(v) if not isinstance(v, bytes) else v.decode("latin-1")):
                        if len(part.strip()) >= 3:
                            secrets.add(part.strip())
            except Exception:
                continue
    for secret in sorted(secrets, key=len, reverse=True):
        text = re.sub(re.escape(secret), "[redacted]", text, flags=re.IGNORECASE)
    return text


def sanitized_header(dataset: Dataset, repairs: HeaderRepairs | None = None) -> Dataset:
    """A repaired copy of a source image's header (no pixel data, no private tags); the patient
    and study attributes it copied empty or added are recorded in ``repairs``."""
    header = Dataset()
    for element in dataset:
        if element.tag.is_private or element.tag.group in (0x7FE0,) or 0x6000 <= element.tag.group <= 0x60FF:
            continue
        # sequences are repaired in place below, so they are copied deeply; other values are
        # never modified, so a shallow copy of their element is enough (and 5x faster)
        header.add(copy.deepcopy(element) if element.VR == "SQ" else copy.copy(element))
    header.file_meta = copy.copy(getattr(dataset, "file_meta", Dataset()))
    _repair(header)
    _repair_patient_and_study(header, repairs if repairs is not None else HeaderRepairs())
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
