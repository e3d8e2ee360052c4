"""Export: the deployable weights file (the engine's format) and its model card.

A training run folder holds ``recipe.json``, ``checkpoint.pt`` (and ``selected.pt`` where the inner
split chose an epoch), and optionally ``run.json`` (what it was trained on) and ``metrics.json``
(what was measured, and how). :func:`export_run` writes the weights with
:func:`m2unet.weights.save_weights` (float16 storage by default) and a Markdown model card beside
them: training data, recipe, measured metrics, intended use, and that the weights are not for
clinical use without training and validation on local data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from m2unet.labels import CLASS_NAMES
from m2unet.model import M2UNet
from m2unet.weights import WeightsMetadata, load_weights, save_weights
from train.fit import CHECKPOINT, RECIPE, SELECTED, preprocessing_config
from train.recipe import Recipe

RUN_INFO = "run.json"
METRICS = "metrics.json"
MODEL_CARD = "MODEL_CARD.md"

NOT_CLINICAL = (
    "These weights are not for clinical use. Before any use on patients they must be trained and "
    "validated on local data, under the institution's own governance and the applicable regulations."
)


@dataclass
class ExportResult:
    weights: Path
    card: Path
    sha256: str
    size_bytes: int


def load_run_model(run_dir: str | Path) -> tuple[M2UNet, Recipe]:
    """The trained model of a run folder (the selected epoch where one was selected) and its recipe."""
    run_dir = Path(run_dir)
    recipe_path = run_dir / RECIPE
    if not recipe_path.is_file():
        raise ValueError(f"{run_dir}: no {RECIPE}; not a training run folder")
    recipe = Recipe.load(recipe_path)
    model = M2UNet(recipe.variant)
    selected = run_dir / SELECTED
    checkpoint = run_dir / CHECKPOINT
    if recipe.selection != "last" and selected.is_file():
        state = torch.load(selected, map_location="cpu", weights_only=True)
    elif checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    else:
        raise ValueError(f"{run_dir}: no {CHECKPOINT}; the run has not saved a model yet")
    model.load_state_dict(state)
    return model.eval(), recipe


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None


def export_run(
    run_dir: str | Path,
    weights_path: str | Path,
    *,
    version: str,
    card_path: str | Path | None = None,
    training_data: str | None = None,
    metrics: dict | None = None,
    threshold: float | None = None,
    float16: bool = True,
    summary: str | None = None,
    caution: str = "",
) -> ExportResult:
    """Write the weights of the run in ``run_dir`` and their model card (see the module doc);
    ``summary`` is a paragraph for the card saying plainly what the weights are; ``caution`` a
    warning every result made with the weights carries (:class:`m2unet.weights.WeightsMetadata`)."""
    run_dir = Path(run_dir)
    model, recipe = load_run_model(run_dir)
    run_info = _read_json(run_dir / RUN_INFO)
    measured = metrics if metrics is not None else _read_json(run_dir / METRICS)
    description = training_data or run_info.get("training_data")
    if not description:
        raise ValueError(f"{run_dir}: no description of the training data ({RUN_INFO} lacks it); pass training_data")
    if threshold is None:
        threshold = float(measured.get("threshold", recipe.decision_threshold))
    return export_model(
        model,
        recipe,
        weights_path,
        version=version,
        card_path=card_path,
        training_data=description,
        metrics=measured,
        threshold=threshold,
        float16=float16,
        summary=summary,
        caution=caution,
    )


def export_model(
    model: M2UNet,
    recipe: Recipe,
    weights_path: str | Path,
    *,
    version: str,
    training_data: str,
    metrics: dict,
    threshold: float,
    card_path: str | Path | None = None,
    float16: bool = True,
    summary: str | None = None,
    caution: str = "",
) -> ExportResult:
    weights_path = Path(weights_path)
    card_path = Path(card_path) if card_path is not None else weights_path.parent / MODEL_CARD
    metadata = WeightsMetadata(
        version=version,
        variant=recipe.variant,
        preprocessing=preprocessing_config(recipe, inference=True).to_dict(),
        threshold=min(max(float(threshold), 1e-6), 1 - 1e-6),
        training_data=training_data,
        trained=True,
        metrics=_json_safe(metrics),
        recipe=recipe.to_dict(),
        caution=caution,
    )
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    sha256 = save_weights(weights_path, model, metadata, dtype=torch.float16 if float16 else torch.float32)
    load_weights(weights_path)  # the file must read back before it is described
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(model_card(metadata, sha256, weights_path, float16=float16, summary=summary))
    return ExportResult(weights=weights_path, card=card_path, sha256=sha256, size_bytes=weights_path.stat().st_size)


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _metric_lines(metrics: dict, prefix: str = "") -> list[str]:
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(f"- **{prefix}{key}**")
            lines += ["  " + line for line in _metric_lines(value)]
        elif isinstance(value, float):
            lines.append(f"- {prefix}{key}: {value:.4f}")
        else:
            lines.append(f"- {prefix}{key}: {value}")
    return lines


def model_card(metadata: WeightsMetadata, sha256: str, weights_path: Path, *, float16: bool, summary: str | None = None) -> str:
    recipe = metadata.recipe
    prep = metadata.preprocessing
    spacing = prep.get("in_plane_spacing_mm")
    lines = [
        f"# Model card: {metadata.name} {metadata.version}",
        "",
        f"- File: `{weights_path.name}` ({weights_path.stat().st_size / 2**20:.2f} MiB, "
        f"{'float16' if float16 else 'float32'} storage), sha256 `{sha256}`",
        f"- Created: {metadata.created} (card written {datetime.now(timezone.utc).isoformat(timespec='seconds')})",
        f"- Variant: `{metadata.variant}` (M2UNet of He et al., IEEE TMI 2020, Table I)",
        f"- Decision threshold on the probability of severe: {metadata.threshold:.4f}",
        *([f"- Caution carried by every result: {metadata.caution}"] if metadata.caution else []),
        "",
    ]
    if summary:
        lines += ["## What these weights are", "", summary, ""]
    lines += [
        "## Intended use",
        "",
        "Research and demonstration: to run the m2unet-node end to end (lobe segmentation and a severe / "
        "non-severe call for COVID-19 pneumonia in chest CT) and to serve as a starting point for training on local data.",
        "",
        f"**{NOT_CLINICAL}**",
        "",
        "## Training data",
        "",
        metadata.training_data,
        "",
        "## Recipe",
        "",
        f"Preset `{recipe.get('preset', '?')}`. Every setting (also stored in the weights' metadata):",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in sorted(recipe):
        if key == "extra" and not recipe[key]:
            continue
        lines.append(f"| {key} | {recipe[key]} |")
    lines += [
        "",
        "## Preprocessing at inference (from the metadata)",
        "",
        f"Window [{prep.get('window_low')}, {prep.get('window_high')}] HU scaled to [0, 255]; "
        + ("native in-plane resolution" if spacing is None else f"each slice resampled in-plane to {spacing} mm")
        + f"; bags of {prep.get('bag_size')} patches of {prep.get('patch_size')} x {prep.get('patch_size')} "
        "from the body region.",
        "",
        "## Classes",
        "",
    ]
    lines += [f"- {int(k)}: {v}" for k, v in CLASS_NAMES.items()]
    lines += ["", "The lingula (5) is merged into the left upper lobe in the product's five-lobe map.", ""]
    lines += ["## Measured metrics", ""]
    if metadata.metrics:
        lines += _metric_lines(metadata.metrics)
    else:
        lines.append("None measured.")
    lines += [
        "",
        "## Limitations",
        "",
        "- Performance on one population, scanner or protocol says little about another; measure it locally.",
        "- The severity call is a binary severe / non-severe label as in the paper, not a clinical triage decision.",
        "",
    ]
    return "\n".join(lines)
