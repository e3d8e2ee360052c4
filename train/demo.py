"""The shipped demo weights: how they are trained on a CPU core, measured and exported.

The shipped 0.2.0 weights were trained on a lent GPU instead (:mod:`train.demo_device`, whose
snapshots unpack into run folders that ``measure --run`` and ``ship --run`` take; see
``docs/demo-weights.md``). The CPU route, for a machine without one:

    python -m train.demo cache   --out out/demo-train --first 0 --count 80   # phantoms -> .npz
    python -m train.demo holdout --out out/demo-train --selection 10 --test 20
    python -m train.demo fit     --out out/demo-train                         # cpu-demo, time budget
    python -m train.demo measure --out out/demo-train --name a --real --selection 10
    python -m train.demo measure --out out/demo-train --name b --test 20     # side by side
    python -m train.demo ship    --out out/demo-train --version 0.1.0         # m2unet/weights/

This module is the route's commands; each idea lives in its own module:

* the phantoms (:mod:`train.demo_phantoms`): a fixed training set prepared once on the 2 mm grid
  of the ``cpu-demo`` preset (:data:`train.recipe.CPU_DEMO`) and cached as ``.npz``, two in five
  drawn severe, each with its own spacing, anatomy, findings and scanner; and held-out selection
  and test sets whose seeds training never sees;
* stage 2 (``head``): the classification sub-network trained alone on stage 1's frozen encoder
  (:mod:`train.head`);
* measurement (:mod:`train.measurements`) through the engine's :class:`m2unet.predictor.Predictor`
  on native volumes, exactly as the node runs: the held-out phantoms (the selection set fixes the
  decision threshold, the test set is only scored), and the real series in
  ``../shared/data/real-ct`` (:mod:`train.real_ct`: the union of the lobes against the plain HU
  lung mask of :mod:`m2unet.lungs`, and where the lobes sit, :mod:`train.lobe_anatomy`). Results go
  to ``OUT/measured-*.json`` (merged into ``OUT/measured-summary.json`` and the model card,
  :mod:`train.demo_card`) and ``OUT/real-ct-overlay.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from train.demo_card import DEMO_CAUTION, HOW_MEASURED, plain_summary
from train.demo_phantoms import (
    SELECTION_SEEDS_START,
    TEST_SEEDS_START,
    TRAIN_SEEDS_START,
    cache_phantoms,
    load_cache,
    render_holdout,
    training_data_description,
)
from train.measurements import export_candidate, score_phantoms, summarize_measurements
from train.real_ct import measure_real_ct
from train.recipe import CPU_DEMO, Recipe


def demo_recipe(epochs: int, steps_per_epoch: int, **changes) -> Recipe:
    return CPU_DEMO.replace(epochs=epochs, steps_per_epoch=steps_per_epoch, **changes)


# -- cache ----------------------------------------------------------------------------------------


def cmd_cache(args) -> int:
    cache_phantoms(Path(args.out), args.first, args.count)
    return 0


# -- fit ------------------------------------------------------------------------------------------


def cmd_fit(args) -> int:
    from train.fit import fit

    out = Path(args.out)
    cases = load_cache(out, args.limit)
    changes = json.loads(args.changes) if args.changes else {}
    recipe = demo_recipe(args.epochs, args.steps_per_epoch, **changes)
    run_dir = out / "run"
    severe = sum(c.severe for c in cases)
    print(f"{len(cases)} cached phantoms ({severe} severe); recipe {recipe.preset}: "
          f"{recipe.epochs} x {recipe.steps_per_epoch} steps of {recipe.bag_size} patches", flush=True)
    result = fit(recipe, cases, run_dir, device="cpu", progress=not args.no_progress, checkpoint_minutes=5)
    info = {
        "training_data": training_data_description(cases),
        "cases": len(cases),
        "severe": severe,
        "steps": result.steps,
        "history": result.history,
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


# -- head -----------------------------------------------------------------------------------------

HEAD_SETTINGS = {"bags_per_case": 8, "bag_size": 12, "steps": 300, "bags_per_step": 8, "learning_rate": 1e-3,
                 "weight_decay": 1e-4, "poly_power": 0.75, "optimizer": "adamw"}


def cmd_head(args) -> int:
    """Stage 2: the classification sub-network trained alone on stage 1's frozen encoder
    (:mod:`train.head`); writes the final run folder ``OUT/run-head``."""
    import torch

    from train.export import load_run_model
    from train.fit import CHECKPOINT, RECIPE, preprocessing_config
    from train.head import encoder_features, fit_classifier_head

    out = Path(args.out)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, recipe = load_run_model(out / "run")
    cases = load_cache(out)
    started = time.monotonic()
    config = preprocessing_config(recipe, inference=True)
    features = encoder_features(model, cases, config, HEAD_SETTINGS["bags_per_case"], HEAD_SETTINGS["bag_size"])
    losses = fit_classifier_head(model, features, steps=HEAD_SETTINGS["steps"], bags_per_step=HEAD_SETTINGS["bags_per_step"],
                                 learning_rate=HEAD_SETTINGS["learning_rate"], weight_decay=HEAD_SETTINGS["weight_decay"])
    seconds = time.monotonic() - started
    final = recipe.replace(extra={"stage2_classifier_head": {
        **HEAD_SETTINGS,
        "what": "classification sub-network (embedding-level MIL, image-level MIL, classifier) trained alone on the "
                "frozen stage-1 encoder's block-5 outputs of bags drawn as the predictor draws them (train.head)",
    }})
    run = out / "run-head"
    run.mkdir(parents=True, exist_ok=True)
    final.save(run / RECIPE)
    torch.save({"model": model.state_dict(), "recipe": final.to_dict(), "epoch": final.epochs, "step": 0,
                "history": [], "head_losses": losses}, run / CHECKPOINT)
    stage1 = json.loads((out / "run" / "run.json").read_text()) if (out / "run" / "run.json").exists() else {}
    info = {**stage1, "stage2": {"seconds": round(seconds, 1), "first_loss": float(np.mean(losses[:20])),
                                 "last_loss": float(np.mean(losses[-20:]))}}
    (run / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info["stage2"]), flush=True)
    return 0


# -- measure --------------------------------------------------------------------------------------


def cmd_holdout(args) -> int:
    """Render held-out phantoms ahead of measurement (native volumes, natural prevalence)."""
    render_holdout(Path(args.out), args.selection, args.test)
    return 0


def cmd_measure(args) -> int:
    """Score the run's model through the predictor; several of these may run side by side on
    disjoint seed ranges, each writing its own JSON (``ship`` merges them)."""
    import torch

    from m2unet.predictor import Predictor

    out = Path(args.out)
    torch.set_num_threads(args.threads)
    weights = export_candidate(out, "candidate", name=f"candidate-{args.name}", run=args.run)
    predictor = Predictor.from_weights(weights, device="cpu")
    result: dict = {"weights": str(weights)}
    if args.real:
        result["real_ct"] = measure_real_ct(predictor, out)
        print(json.dumps({k: v for k, v in result["real_ct"].items() if k != "centroids_lps_mm"}), flush=True)
    if args.selection:
        seeds = range(SELECTION_SEEDS_START + args.offset, SELECTION_SEEDS_START + args.offset + args.selection)
        result["selection"] = score_phantoms(predictor, list(seeds), out)
    if args.test:
        seeds = range(TEST_SEEDS_START + args.offset, TEST_SEEDS_START + args.offset + args.test)
        result["test"] = score_phantoms(predictor, list(seeds), out)
    (out / f"measured-{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


# -- ship -----------------------------------------------------------------------------------------


def cmd_ship(args) -> int:
    from m2unet.weights import default_weights_path
    from train.export import export_run

    out = Path(args.out)
    files = sorted(out.glob("measured-*.json"))
    summary = summarize_measurements(files)
    threshold = summary.pop("threshold")
    metrics = {"how_measured": HOW_MEASURED, **summary}
    (out / "measured-summary.json").write_text(json.dumps(metrics, indent=2) + "\n")
    target = Path(args.weights) if args.weights else default_weights_path()
    result = export_run(out / args.run, target, version=args.version, threshold=threshold, metrics=metrics,
                        card_path=target.parent / "MODEL_CARD.md", summary=plain_summary(out / args.run, summary),
                        caution=DEMO_CAUTION)
    print(json.dumps({"weights": str(result.weights), "bytes": result.size_bytes, "sha256": result.sha256,
                      "threshold": threshold}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cache", help="generate and prepare the training phantoms")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--first", type=int, default=TRAIN_SEEDS_START)
    p.add_argument("--count", type=int, default=80)
    p.set_defaults(func=cmd_cache)
    p = sub.add_parser("holdout", help="render the held-out phantoms (selection and test) ahead of measuring")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--selection", type=int, default=16)
    p.add_argument("--test", type=int, default=24)
    p.set_defaults(func=cmd_holdout)
    p = sub.add_parser("fit", help="train the cpu-demo recipe on the cached phantoms")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=CPU_DEMO.epochs)
    p.add_argument("--steps-per-epoch", type=int, default=CPU_DEMO.steps_per_epoch)
    p.add_argument("--limit", type=int)
    p.add_argument("--changes", help="JSON object of recipe changes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("head", help="stage 2: train the classifier head on the frozen stage-1 encoder")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_head)
    p = sub.add_parser("measure", help="score the current run through the predictor")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", required=True, help="writes OUT/measured-NAME.json")
    p.add_argument("--selection", type=int, default=0, help="selection phantoms (threshold)")
    p.add_argument("--test", type=int, default=0, help="held-out test phantoms")
    p.add_argument("--offset", type=int, default=0, help="first seed offset (to split the work between processes)")
    p.add_argument("--real", action="store_true", help="the real series")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run", default="run-head", help="run folder under OUT (default run-head)")
    p.set_defaults(func=cmd_measure)
    p = sub.add_parser("ship", help="merge OUT/measured-*.json and export the run to the shipped weights")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--weights", type=Path, help="target (default: the shipped weights path)")
    p.add_argument("--run", default="run-head", help="run folder under OUT (default run-head)")
    p.set_defaults(func=cmd_ship)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
