"""``m2unet-train``: synthetic phantoms, training, cross-validation and export of M2UNet weights.

    m2unet-train phantoms OUT_DIR --count 20            # NIfTI (or --format dicom) + labels.csv
    m2unet-train fit --labels labels.csv --out runs/a   # the paper's recipe (--preset, --set k=v)
    m2unet-train cv --labels labels.csv --out runs/cv   # five-fold CV, report.md + roc.png
    m2unet-train export runs/a --out weights.pt --version 1.0.0

Multi-GPU or multi-node: ``torchrun --nproc-per-node N -m train.cli fit ...``.
A thin front: parsing here, the work in :mod:`train`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from train.recipe import PRESETS, Recipe, preset

EXIT_BAD_INPUT = 2


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_recipe(args: argparse.Namespace) -> Recipe:
    recipe = Recipe.load(args.recipe) if args.recipe else preset(args.preset)
    changes = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        changes[key.strip()] = _value(value.strip())
    if changes:
        data = recipe.to_dict()
        unknown = sorted(set(changes) - set(data))
        if unknown:
            raise ValueError(f"--set: unknown recipe settings {unknown}")
        data.update(changes)
        recipe = Recipe.from_dict(data)
    return recipe


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, type=Path, help="CSV with columns case,label[,mask] (see train.dataset)")
    parser.add_argument("--root", type=Path, help="folder the CSV's paths are relative to (default: the CSV's folder)")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="recipe preset (default: paper)")
    parser.add_argument("--recipe", type=Path, help="a recipe.json to start from instead of a preset")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="change one recipe setting (repeatable)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load_dataset(args, recipe):
    from train.dataset import load_cases, read_label_table
    from train.fit import preprocessing_config

    records = read_label_table(args.labels, args.root)
    cases = load_cases(records, preprocessing_config(recipe))
    return records, cases


def _training_data_description(records, cases) -> str:
    severe = sum(c.severe for c in cases)
    masks = sum(c.has_mask for c in cases)
    source = records[0].source if records else "?"
    return (
        f"{len(cases)} cases listed in {source.name} ({severe} severe, {len(cases) - severe} non-severe; "
        f"{masks} with lobe masks)"
    )


def cmd_phantoms(args) -> int:
    from train.phantoms import write_phantom_dataset

    csv_path = write_phantom_dataset(
        args.out,
        count=args.count,
        seed=args.seed,
        fmt=args.format,
        shape=tuple(args.shape) if args.shape else None,
        spacing=tuple(args.spacing) if args.spacing else None,
    )
    print(csv_path)
    return 0


def cmd_fit(args) -> int:
    import torch

    from train.cv import inner_split
    from train.distributed import device_for, init_distributed, shutdown
    from train.evaluate import score_cases, summarize
    from train.export import METRICS, RUN_INFO
    from train.fit import fit, preprocessing_config
    from train.metrics import best_threshold

    recipe = build_recipe(args)
    records, cases = _load_dataset(args, recipe)  # every bad input stops here, before training
    world = init_distributed(args.device)
    device = device_for(world, args.device)
    validation = None
    train_cases = cases
    if args.validate:
        severe = [c.severe for c in cases]
        train_idx, select_idx = inner_split(list(range(len(cases))), severe, recipe.validation_fraction, recipe.seed)
        train_cases, validation = [cases[i] for i in train_idx], [cases[i] for i in select_idx]
    inference = preprocessing_config(recipe, inference=True)
    try:
        result = fit(
            recipe,
            train_cases,
            args.out,
            validation=validation,
            validate=(lambda m, c, r: summarize(score_cases(m, c, inference))) if validation else None,
            device=device,
            world=world,
            progress=not args.no_progress,
        )
        if world.is_main:
            out = Path(args.out)
            info = {
                "training_data": _training_data_description(records, train_cases),
                "labels_csv": str(args.labels),
                "cases": len(train_cases),
                "selection_cases": len(validation or []),
                "world_size": world.world_size,
                "device": str(device),
                "torch": torch.__version__,
                "steps": result.steps,
            }
            (out / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
            if validation:
                scores = score_cases(result.model, validation, inference)
                probabilities = [s.probability_severe for s in scores if s.probability_severe is not None]
                threshold = best_threshold([s.severe for s in scores], probabilities) if probabilities else 0.5
                metrics = summarize(scores, threshold)
                metrics.update(threshold=threshold, measured_on=f"inner selection split, {len(validation)} cases")
                (out / METRICS).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
            print(json.dumps({"out": str(out), "steps": result.steps, "last": result.history[-1] if result.history else None}))
    finally:
        shutdown(world)
    return 0


def cmd_cv(args) -> int:
    from train.cv import cross_validate
    from train.distributed import device_for, init_distributed, shutdown
    from train.report import write_report

    recipe = build_recipe(args)
    _, cases = _load_dataset(args, recipe)
    variants = ("m2unet", "cls_only", "seg_only") if args.ablation else (recipe.variant,)
    world = init_distributed(args.device)
    try:
        cv = cross_validate(
            recipe,
            cases,
            args.out,
            folds=args.folds,
            variants=variants,
            device=device_for(world, args.device),
            world=world,
            progress=not args.no_progress,
        )
        if world.is_main:
            data = write_report(cv, args.out)
            print(json.dumps({"report": str(Path(args.out) / "report.md"), "classification": data["classification"],
                              "segmentation": data["segmentation"]}))
    finally:
        shutdown(world)
    return 0


def cmd_export(args) -> int:
    from train.export import export_run

    result = export_run(
        args.run,
        args.out,
        version=args.version,
        card_path=args.card,
        training_data=args.training_data,
        threshold=args.threshold,
        float16=not args.float32,
        caution=args.caution,
    )
    print(json.dumps({"weights": str(result.weights), "card": str(result.card), "sha256": result.sha256,
                      "bytes": result.size_bytes}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m2unet-train", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantoms", help="write synthetic chest CT cases, lobe masks and labels.csv",
                       description="Write synthetic chest CT phantoms (m2unet.phantom) with lobe masks and a labels.csv.")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--count", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="first seed; case k uses seed + k (default 0)")
    p.add_argument("--format", choices=("nifti", "dicom"), default="nifti", help="image format (default nifti)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="voxel grid (default: varied like the paper's data)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="voxel spacing in mm")
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("fit", help="train on a labelled dataset", description="Train M2UNet on the cases of a label CSV.")
    _add_data_arguments(p)
    p.add_argument("--out", required=True, type=Path, help="run folder: recipe.json, checkpoint.pt (resumes if present)")
    p.add_argument("--validate", action="store_true",
                   help="hold out the recipe's validation_fraction as an inner split: epoch selection and threshold")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("cv", help="five-fold cross-validation and the paper's tables",
                       description="Cross-validate with an inner selection split; writes report.md, report.json, roc.png.")
    _add_data_arguments(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (one run folder per variant and fold)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--ablation", action="store_true", help="also train Cls. Only and Seg. Only on the same folds")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("export", help="write deployable weights and their model card",
                       description="Export a run folder's model as an m2unet weights file with a MODEL_CARD.md.")
    p.add_argument("run", type=Path, help="training run folder (from fit)")
    p.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    p.add_argument("--version", required=True, help="model version written to the metadata")
    p.add_argument("--card", type=Path, help="model card path (default: MODEL_CARD.md beside the weights)")
    p.add_argument("--training-data", help="description of the training data (default: from run.json)")
    p.add_argument("--threshold", type=float, help="decision threshold (default: metrics.json's or the recipe's)")
    p.add_argument("--float32", action="store_true", help="store float32 instead of float16")
    p.add_argument("--caution", default="",
                   help="a warning every result made with these weights carries: the node marks their series "
                        "'NOT FOR CLINICAL USE' and prints it on the summary image (e.g. for weights not yet "
                        "validated locally); default none")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"m2unet-train {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
