"""All result objects of one processed series, built together and written to one folder.

Given the same source, lobe map, findings, version, AE title and creation time, the objects are
identical byte for byte (deterministic UIDs from ``uids``, the creation time from ``stamp``), so
a job re-run after a crash rebuilds exactly what a first run may already have queued or sent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.durable import atomic_write, fsync_dir
from dicom_node.results.findings import Findings
from dicom_node.results.records import FILE_NAMES
from dicom_node.results.seg import build_seg
from dicom_node.results.source import SourceSeries
from dicom_node.results.sr import build_sr
from dicom_node.results.stamp import stamp
from dicom_node.results.summary import build_summary
from dicom_node.results.uids import ResultKind, result_identity



@dataclass(frozen=True)
class ResultSet:
    seg: Dataset
    sr: Dataset
    summary: Dataset | None

    def objects(self) -> dict[ResultKind, Dataset]:
        found = {ResultKind.SEG: self.seg, ResultKind.SR: self.sr}
        if self.summary is not None:
            found[ResultKind.SUMMARY] = self.summary
        return found


def build_result_set(
    source: SourceSeries,
    hu: np.ndarray,
    lobe_map: np.ndarray,
    findings: Findings,
    *,
    version: int,
    ae_title: str,
    created: datetime,
    summary_image: bool = True,
) -> ResultSet:
    def identity(kind: ResultKind):
        return result_identity(
            kind,
            source.series_instance_uid,
            source.sop_instance_uids,
            findings.weights_sha256,
            version,
            source.series_number,
        )

    with warnings.catch_warnings():
        # highdicom warns about single-component Patient's Names (common in de-identified data)
        # that are copied, not written, by us
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = build_seg(source, lobe_map, findings, identity(ResultKind.SEG), device_serial_number=ae_title)
        sr = build_sr(source, seg, findings, identity(ResultKind.SR), ae_title=ae_title)
        summary = build_summary(source, hu, lobe_map, findings, identity(ResultKind.SUMMARY)) if summary_image else None
    for dataset in (seg, sr, summary):
        if dataset is not None:
            stamp(dataset, created)
    return ResultSet(seg=seg, sr=sr, summary=summary)


def write_result_set(result_set: ResultSet, folder: Path) -> dict[ResultKind, Path]:
    """Write each object as ``seg.dcm``, ``sr.dcm``, ``summary.dcm`` (fsynced, atomic rename; a
    failed write leaves no partial file)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, dataset in result_set.objects().items():
        path = folder / FILE_NAMES[kind]
        write_dataset(dataset, path)
        written[kind] = path
    fsync_dir(folder)
    return written


def write_dataset(dataset: Dataset, path: Path) -> None:
    """The DICOM file, whole or not at all (:mod:`dicom_node.durable`); the caller fsyncs the folder."""
    atomic_write(path, lambda handle: dataset.save_as(handle, enforce_file_format=True), sync_folder=False)

