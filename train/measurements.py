"""Measuring candidate weights as the node runs them, and merging what was measured.

A run's model is exported as a weights file (:func:`export_candidate`, threshold 0.5) and scored by
the engine's :class:`m2unet.predictor.Predictor` on native volumes: held-out phantoms
(:func:`score_phantoms`, :mod:`train.demo_phantoms`) and the real series (:mod:`train.real_ct`).
Several measuring processes may run side by side on disjoint seed ranges, each writing its own
``OUT/measured-NAME.json``; :func:`summarize_measurements` merges them: the decision threshold from
the selection phantoms (Youden's J), the paper's classification and segmentation metrics
(:mod:`train.metrics`) on the test phantoms at that threshold, the real-series checks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from train.demo_phantoms import holdout_phantom

SEGMENTATION_KEYS = ("dsc", "sen", "ppv", "dsc_right_upper", "dsc_right_middle", "dsc_right_lower", "dsc_left_upper",
                     "dsc_left_lower")


def export_candidate(out: Path, version: str, name: str = "candidate", run: str = "run-head") -> Path:
    """The run's current model as a weights file (threshold 0.5) for measuring."""
    from train.export import export_run

    run_info = out / run / "run.json"
    description = (json.loads(run_info.read_text())["training_data"] if run_info.exists()
                   else "synthetic phantoms (training in progress)")
    path = out / f"{name}.pt"
    export_run(out / run, path, version=version, card_path=out / f"{name}.md", training_data=description,
               threshold=0.5, metrics={})
    return path


def score_phantoms(predictor, seeds: list[int], out: Path, log=print) -> list[dict]:
    from m2unet.preprocessing import series_seed
    from train.metrics import segmentation_metrics

    rows = []
    for seed in seeds:
        phantom = holdout_phantom(out, seed)
        started = time.monotonic()
        prediction = predictor.predict(phantom["volume"], seed=series_seed(f"m2unet-demo-holdout:{seed}"))
        seg = segmentation_metrics(prediction.lobe_map, phantom["lobe_map"])
        row = {
            "seed": seed,
            "severe": phantom["severe"],
            "ct_severity_score": phantom["score"],
            "probability_severe": float(prediction.probability_severe),
            "shape": list(phantom["volume"].shape),
            "seconds": round(time.monotonic() - started, 1),
            **{k: round(v, 4) for k, v in seg.items()},
        }
        rows.append(row)
        log(f"seed {seed} severe={row['severe']} score={row['ct_severity_score']} "
            f"p={row['probability_severe']:.3f} dsc={row['dsc']:.3f} ({row['seconds']}s)")
    return rows


def summarize_measurements(files: list[Path]) -> dict:
    """Merge ``measured-*.json``: the threshold from the selection phantoms (Youden's J), the
    classification and segmentation metrics on the test phantoms, the real-series checks."""
    from train.metrics import best_threshold, classification_metrics, mean_std

    selection, test, real = [], [], None
    for path in files:
        data = json.loads(path.read_text())
        selection += data.get("selection", [])
        test += data.get("test", [])
        real = data.get("real_ct", real)
    summary: dict = {}
    threshold = 0.5
    if selection:
        threshold = best_threshold([r["severe"] for r in selection], [r["probability_severe"] for r in selection])
        summary["selection_phantoms"] = {"cases": len(selection), "severe": sum(r["severe"] for r in selection),
                                         "threshold": round(threshold, 4)}
    if test:
        metrics = classification_metrics([r["severe"] for r in test], [r["probability_severe"] for r in test], threshold)
        for key in SEGMENTATION_KEYS:
            mean, std = mean_std([r[key] for r in test])
            metrics[key] = mean
            metrics[key + "_std"] = std
        metrics = {k: round(v, 4) for k, v in metrics.items()}
        summary["held_out_phantoms"] = {"cases": len(test), "severe": sum(r["severe"] for r in test), "threshold":
                                        round(threshold, 4), **metrics}
    if real is not None:
        summary["real_ct"] = {k: real.get(k) for k in ("series", "shape", "spacing", "lobe_union_dice_vs_hu_lung_mask",
                                                   "network_union_dice_vs_hu_lung_mask", "lobe_volumes_ml",
                                                   "checks", "all_pass", "probability_severe", "severity", "seconds",
                                                   "centroids_lps_mm", "overlay_png")}
    summary["threshold"] = threshold
    return summary
