"""The summary image for viewers without SEG or SR support: a Secondary Capture (highdicom
``SCImage``, RGB) of three key axial slices with the lobes overlaid in their SEG colours and the
severity, the quality check and the score table burned in. On by default; ``[results] summary_image = false`` turns it
off.

Key slices: the slices at 25 %, 50 % and 75 % of the lungs' cranio-caudal extent (the slices the
lobe map covers), so upper, middle and lower lobes all show. Slices are shown as stored (columns
towards the patient's left for a standard axial acquisition, i.e. the radiological convention),
in a lung window (level -600, width 1500), 256 x 256 pixels each.

Quality check (``m2unet.qc``): one line under the severity, "Quality check: passed" in green or
"Quality check: FAILED - <short reasons>" in orange (plain ASCII: the default font lacks the en
dash), and each failed check's detail in small text at the bottom (the image grows by a line per
failed check).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dicom_node.results.colours import LOBE_RGB
from dicom_node.results.equipment import MANUFACTURER
from dicom_node.results.findings import Findings, series_description
from dicom_node.results.source import SourceSeries
from dicom_node.results.uids import ResultIdentity
from m2unet.labels import Lobe

PANEL = 256
TABLE_HEIGHT = 230
WINDOW_LEVEL, WINDOW_WIDTH = -600.0, 1500.0
OVERLAY_ALPHA = 0.4
WARNING_RGB = (255, 60, 60)  # the line saying the numbers are not for clinical use
QC_PASSED_RGB = (90, 210, 90)
QC_FAILED_RGB = (255, 150, 40)
QC_LINE_HEIGHT = 22
QC_DETAIL_HEIGHT = 15
MAX_QC_DETAILS = 8


def key_slices(lobe_map: np.ndarray) -> list[int]:
    """Three slice indices across the lungs' extent (the middle of the volume if no lobe)."""
    covered = np.flatnonzero(lobe_map.reshape(lobe_map.shape[0], -1).any(axis=1))
    if covered.size == 0:
        nz = lobe_map.shape[0]
        return [nz // 4, nz // 2, (3 * nz) // 4]
    first, last = int(covered[0]), int(covered[-1])
    return [int(round(first + f * (last - first))) for f in (0.25, 0.5, 0.75)]


def _panel(hu_slice: np.ndarray, lobe_slice: np.ndarray) -> Image.Image:
    low = WINDOW_LEVEL - WINDOW_WIDTH / 2
    grey = np.clip((hu_slice.astype(np.float32) - low) / WINDOW_WIDTH, 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for lobe in Lobe:
        mask = lobe_slice == int(lobe)
        if mask.any():
            rgb[mask] = (1 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * np.asarray(LOBE_RGB[lobe], np.float32)
    image = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    return image.resize((PANEL, PANEL), Image.Resampling.BILINEAR)


def qc_line(findings: Findings) -> tuple[str, tuple[int, int, int]] | None:
    """The quality-check line of the summary and its colour (None: the result was not checked)."""
    qc = findings.qc
    if qc is None:
        return None
    if qc.passed:
        return "Quality check: passed", QC_PASSED_RGB
    return "Quality check: FAILED - " + ", ".join(qc.short_reasons()), QC_FAILED_RGB


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return text + "\u2026"


def render_summary(
    hu: np.ndarray, lobe_map: np.ndarray, findings: Findings, slice_labels: list[str] | None = None
) -> np.ndarray:
    """The summary as an RGB array (rows, columns, 3) of uint8; ``slice_labels[z]`` names slice z
    on its panel (default ``slice z+1``)."""
    if hu.shape != lobe_map.shape:
        raise ValueError(f"hu shape {hu.shape} differs from lobe_map shape {lobe_map.shape}")
    slices = key_slices(lobe_map)
    width = PANEL * len(slices)
    qc = qc_line(findings)
    details = findings.qc.failed[:MAX_QC_DETAILS] if findings.qc is not None else []
    height = PANEL + TABLE_HEIGHT + (QC_LINE_HEIGHT if qc else 0) + QC_DETAIL_HEIGHT * len(details)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    for i, z in enumerate(slices):
        canvas.paste(_panel(hu[z], lobe_map[z]), (i * PANEL, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    for i, z in enumerate(slices):
        label = slice_labels[z] if slice_labels else f"slice {z + 1}"
        draw.text((i * PANEL + 4, 4), label, fill=(255, 255, 255), font=small)
    y = PANEL + 8
    headline = f"Severity: {findings.severity}   P(severe) = {findings.probability_severe:.2f}   Total CT score {findings.total_score}/25"
    draw.text((8, y), headline, fill=(255, 255, 255), font=font)
    y += 26
    if qc:
        draw.text((8, y), _fit(draw, qc[0], font, width - 16), fill=qc[1], font=font)
        y += QC_LINE_HEIGHT
    columns = (8, 200, 330, 480, 640)
    for x, text in zip(columns, ("lobe", "volume mL", "opacity %", "CT score", "")):
        draw.text((x, y), text, fill=(180, 180, 180), font=small)
    y += 20
    for finding in findings.lobes:
        draw.rectangle((columns[0], y + 3, columns[0] + 10, y + 13), fill=LOBE_RGB[finding.lobe])
        cells = (
            finding.lobe.display_name,
            f"{finding.volume_ml:.0f}",
            f"{finding.opacity_percent:.1f}",
            f"{finding.severity_score}/5",
        )
        for x, text in zip((columns[0] + 16, *columns[1:4]), cells):
            draw.text((x, y), text, fill=(255, 255, 255), font=font)
        y += 22
    y += 6
    draw.text(
        (8, y),
        f"{findings.model_name} {findings.model_version} - automatic result, not verified by a physician",
        fill=(255, 200, 0),
        font=small,
    )
    if not findings.trained:
        draw.text((8, y + 18), "UNTRAINED WEIGHTS: these numbers are meaningless", fill=WARNING_RGB, font=font)
    elif findings.caution:
        draw.text((8, y + 18), findings.caution.upper()[:90], fill=WARNING_RGB, font=font)
    y += 44
    for check in details:
        text = f"QC {check.name.replace('_', ' ')}: {check.detail}"
        draw.text((8, y), _fit(draw, text, small, width - 16), fill=QC_FAILED_RGB, font=small)
        y += QC_DETAIL_HEIGHT
    return np.asarray(canvas, dtype=np.uint8)


def _slice_label(header) -> str:
    """Instance number and slice position as a viewer shows them for the source image."""
    number = header.get("InstanceNumber")
    position = header.get("ImagePositionPatient")
    parts = [f"image {number}" if number not in (None, "") else None]
    if position is not None and len(position) == 3:
        parts.append(f"z {float(position[2]):.1f} mm")
    return ", ".join(p for p in parts if p)


def _frame_label(source: SourceSeries, z: int) -> str:
    """Instance number, frame number and position of volume slice z of a multi-frame source."""
    number = source.headers[0].get("InstanceNumber")
    image = f"image {number} " if number not in (None, "") else ""
    position = source.slice_position(z)
    return f"{image}frame {source.frame_numbers[z]}, z {position[2]:.1f} mm"


def slice_labels(source: SourceSeries) -> list[str]:
    """What each volume slice's panel is called: its source image (and frame) and position."""
    if source.frame_numbers is None:
        return [_slice_label(header) for header in source.headers]
    return [_frame_label(source, z) for z in range(source.slice_count)]


def build_summary(
    source: SourceSeries,
    hu: np.ndarray,
    lobe_map: np.ndarray,
    findings: Findings,
    identity: ResultIdentity,
) -> hd.sc.SCImage:
    labels = slice_labels(source)
    pixels = render_summary(hu, lobe_map, findings, labels)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source.headers[0],
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    image.SeriesDescription = series_description("Lung lobes and severity summary (M2UNet)", findings)
    image.BurnedInAnnotation = "YES"
    image.Laterality = ""  # General Series Type 2C; both lungs show, so no single laterality
    return image
