"""Test inputs of the results part: a source series with a made-up lobe map, validators, config.

The lobe map is invented (no model): voxels below -400 HU inside the body's bounding box, split
into right/left by the column midline and into upper/middle/lower by thirds of the slice range.
It is enough to check geometry, coding and references, not anatomy.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from dicom_node.config.model import Destination, NodeConfig, NodeSettings, SenderSettings
from dicom_node.results.findings import Findings, LobeFinding
from m2unet.labels import Lobe

DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
SEGIMAGE2ITKIMAGE = VENV_BIN / "segimage2itkimage"
TID1500READER = VENV_BIN / "tid1500reader"
STORESCU = "/usr/bin/storescu"  # DCMTK's (``.venv/bin/storescu`` is pynetdicom's app)


def made_up_lobe_map(hu: np.ndarray) -> np.ndarray:
    z, y, x = hu.shape
    lungs = hu < -400
    lungs[:, : y // 8] = False
    lungs[:, -y // 8 :] = False
    lungs[:, :, : x // 10] = False
    lungs[:, :, -x // 10 :] = False
    lobe_map = np.zeros(hu.shape, np.uint8)
    third = max(z // 3, 1)
    right = np.zeros((y, x), bool)
    right[:, : x // 2] = True  # image left = patient right (axial, radiological convention)
    for zs, (r, l) in (
        (slice(0, third), (Lobe.RIGHT_LOWER, Lobe.LEFT_LOWER)),
        (slice(third, 2 * third), (Lobe.RIGHT_MIDDLE, Lobe.LEFT_LOWER)),
        (slice(2 * third, z), (Lobe.RIGHT_UPPER, Lobe.LEFT_UPPER)),
    ):
        part = lungs[zs]
        lobe_map[zs][part & right] = r
        lobe_map[zs][part & ~right] = l
    return lobe_map


def made_up_findings(lobe_map: np.ndarray, voxel_ml: float, severity: str = "severe") -> Findings:
    lobes = []
    for lobe in Lobe:
        volume = float((lobe_map == lobe).sum()) * voxel_ml
        percent = 10.0 * int(lobe)
        score = 0 if percent == 0 else 1 if percent < 5 else 2 if percent <= 25 else 3 if percent < 50 else 4
        lobes.append(LobeFinding(lobe, volume, volume * percent / 100, percent, score))
    return Findings(
        severity=severity,
        probability_severe=0.83 if severity == "severe" else 0.12,
        threshold=0.5,
        lobes=tuple(lobes),
        total_score=sum(f.severity_score for f in lobes),
        model_name="M2UNet",
        model_version="test-1",
        weights_sha256="0123456789abcdef" * 4,
    )


def made_up_qc(volume, lobe_map: np.ndarray, findings: Findings):
    """The quality check (``m2unet.qc``) of made-up findings on their lobe map (the made-up map
    fails some checks: its lobes are thirds of the lungs, not real lobes)."""
    from m2unet.qc import quality_check
    from m2unet.quantify import LobeMeasurement, Quantification

    quantification = Quantification(
        lobes={
            f.lobe: LobeMeasurement(f.volume_ml, f.opacity_ml, f.opacity_percent, f.severity_score) for f in findings.lobes
        },
        total_score=findings.total_score,
    )
    return quality_check(volume, lobe_map, quantification, findings.severity, findings.probability_severe)


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def run_tool(args: list, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


@dataclass
class StaticConfig:
    """A stand-in for ``LiveConfig``: ``.current`` is whatever the test sets."""

    current: NodeConfig


def node_config(data_dir: Path, destinations=(), **sender) -> NodeConfig:
    return NodeConfig(
        node=NodeSettings(data_dir=Path(data_dir)),
        destinations=tuple(destinations),
        sender=replace(SenderSettings(), **sender) if sender else SenderSettings(),
    )


def destination(name: str, port: int, ae_title: str = "PACS") -> Destination:
    return Destination(name=name, ae_title=ae_title, host="127.0.0.1", port=port)


@dataclass(frozen=True)
class Case:
    """A source series, its made-up lobe map and findings, and the result set built from them."""

    reconstructed: object
    source: object
    lobe_map: np.ndarray
    findings: Findings
    result_set: object


CREATED = datetime(2026, 1, 2, 3, 4, 5)


def build_case(paths: list[Path], version: int = 1, summary_image: bool = True, severity: str = "severe") -> Case:
    from dicom_node.series.reconstruct import reconstruct_series
    from dicom_node.results.build import build_result_set
    from dicom_node.results.source import source_from_reconstruction

    reconstructed = reconstruct_series(paths)
    source = source_from_reconstruction(reconstructed)
    hu = reconstructed.volume.hu
    lobe_map = made_up_lobe_map(hu)
    findings = made_up_findings(lobe_map, reconstructed.volume.voxel_volume_ml, severity)
    findings = replace(findings, qc=made_up_qc(reconstructed.volume, lobe_map, findings))
    result_set = build_result_set(
        source, hu, lobe_map, findings, version=version, ae_title="M2UNET", created=CREATED, summary_image=summary_image
    )
    return Case(reconstructed, source, lobe_map, findings, result_set)


_CASES: dict = {}


def real_ct_case() -> Case:
    """The real series of ``shared/data/real-ct`` (built once per test session)."""
    from tests.support.paths import REAL_CT

    if "real" not in _CASES:
        _CASES["real"] = build_case(sorted(REAL_CT.glob("*.dcm")))
    return _CASES["real"]


def small_case(folder: Path, slices: int = 16, size: int = 64, seed: int = 0, **series) -> Case:
    """A small synthetic CT series (ingest's ``ct_series``) written under ``folder`` and its results."""
    from tests.support.ct_series import phantom_hu, write_ct_series

    paths = write_ct_series(Path(folder) / "series", phantom_hu(n=slices, size=size, seed=seed), **series)
    return build_case(paths)


def outbox_objects(case: Case, folder: Path):
    """Write a case's result set under ``folder`` and describe its files for the outbox."""
    from dicom_node.delivery.outbox import OutboxObject
    from dicom_node.results.build import write_result_set

    written = write_result_set(case.result_set, Path(folder))
    return [
        OutboxObject(
            path=written[kind],
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=case.source.study_instance_uid,
            source_series_uid=case.source.series_instance_uid,
        )
        for kind, ds in case.result_set.objects().items()
    ]


def phantom_series(folder: Path, seed: int = 1, slices: int = 16, size: int = 128) -> list[Path]:
    """The training phantom of ``seed`` on a small grid, written as a CT series."""
    from m2unet.phantom import make_phantom
    from m2unet.phantom_dicom import write_ct_series

    return write_ct_series(make_phantom(seed, shape=(slices, size, size)), Path(folder))


def queue_series(conn, paths: list[Path], calling_ae: str = "SCANNER"):
    """Put a series into ingest's tables as the SCP and assembler would, and queue it.

    The files are copied under ``data_dir/incoming-test/``; returns the ``SeriesRecord``."""
    import hashlib

    import pydicom

    from dicom_node.state import db

    data_dir = conn.data_dir
    target = data_dir / "incoming-test"
    target.mkdir(parents=True, exist_ok=True)
    series_uid = None
    for path in paths:
        raw = Path(path).read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        copy = target / f"{ds.SOPInstanceUID}.dcm"
        copy.write_bytes(raw)
        series_uid = str(ds.SeriesInstanceUID)
        result = db.record_instance(
            conn,
            db.InstanceRecord(
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=series_uid,
                study_instance_uid=str(ds.StudyInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                path=copy.relative_to(data_dir).as_posix(),
                digest=hashlib.sha256(raw).hexdigest(),
                size=len(raw),
                calling_ae=calling_ae,
            ),
        )
    assert db.complete_series(conn, series_uid, result.series.version, "queued")
    return db.get_series(conn, series_uid)


def warning_pixels(case: Case, findings: Findings) -> int:
    """Pixels of the summary's warning colour below its image panels, for ``findings``."""
    from dicom_node.results.summary import PANEL, WARNING_RGB, render_summary

    pixels = render_summary(case.reconstructed.volume.hu, case.lobe_map, findings)
    return int((pixels[PANEL:] == np.asarray(WARNING_RGB, np.uint8)).all(axis=-1).sum())
