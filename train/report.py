"""The cross-validation report: tables like the paper's II/V (severity) and III/VI (lobes), and the ROC.

Each cell is ``mean ± std`` over the folds (population standard deviation). The classification
table has Accuracy, Precision, Recall, F1 Score and AUC, one row per variant (M2UNet, Cls. Only);
the segmentation table DSC, SEN and PPV (mean over the five lobes), one row per variant (M2UNet,
Seg. Only), followed by the per-lobe DSC. The ROC plot (the paper's Fig. 6) pools the test-set
probabilities of all folds per variant. ``report.md``, ``report.json`` and ``roc.png`` are written.
"""

from __future__ import annotations

import json
from pathlib import Path

from m2unet.labels import Lobe
from train.cv import CrossValidation, fold_record
from train.metrics import CLASSIFICATION_METRICS, SEGMENTATION_METRICS, mean_std, roc_curve

VARIANT_NAMES = {"m2unet": "M2UNet", "cls_only": "Cls. Only", "seg_only": "Seg. Only"}
HEADINGS = {
    "accuracy": "Accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1 Score",
    "auc": "AUC",
    "dsc": "DSC",
    "sen": "SEN",
    "ppv": "PPV",
}


def summary_table(cv: CrossValidation, metrics: tuple[str, ...]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{variant: {metric: (mean, std)}}`` over folds, for variants that report ``metrics``."""
    table = {}
    for variant, results in cv.by_variant().items():
        if not any(metrics[0] in r.metrics for r in results):
            continue
        table[variant] = {m: mean_std([r.metrics.get(m, float("nan")) for r in results]) for m in metrics}
    return table


def _cell(value: tuple[float, float]) -> str:
    mean, std = value
    if mean != mean:
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}"


def markdown_table(title: str, table: dict[str, dict[str, tuple[float, float]]], metrics: tuple[str, ...]) -> list[str]:
    lines = [f"### {title}", "", "| Method | " + " | ".join(HEADINGS.get(m, m) for m in metrics) + " |"]
    lines.append("|---" * (len(metrics) + 1) + "|")
    for variant, row in table.items():
        lines.append(f"| {VARIANT_NAMES.get(variant, variant)} | " + " | ".join(_cell(row[m]) for m in metrics) + " |")
    return lines + [""]


def plot_roc(cv: CrossValidation, path: str | Path) -> Path | None:
    """ROC curves of the pooled out-of-fold probabilities per variant; None without a classifier."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    curves = []
    for variant, results in cv.by_variant().items():
        scores = [s for r in results for s in r.scores if s.probability_severe is not None]
        if not scores or len({s.severe for s in scores}) < 2:
            continue
        fpr, tpr, _ = roc_curve([s.severe for s in scores], [s.probability_severe for s in scores])
        auc = mean_std([r.metrics.get("auc", float("nan")) for r in results])[0]
        curves.append((variant, fpr, tpr, auc))
    if not curves:
        return None
    figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
    for variant, fpr, tpr, auc in curves:
        axes.plot(fpr, tpr, label=f"{VARIANT_NAMES.get(variant, variant)} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    axes.set_title("Severity assessment, test folds pooled")
    axes.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def write_report(cv: CrossValidation, out_dir: str | Path, *, title: str = "Five-fold cross-validation") -> dict:
    """Write ``report.md``, ``report.json`` and ``roc.png`` to ``out_dir``; returns the JSON."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classification = summary_table(cv, CLASSIFICATION_METRICS)
    segmentation = summary_table(cv, SEGMENTATION_METRICS)
    lobe_keys = tuple(f"dsc_{lobe.name.lower()}" for lobe in Lobe)
    per_lobe = summary_table(cv, lobe_keys) if segmentation else {}
    roc = plot_roc(cv, out_dir / "roc.png")
    lines = [f"# {title}", "", f"Folds: {len(cv.folds)} (test cases per fold: {[len(f) for f in cv.folds]}); "
             "cells are mean ± std over folds.", ""]
    if classification:
        lines += markdown_table("Severity assessment (Tables II and V)", classification, CLASSIFICATION_METRICS)
    if segmentation:
        lines += markdown_table("Lung lobe segmentation (Tables III and VI)", segmentation, SEGMENTATION_METRICS)
        lines += markdown_table("DSC per lobe", per_lobe, lobe_keys)
    if roc is not None:
        lines += ["![ROC](roc.png)", ""]
    lines += ["### Per fold", "", "| Method | Fold | Threshold | Selected epoch | Metrics |", "|---|---|---|---|---|"]
    for r in cv.results:
        shown = ", ".join(f"{m} {r.metrics[m]:.3f}" for m in CLASSIFICATION_METRICS + SEGMENTATION_METRICS if m in r.metrics)
        lines.append(f"| {VARIANT_NAMES.get(r.variant, r.variant)} | {r.fold} | {r.threshold:.3f} | {r.selected_epoch} | {shown} |")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    data = {
        "folds": cv.folds,
        "classification": {v: {m: list(ms) for m, ms in row.items()} for v, row in classification.items()},
        "segmentation": {v: {m: list(ms) for m, ms in row.items()} for v, row in segmentation.items()},
        "per_lobe_dsc": {v: {m: list(ms) for m, ms in row.items()} for v, row in per_lobe.items()},
        "fold_results": [fold_record(r) for r in cv.results],
        "roc_png": str(roc) if roc else None,
    }
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, default=lambda x: None) + "\n")
    return data
