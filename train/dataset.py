"""A training dataset: CT cases listed in a CSV of labels, with optional lobe masks.

The CSV has a header and one row per case::

    case,label,mask
    patient01/series1,severe,patient01/lobes.seg.dcm
    patient02.nii.gz,moderate,
    patient03.nii.gz,non-severe,patient03_lobes.nii.gz

* ``case`` (or ``image``): a folder holding one DICOM CT series, or a NIfTI file (``.nii``,
  ``.nii.gz``), relative to the CSV's folder (or the ``root`` given) unless absolute. A series is
  read by the node's own reader (:func:`read_dicom_series`), so training sees the volumes the node
  segments.
* ``label`` (or ``severity``): ``severe`` / ``non-severe``, or the four clinical types of the
  guideline the paper follows, mapped as in Section IV-A: mild and moderate are non-severe, severe
  and critical are severe. Case and spaces do not matter; ``non severe`` and ``non_severe`` are read.
* ``mask`` (or ``lobes``, optional, may be empty): the lobe masks as a NIfTI label map of the
  seven classes of :class:`m2unet.labels.SegmentationClass`, or as a DICOM SEG (``.dcm``) whose
  segments name the lobes.

:func:`read_label_table` checks every row (known label, existing files, no duplicate case) and
:func:`load_cases` reads every case (mask shape equal to its image, mask labels known) before any
training starts; each problem is a ``ValueError`` naming the CSV file and the row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from m2unet.labels import NUM_CLASSES
from m2unet.preprocessing import PreprocessingConfig
from m2unet.volume import Volume
from train.prepared import PreparedCase, prepare_case

if TYPE_CHECKING:
    from dicom_node.series.reconstruct import ReconstructedSeries

SEVERE_LABELS = {"severe": True, "critical": True, "non-severe": False, "mild": False, "moderate": False}
KNOWN_LABELS = ("severe", "non-severe", "mild", "moderate", "critical")
CASE_COLUMNS = ("case", "image")
LABEL_COLUMNS = ("label", "severity")
MASK_COLUMNS = ("mask", "lobes")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def parse_label(text: str) -> bool:
    """``True`` for severe (severe, critical), ``False`` for non-severe (non-severe, mild,
    moderate); ``ValueError`` for anything else."""
    key = " ".join(str(text).strip().lower().replace("_", " ").split()).replace("non severe", "non-severe")
    key = key.replace("nonsevere", "non-severe")
    if key not in SEVERE_LABELS:
        raise ValueError(f"label {text!r} is not one of {', '.join(KNOWN_LABELS)}")
    return SEVERE_LABELS[key]


@dataclass(frozen=True)
class CaseRecord:
    """One row of the label CSV, resolved: ``row`` is the 1-based line number in the file."""

    case_id: str
    image: Path
    severe: bool
    mask: Path | None
    source: Path
    row: int

    def where(self) -> str:
        return f"{self.source}: row {self.row} (case {self.case_id!r})"


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _column(header: list[str], choices: tuple[str, ...], source: Path, required: bool) -> str | None:
    for name in choices:
        if name in header:
            return name
    if required:
        raise ValueError(f"{source}: row 1: no {' or '.join(repr(c) for c in choices)} column (header {header})")
    return None


def read_label_table(csv_path: str | Path, root: str | Path | None = None) -> list[CaseRecord]:
    """Read and check the label CSV (see the module doc)."""
    source = Path(csv_path)
    if not source.is_file():
        raise ValueError(f"{source}: label CSV not found")
    base = Path(root) if root is not None else source.parent
    with source.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{source}: empty file, expected a header and one row per case") from None
        case_col = _column(header, CASE_COLUMNS, source, True)
        label_col = _column(header, LABEL_COLUMNS, source, True)
        mask_col = _column(header, MASK_COLUMNS, source, False)
        records: list[CaseRecord] = []
        seen: dict[str, int] = {}
        for row_number, values in enumerate(reader, start=2):
            if not any(v.strip() for v in values):
                continue
            if len(values) < len(header):
                values = values + [""] * (len(header) - len(values))
            row = dict(zip(header, (v.strip() for v in values)))
            where = f"{source}: row {row_number}"
            name = row[case_col]
            if not name:
                raise ValueError(f"{where}: empty {case_col!r}")
            if name in seen:
                raise ValueError(f"{where}: case {name!r} already listed in row {seen[name]}")
            seen[name] = row_number
            try:
                severe = parse_label(row[label_col])
            except ValueError as exc:
                raise ValueError(f"{where} (case {name!r}): {exc}") from None
            image = Path(name) if Path(name).is_absolute() else base / name
            if not image.exists():
                raise ValueError(f"{where}: case {name!r} not found at {image}")
            if not (image.is_dir() or _is_nifti(image)):
                raise ValueError(f"{where}: case {name!r} is neither a DICOM series folder nor a NIfTI file")
            mask = None
            if mask_col and row.get(mask_col):
                mask = Path(row[mask_col]) if Path(row[mask_col]).is_absolute() else base / row[mask_col]
                if not mask.is_file():
                    raise ValueError(f"{where} (case {name!r}): mask not found at {mask}")
            records.append(CaseRecord(name, image, severe, mask, source, row_number))
    if not records:
        raise ValueError(f"{source}: the dataset is empty (no case rows)")
    return records


def read_dicom_series(folder: str | Path) -> ReconstructedSeries:
    """The CT series in ``folder`` (its DICOM files, subfolders included) as the node reconstructs
    it (:func:`dicom_node.series.reconstruct.reconstruct_series`), so that training sees the volume
    inference sees. A missing folder, one without DICOM files, or a series the node would not use
    (several series, gaps, uneven spacing, ...) is refused with a ``ValueError`` naming the folder."""
    from dicom_node.pipeline.offline import dicom_files
    from dicom_node.series.reconstruct import reconstruct_series

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of DICOM files")
    try:
        paths = dicom_files(folder)
        if not paths:
            raise ValueError("holds no DICOM file")
        return reconstruct_series(paths)
    except (ValueError, OSError) as exc:  # UnusableSeries is a ValueError with the short reason
        reason = str(getattr(exc, "reason", None) or exc)
        if "series given" in reason:  # "instances of 2 series given; expected one"
            reason += "; give one folder per series"
        raise ValueError(f"{folder}: {reason}") from exc


def read_image(path: Path) -> Volume:
    if _is_nifti(path):
        import SimpleITK as sitk

        return Volume.from_sitk(sitk.ReadImage(str(path)))
    return read_dicom_series(path).volume


def read_mask(path: Path, volume: Volume) -> np.ndarray:
    """The 7-class map of a NIfTI label map or a DICOM SEG, checked against ``volume``."""
    if _is_nifti(path):
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        if array.shape != volume.shape:
            raise ValueError(f"mask shape {array.shape} differs from image shape {volume.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            if not np.array_equal(array, np.round(array)):
                raise ValueError("mask holds non-integer labels")
        if array.size and (array.min() < 0 or array.max() >= NUM_CLASSES):
            raise ValueError(f"mask holds labels outside 0..{NUM_CLASSES - 1} (min {array.min()}, max {array.max()})")
        return array.astype(np.uint8)
    from train.seg_masks import read_seg_class_map

    return read_seg_class_map(path, volume)


def iter_cases(records: list[CaseRecord], config: PreprocessingConfig) -> Iterator[PreparedCase]:
    for record in records:
        try:
            volume = read_image(record.image)
            mask = read_mask(record.mask, volume) if record.mask is not None else None
            yield prepare_case(record.case_id, volume, mask, record.severe, config)
        except ValueError as exc:
            raise ValueError(f"{record.where()}: {exc}") from None


def load_cases(
    records: list[CaseRecord],
    config: PreprocessingConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[PreparedCase]:
    """Read and prepare every case up front, so any bad input stops the run before training."""
    cases = []
    for i, case in enumerate(iter_cases(records, config)):
        cases.append(case)
        if progress is not None:
            progress(i + 1, len(records))
    if not cases:
        raise ValueError("the dataset is empty")
    return cases
