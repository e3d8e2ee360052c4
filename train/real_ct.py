"""Weights on the one real series available (``../shared/data/real-ct``), without lobe ground truth.

The series is read by the node's own reader (:func:`train.dataset.read_dicom_series`) and run
through the engine's predictor as the node runs it. Measured: the union of the five lobes against
the plain HU lung mask of :mod:`m2unet.lungs` (Dice, after the predictor's clean-up and for the
network's own foreground), the lobe volumes, where the lobes sit (:mod:`train.lobe_anatomy`), and
an overlay picture (:mod:`train.lobe_overlay`, ``OUT/real-ct-overlay.png``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from train.lobe_anatomy import lobe_anatomy
from train.lobe_overlay import overlay_png

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct"


def measure_real_ct(predictor, out: Path, folder: Path = REAL_CT) -> dict:
    from m2unet.labels import Lobe
    from m2unet.lungs import lung_mask
    from m2unet.preprocessing import series_seed
    from train.dataset import read_dicom_series
    from train.metrics import dice

    series = read_dicom_series(folder)
    volume = series.volume
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    started = time.monotonic()
    prediction = predictor.predict(volume, seed=series_seed(series.series_instance_uid), keep_raw=True)
    seconds = time.monotonic() - started
    lungs = lung_mask(volume)
    union = prediction.lobe_map > 0
    result = {
        "series": str(folder),
        "shape": list(volume.shape),
        "spacing": [round(s, 4) for s in volume.spacing],
        "lobe_union_dice_vs_hu_lung_mask": round(dice(union, lungs), 4),
        # the network's own foreground before the predictor's clean-up (islands handed over, cavities filled)
        "network_union_dice_vs_hu_lung_mask": round(dice(prediction.raw_class_map > 0, lungs), 4),
        "lobe_voxels": {str(k): int((prediction.lobe_map == k).sum()) for k in range(1, 6)},
        "lobe_volumes_ml": {lobe.name.lower(): round(float((prediction.lobe_map == int(lobe)).sum()) * voxel_ml, 1)
                            for lobe in Lobe},
        "probability_severe": round(float(prediction.probability_severe), 4),
        "severity": prediction.severity,
        "seconds": round(seconds, 1),
        **lobe_anatomy(prediction.lobe_map, volume),
    }
    result["overlay_png"] = str(overlay_png(volume, prediction.lobe_map, out / "real-ct-overlay.png"))
    return result
