"""What the demo weights' model card says: how they were trained, measured, and what not to trust.

:func:`plain_summary` is the card's opening paragraph (the run's story from its ``run.json`` and
recipe, then each measured figure against its target); :data:`HOW_MEASURED` says how the figures
were obtained; :data:`DEMO_CAUTION` is the warning every result made with the weights carries.
"""

from __future__ import annotations

import json
from pathlib import Path

from train.demo_phantoms import SELECTION_SEEDS_START, TEST_SEEDS_START
from train.recipe import Recipe

DEMO_CAUTION = "Demo weights, synthetic training only: not for clinical use"

HOW_MEASURED = (
    "with m2unet.predictor.Predictor (CPU, float32, 3 bags, lobe clean-up) on native volumes that training never "
    f"saw: test phantoms (seeds from {TEST_SEEDS_START}, the generator's own prevalence, slice spacing 2.5-7.5 mm), "
    f"decision threshold by Youden's J on other phantoms (seeds from {SELECTION_SEEDS_START}); the real series "
    "(64 slices of 5 mm): union of the five lobes against the plain HU lung mask of m2unet.lungs (Dice), and "
    "lobe centroids in LPS (right lobes at smaller x, upper lobes at larger z, middle lobe at smaller y than "
    "the right lower lobe)"
)


def _verdict(value, target: float) -> str:
    if value is None:
        return "not measured"
    return f"{value:.3f} ({'meets' if value >= target else 'below'} the target of {target})"


def training_story(run_dir: Path) -> str:
    """What the run in ``run_dir`` did, in a sentence or two, from its ``run.json`` and recipe."""
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    recipe = Recipe.load(run_dir / "recipe.json")
    history = run.get("history", [])
    minutes = run.get("minutes") or sum(h.get("seconds", 0.0) for h in history) / 60.0
    where = run.get("device") or "one shared CPU core"
    augmentation = []
    if recipe.intensity_jitter_hu:
        augmentation.append(f"intensity jitter of {recipe.intensity_jitter_hu:g} HU")
    if recipe.scale_jitter:
        augmentation.append(f"zoom of +/-{100 * recipe.scale_jitter:g} %")
    if recipe.rotation_jitter_deg:
        augmentation.append(f"rotation of +/-{recipe.rotation_jitter_deg:g} degrees")
    story = (
        f"Trained for {minutes:.0f} minutes on {where} ({run.get('steps', '?')} steps of {recipe.bags_per_step} "
        f"bag{'s' if recipe.bags_per_step > 1 else ''} of {recipe.bag_size} patches of {recipe.patch_size} x "
        f"{recipe.patch_size} pixels at {recipe.in_plane_spacing_mm} mm, preset `{recipe.preset}`, {recipe.optimizer} "
        f"from a learning rate of {recipe.learning_rate:g} with poly decay over the time budget, segmentation and "
        "classification together"
        + (f"; {', '.join(augmentation)}" if augmentation else "")
        + f") on {run.get('cases', '?')} synthetic phantoms only - a small fraction of the paper's 100 epochs over 666 "
        "real scans."
    )
    if "stage2_classifier_head" in recipe.extra:
        head = recipe.extra["stage2_classifier_head"]
        story += (f" Then the classification sub-network was trained alone on the frozen encoder's features "
                  f"({head['steps']} steps of {head['bags_per_step']} bags, half severe; train.head).")
    return story


def plain_summary(run_dir: Path, summary: dict) -> str:
    """A paragraph that says what the weights are and how they measured against their targets."""
    held = summary.get("held_out_phantoms", {})
    real = summary.get("real_ct", {})
    checks = real.get("checks", {})
    failed = [k.replace("_", " ") for k, ok in checks.items() if not ok]
    anatomy = ("all anatomical checks pass (right lobes on the patient's right, upper lobes above lower, middle lobe "
               "anterior)" if checks and not failed else
               ("anatomical checks failed: " + ", ".join(failed) if failed else "anatomical checks not measured"))
    volumes = real.get("lobe_volumes_ml") or {}
    volume_text = ""
    if volumes:
        listed = ", ".join(f"{name.replace('_', ' ')} {ml:.0f} mL" for name, ml in volumes.items())
        volume_text = (f" The lobe volumes there ({listed}) are not a real chest's: the lobes' order is right but "
                       "their borders follow the synthetic anatomy, so lobe-wise figures on real CT mean little.")
    return (
        "Demo weights, so that the node runs end to end without patient data. "
        + training_story(run_dir)
        + f" Measured on {held.get('cases', 0)} held-out phantoms: AUC {_verdict(held.get('auc'), 0.95)}, mean lobe DSC "
        f"{_verdict(held.get('dsc'), 0.9)}. On the one real series available: union of the five lobes against the HU "
        f"lung mask, Dice {_verdict(real.get('lobe_union_dice_vs_hu_lung_mask'), 0.85)} after the predictor's clean-up "
        f"(islands and enclosed cavities), {_verdict(real.get('network_union_dice_vs_hu_lung_mask'), 0.85)} for the "
        f"network's own foreground; {anatomy}.{volume_text} The severity output on real CT means nothing: the "
        "classifier has only seen synthetic findings. Train and validate on local data before drawing any conclusion "
        "from either output."
    )
