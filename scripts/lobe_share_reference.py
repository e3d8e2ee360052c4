"""Compute the lobe-share reference ranges of ``m2unet/qc_reference.json`` from real annotations.

Run once (the result is committed as package data; ``m2unet.qc`` reads it):

    .venv/bin/python scripts/lobe_share_reference.py [--masks ../shared/data/lobe-masks] \
        [--out m2unet/qc_reference.json]

Input: the 40 manual five-lobe label maps (NRRD) of real chest CTs in ``lobe-masks/`` (LUNA16
subset of LIDC-IDRI; Tang, Zhang, Xie, ISBI 2019, arXiv:1903.09879; DeepVoxel Inc., CC BY-NC-SA
4.0). Labels are ``value & 255``: 4 right upper, 5 right middle, 6 right lower, 7 left upper,
8 left lower lobe. Airway voxels (values >= 512) count in the lobe they lie in (512 + lobe code;
512 and 513, the central airways, fall to 0 and 1). Value 1 (unassigned lung) is left out.

Output: per lobe the share of the lung volume (the five lobes together): min, max, median; the
total lung volume in mL: min, max, median; how many annotations; where they come from and their
licence. Only aggregate numbers: nothing that identifies a scan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MASKS = ROOT.parent / "shared" / "data" / "lobe-masks"
DEFAULT_OUT = ROOT / "m2unet" / "qc_reference.json"

# annotation code -> the lobe's key in m2unet's JSON (m2unet.labels.Lobe names, lower case)
ANNOTATION_LOBES = {4: "right_upper", 5: "right_middle", 6: "right_lower", 7: "left_upper", 8: "left_lower"}

SOURCE = (
    "40 manual five-lobe label maps of real chest CTs (LUNA16 subset of LIDC-IDRI): H. Tang, C. Zhang, "
    "X. Xie, 'Automatic Pulmonary Lobe Segmentation Using Deep Learning', ISBI 2019 (arXiv:1903.09879); "
    "data published by DeepVoxel Inc."
)
LICENCE = "CC BY-NC-SA 4.0 (https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode)"


def measure(path: Path) -> dict:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    labels = sitk.GetArrayViewFromImage(image).astype(np.int64) & 255
    counts = np.bincount(labels.ravel(), minlength=256)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    volumes = {key: float(counts[code]) * voxel_ml for code, key in ANNOTATION_LOBES.items()}
    lung = np.isin(labels, list(ANNOTATION_LOBES))
    nz = lung.shape[0]
    per_slice = lung.reshape(nz, -1).sum(axis=1)
    edge = lung[:, 0, :].sum() + lung[:, -1, :].sum() + lung[:, :, 0].sum() + lung[:, :, -1].sum()
    return {
        "volumes_ml": volumes,
        "first_last_slice_fraction": float(max(per_slice[0], per_slice[-1]) / max(per_slice.max(), 1)),
        "in_plane_edge_fraction": float(edge / max(lung.sum(), 1)),
    }


def summarise(measurements: list[dict]) -> dict:
    shares = {key: [] for key in ANNOTATION_LOBES.values()}
    totals = []
    for m in measurements:
        total = sum(m["volumes_ml"].values())
        totals.append(total)
        for key, volume in m["volumes_ml"].items():
            shares[key].append(volume / total)

    def stats(values, digits):
        a = np.asarray(values, dtype=float)
        return {"min": round(float(a.min()), digits), "max": round(float(a.max()), digits), "median": round(float(np.median(a)), digits)}

    return {
        "annotations": len(measurements),
        "lobe_share": {key: stats(values, 4) for key, values in shares.items()},
        "lung_volume_ml": stats(totals, 0),
        "lung_on_first_or_last_slice": {
            "annotations": int(sum(m["first_last_slice_fraction"] > 0 for m in measurements)),
            "max_fraction_of_largest_slice": round(max(m["first_last_slice_fraction"] for m in measurements), 4),
        },
        "lung_on_in_plane_edge_max_fraction": round(max(m["in_plane_edge_fraction"] for m in measurements), 6),
        "source": SOURCE,
        "licence": LICENCE,
        "computed_by": "scripts/lobe_share_reference.py",
        "note": "share = lobe volume / volume of the five lobes; airways counted in their lobe; unassigned lung left out",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=Path, default=DEFAULT_MASKS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    paths = sorted(args.masks.glob("*.nrrd"))
    if not paths:
        parser.error(f"no .nrrd file in {args.masks}")
    measurements = []
    for i, path in enumerate(paths, 1):
        measurements.append(measure(path))
        print(f"{i}/{len(paths)} measured", flush=True)
    reference = summarise(measurements)
    args.out.write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(reference, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
