"""What the console shows of one series: its state, its findings and quality check, its summary image.

Read from the database and the series' current result folder (``findings.json``, ``summary.dcm``,
see :mod:`dicom_node.results.records`). Only UIDs, AE titles and measurements, unless
``[web] show_patient_names`` asks for the patient's name (read from the summary image).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom

from dicom_node.results.records import FILE_NAMES
from dicom_node.results.uids import ResultKind
from dicom_node.state import db
from dicom_node.state import results as results_state


def result_folder_of(conn, series_instance_uid: str) -> Path | None:
    """The folder of the series' newest recorded result set (None: none recorded)."""
    rows = results_state.result_rows(conn, series_instance_uid)
    if not rows:
        return None
    newest = max(rows, key=lambda r: r.version)
    return conn.data_dir / newest.folder


def summary_path(conn, series_instance_uid: str) -> Path | None:
    folder = result_folder_of(conn, series_instance_uid)
    if folder is None:
        return None
    path = folder / FILE_NAMES[ResultKind.SUMMARY]
    return path if path.is_file() else None


def series_detail(conn, series_instance_uid: str, show_patient_names: bool = False) -> dict | None:
    """``{"series": {...}, "findings": {...} | None, "qc": {...} | None, "summary_image": bool}``;
    None for an unknown series."""
    record = db.get_series(conn, series_instance_uid)
    if record is None:
        return None
    folder = result_folder_of(conn, series_instance_uid)
    findings = None
    if folder is not None and (folder / "findings.json").is_file():
        findings = json.loads((folder / "findings.json").read_text(encoding="utf-8"))
    summary = summary_path(conn, series_instance_uid)
    detail = {
        "series": {
            "study_instance_uid": record.study_instance_uid,
            "series_instance_uid": record.series_instance_uid,
            "calling_ae": record.calling_ae,
            "instances": record.instances,
            "state": str(record.state.value if hasattr(record.state, "value") else record.state),
            "reason": record.reason,
            "version": record.version,
        },
        "findings": findings,
        "qc": findings.get("qc") if findings else None,
        "summary_image": summary is not None,
    }
    if show_patient_names and summary is not None:
        ds = pydicom.dcmread(summary, stop_before_pixels=True)
        detail["patient_name"] = str(ds.get("PatientName", "") or "")
    return detail


def summary_png(path: Path) -> bytes:
    """The pixels of a summary Secondary Capture (RGB or monochrome) as a PNG."""
    from PIL import Image

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.dtype != "uint8":
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / max(high - low, 1.0) * 255).astype("uint8")
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = 255 - pixels
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()
