"""``m2unet-node process SERIES_DIR --out OUT_DIR``: the pipeline on one folder, without a node.

Reads every DICOM file under ``SERIES_DIR`` (one CT series), reconstructs the volume, runs the
predictor and the quantification, writes ``OUT_DIR/seg.dcm``, ``OUT_DIR/sr.dcm`` and (with
``[results] summary_image``, the default) ``OUT_DIR/summary.dcm``, and prints one JSON object:

``{"severity", "probability_severe", "threshold", "lobes": {"right_upper": {"name", "volume_ml",
"opacity_ml", "opacity_percent", "severity_score"}, ...}, "total_score", "model": {...},
"series_instance_uid", "seconds", "timings": {...}, "files": {"seg", "sr", "summary"}}``

``seconds`` is the wall time from reading the folder to the files written (weights loading
included). The objects are the ones the node would send for that series (version 1), apart from
their creation time. Exit 0; 2 with a message on stderr for a bad config, folder, series or
weights file.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from dicom_node.config.model import ConfigError, NodeConfig, load_config, resolve_config_path


def _config(config_path) -> NodeConfig:
    path = resolve_config_path(config_path)
    if config_path is None and not path.exists():
        return NodeConfig()  # no config anywhere: the defaults (shipped weights, device auto)
    return load_config(path)


def _log_to_stderr() -> None:
    """stdout carries the JSON only: the engine's and our log events go to stderr."""
    from dicom_node.ops.logs import configure_logging

    configure_logging("auto", stream=sys.stderr)


def dicom_files(folder: Path) -> list[Path]:
    """Files under ``folder`` with the DICOM preamble (``DICM`` at byte 128) or a ``.dcm`` name."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() == ".dcm":
            found.append(path)
            continue
        with open(path, "rb") as handle:
            handle.seek(128)
            if handle.read(4) == b"DICM":
                found.append(path)
    return found


def process_series(series_dir, out_dir, config_path=None, weights=None, device=None) -> int:
    started = time.perf_counter()
    _log_to_stderr()
    try:
        config = _config(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    series_dir, out_dir = Path(series_dir), Path(out_dir)
    if not series_dir.is_dir():
        print(f"SERIES_DIR: {series_dir} is not a folder", file=sys.stderr)
        return 2
    paths = dicom_files(series_dir)
    if not paths:
        print(f"SERIES_DIR: no DICOM file in {series_dir}", file=sys.stderr)
        return 2
    try:
        summary = _process(paths, out_dir, config, weights, device)
    except (ValueError, OSError) as exc:
        from dicom_node.results.sanitize import scrub_text

        print(f"process: {scrub_text(getattr(exc, 'reason', None) or exc)}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(summary, indent=2))
    return 0


def _process(paths: list[Path], out_dir: Path, config: NodeConfig, weights, device) -> dict:
    from dicom_node.pipeline import process
    from dicom_node.results.build import write_result_set

    # --weights / --device over [model]; the weights are loaded once the series is read
    model = replace(config.model, weights=weights or config.model.weights, device=device or config.model.device)
    processed = process.process_series(paths, None, replace(config, model=model))
    t = time.perf_counter()
    written = write_result_set(processed.result_set, out_dir)
    timings = dict(processed.timings)
    timings["results"] = timings.pop("build") + time.perf_counter() - t
    summary = processed.findings_json()
    summary["series_instance_uid"] = processed.analysis.source.series_instance_uid
    summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    summary["files"] = {kind.name.lower(): str(path) for kind, path in written.items()}
    return summary
