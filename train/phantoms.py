"""Synthetic training data from the engine's phantom generator (:mod:`m2unet.phantom`).

:func:`write_phantom_dataset` writes cases as a user's data would look (NIfTI files or DICOM CT
series, lobe masks as NIfTI label maps, a ``labels.csv``), so the whole path from files to weights
is exercised. :func:`prepared_phantoms` skips the files: it generates phantoms and keeps them as
prepared cases cached as ``.npz`` (for the demo weights, trained on a fixed set).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from m2unet.preprocessing import PreprocessingConfig
from train.prepared import PreparedCase, load_prepared, prepare_case, save_prepared


def _make(seed: int, shape=None, spacing=None):
    from m2unet.phantom import make_phantom

    kwargs = {}
    if shape is not None:
        kwargs["shape"] = tuple(shape)
    if spacing is not None:
        kwargs["spacing"] = tuple(spacing)
    return make_phantom(seed, **kwargs)


def write_phantom_dataset(
    out_dir: str | Path,
    *,
    count: int,
    seed: int = 0,
    fmt: str = "nifti",
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Path:
    """Write ``count`` phantoms (seeds ``seed .. seed + count - 1``) and ``labels.csv``; returns the CSV."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    if fmt not in ("nifti", "dicom"):
        raise ValueError(f"format must be 'nifti' or 'dicom', got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from m2unet.phantom_dicom import write_ct_series, write_nifti

    rows = []
    for k in range(count):
        phantom = _make(seed + k, shape, spacing)
        name = f"phantom-{seed + k:06d}"
        image_path, mask_path = write_nifti(phantom, out_dir, stem=name)
        if fmt == "dicom":
            image_path.unlink()
            write_ct_series(phantom, out_dir / name)
            image_path = out_dir / name
        rows.append((image_path.name, phantom.severity, mask_path.name))
    csv_path = out_dir / "labels.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "label", "mask"])
        writer.writerows(rows)
    return csv_path


def prepared_phantoms(
    seeds: list[int],
    config: PreprocessingConfig,
    cache_dir: str | Path | None = None,
    *,
    shape=None,
    spacing=None,
    progress: Callable[[int, int], None] | None = None,
) -> list[PreparedCase]:
    """Phantoms of ``seeds`` as prepared cases; with ``cache_dir`` each is generated once and kept
    as ``phantom<seed>.npz`` (the cache key includes the grid's spacing, so another preprocessing
    gets its own files)."""
    cases = []
    key = "native" if config.in_plane_spacing_mm is None else f"{config.in_plane_spacing_mm:g}mm"
    for i, seed in enumerate(seeds):
        path = Path(cache_dir) / key / f"phantom{seed:05d}.npz" if cache_dir is not None else None
        if path is not None and path.exists():
            cases.append(load_prepared(path))
        else:
            phantom = _make(seed, shape, spacing)
            case = prepare_case(f"phantom{seed:05d}", phantom.volume, phantom.class_map, phantom.severe, config)
            if path is not None:
                save_prepared(case, path)
            cases.append(case)
        if progress is not None:
            progress(i + 1, len(seeds))
    return cases
