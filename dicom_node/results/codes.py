"""Every coded concept the result objects use, in one place.

SNOMED CT, DCM and UCUM codes are taken from pydicom's code dictionary (``pydicom.sr.codedict``),
so a misspelt value or meaning cannot slip in; :func:`check_codes` re-checks them against the
dictionary (the tests call it). Concepts that no standard terminology names are private codes
under the coding scheme ``99M2UNET`` (DICOM PS3.16 8.2: designators starting "99" are private),
declared in the objects' Coding Scheme Identification Sequence.

Severity: the paper (He et al. 2020, section IV-A) groups the Chinese guideline's four types into
two: mild and moderate are "non-severe", severe and critical are "severe". We code "severe" as
SCT 24484000 "Severe" and "non-severe" as SCT 371923003 "Mild to Moderate", which is exactly what
the paper's "non-severe" holds.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from m2unet.labels import Lobe

PRIVATE_SCHEME = "99M2UNET"
PRIVATE_SCHEME_NAME = "m2unet-node private codes"

# SEG: segmented property category and types (CID 7150, CID 7151), laterality (CID 244)
ANATOMICAL_STRUCTURE: Code = codes.SCT.AnatomicalStructure  # 91723000
UPPER_LOBE_OF_LUNG: Code = codes.SCT.UpperLobeOfLung  # 45653009
LOWER_LOBE_OF_LUNG: Code = codes.SCT.LowerLobeOfLung  # 90572001
MIDDLE_LOBE_OF_RIGHT_LUNG: Code = codes.SCT.MiddleLobeOfRightLung  # 72481006
RIGHT: Code = codes.SCT.Right  # 24028007
LEFT: Code = codes.SCT.Left  # 7771000
LUNG: Code = codes.SCT.Lung  # 39607008
ARTIFICIAL_INTELLIGENCE: Code = codes.cid7162.ArtificialIntelligence  # DCM 123110

# lobe -> (segmented property type, laterality modifier)
LOBE_CODES: dict[Lobe, tuple[Code, Code]] = {
    Lobe.RIGHT_UPPER: (UPPER_LOBE_OF_LUNG, RIGHT),
    Lobe.RIGHT_MIDDLE: (MIDDLE_LOBE_OF_RIGHT_LUNG, RIGHT),
    Lobe.RIGHT_LOWER: (LOWER_LOBE_OF_LUNG, RIGHT),
    Lobe.LEFT_UPPER: (UPPER_LOBE_OF_LUNG, LEFT),
    Lobe.LEFT_LOWER: (LOWER_LOBE_OF_LUNG, LEFT),
}

# SR
IMAGING_MEASUREMENT_REPORT: Code = codes.DCM.ImagingMeasurementReport  # 126000
CT_CHEST_REPORT: Code = codes.LN.CTChestReport  # procedure reported: LN 24627-2
SEVERITY: Code = codes.SCT.Severity  # 246112005 "Severity (attribute)"
SEVERE: Code = codes.SCT.Severe  # 24484000
MILD_TO_MODERATE: Code = codes.SCT.MildToModerate  # 371923003, the paper's "non-severe"
PROBABILITY: Code = codes.DCM.Probability  # 122157
VOLUME: Code = codes.SCT.Volume  # 118565006
ABNORMAL_OPACITY: Code = codes.DCM.AbnormalOpacity  # 112033, finding type of the lobe groups
MILLILITER = Code("mL", "UCUM", "milliliter")
PERCENT: Code = codes.UCUM.Percent
NO_UNITS: Code = codes.UCUM.NoUnits  # "1"

# no standard code names these two quantities
OPACITY_PERCENTAGE = Code("opacity-percent", PRIVATE_SCHEME, "Opacity volume as percentage of lobe volume")
CT_SEVERITY_SCORE = Code("ct-severity-score", PRIVATE_SCHEME, "CT severity score")  # of one lobe, 0..5
TOTAL_CT_SEVERITY_SCORE = Code("total-ct-severity-score", PRIVATE_SCHEME, "Total CT severity score")  # 0..25
DEVICE: Code = codes.cid270.Device  # DCM 121007, observer type

# quality check of the result (m2unet.qc): Quality Control = Succeeded | Failed (CID 6042 "Status
# of Results"), and one TEXT item per failed check
QUALITY_CONTROL: Code = codes.DCM.QualityControl  # 110002
SUCCEEDED: Code = codes.DCM.Succeeded  # 111222
FAILED: Code = codes.DCM.Failed  # 111224
FAILED_QUALITY_CHECK = Code("qc-check-failed", PRIVATE_SCHEME, "Failed quality check")

SEVERITY_VALUES: dict[str, Code] = {"severe": SEVERE, "non-severe": MILD_TO_MODERATE}

# (dictionary attribute, expected value) for each code taken from pydicom's dictionary
_DICTIONARY_CHECKS = [
    ("SCT", "AnatomicalStructure", "91723000"),
    ("SCT", "UpperLobeOfLung", "45653009"),
    ("SCT", "LowerLobeOfLung", "90572001"),
    ("SCT", "MiddleLobeOfRightLung", "72481006"),
    ("SCT", "Right", "24028007"),
    ("SCT", "Left", "7771000"),
    ("SCT", "Lung", "39607008"),
    ("SCT", "Severity", "246112005"),
    ("SCT", "Severe", "24484000"),
    ("SCT", "MildToModerate", "371923003"),
    ("SCT", "Volume", "118565006"),
    ("DCM", "Device", "121007"),
    ("DCM", "ImagingMeasurementReport", "126000"),
    ("DCM", "Probability", "122157"),
    ("DCM", "AbnormalOpacity", "112033"),
    ("LN", "CTChestReport", "24627-2"),
    ("DCM", "QualityControl", "110002"),
    ("DCM", "Succeeded", "111222"),
    ("DCM", "Failed", "111224"),
]


def check_codes() -> list[str]:
    """Compare each standard code used here with pydicom's dictionary; return the mismatches."""
    problems = []
    for scheme, keyword, value in _DICTIONARY_CHECKS:
        try:
            code = getattr(getattr(codes, scheme), keyword)
        except AttributeError:
            problems.append(f"{scheme} {keyword}: not in pydicom's code dictionary")
            continue
        if code.value != value:
            problems.append(f"{scheme} {keyword}: dictionary value {code.value}, expected {value}")
    return problems


def private_scheme_item():
    """The Coding Scheme Identification Sequence item declaring :data:`PRIVATE_SCHEME`."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "m2unet-node"
    return item
