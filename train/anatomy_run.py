"""Weights from real anatomy: render, fine-tune, measure on held-out chests, ship.

    python -m train.anatomy_run render  --out out/anatomy --per-annotation 3
    python -m train.anatomy_run holdout --out out/anatomy --per-annotation 2 --look 2
    python -m train.anatomy_run fit     --out out/anatomy --minutes 70        # CPU, from the shipped weights
    python -m train.anatomy_run fit     --out out/anatomy --run run-b --epochs 40 --learning-rate 2e-4
    python -m train.anatomy_run measure --out out/anatomy --weights out/anatomy/candidate.pt --name new
    python -m train.anatomy_run measure --out out/anatomy --weights m2unet/weights/m2unet-demo.pt --name shipped
    python -m train.anatomy_run compare --out out/anatomy                      # the two side by side

The data and its held-out sets are :mod:`train.anatomy_data`'s. ``fit`` fine-tunes the shipped
weights with the ``anatomy-cpu`` preset (:data:`train.recipe.ANATOMY_CPU`) on the cached training
cases, taking up cases the renderer adds while it runs, and snapshots the model after each epoch.
``measure`` runs the engine's :class:`m2unet.predictor.Predictor` on native volumes, as the node
does: per-lobe Dice on the held-out anatomy, AUC there, the probability against involvement on
the held-out lesion look (Spearman), and the checks on the real series.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from train.anatomy_data import SEVERE_SHARE, native_cases, new_cases_loader, render_holdout, render_training

WINDOW_HIGH_HELP = ("top of the intensity window in HU (the preset's unless given); render and fit must agree, "
                    "and weights of another window are carried over (train.rewindow)")
SHIPPED = Path(__file__).resolve().parents[1] / "m2unet" / "weights" / "m2unet-demo.pt"


def cmd_render(args) -> int:
    from train.fit import preprocessing_config

    render_training(Path(args.out), args.per_annotation, preprocessing_config(anatomy_recipe(args)), first=args.first,
                    severe_share=args.severe_share, log=lambda m: print(m, flush=True))
    return 0


def anatomy_recipe(args):
    """The ``anatomy-cpu`` preset with the window's top (``--window-high``) given on the command line."""
    from train.recipe import ANATOMY_CPU

    if args.window_high is None:
        return ANATOMY_CPU
    return ANATOMY_CPU.replace(window=(ANATOMY_CPU.window[0], float(args.window_high)))


def cmd_holdout(args) -> int:
    render_holdout(Path(args.out), args.per_annotation, args.look, log=lambda m: print(m, flush=True))
    return 0


def cmd_fit(args) -> int:
    import torch

    from train.fit import fit
    from train.prepared import check_window

    out = Path(args.out)
    load_new = new_cases_loader(out)
    seen: set[str] = set()
    cases = load_new(seen)
    while len(cases) < args.min_cases:
        print(f"waiting for the renderer: {len(cases)} cases", flush=True)
        time.sleep(30)
        cases += load_new(seen)
    changes = {"time_budget_minutes": args.minutes, "init_from": str(args.init_from)}
    if args.epochs:
        changes["epochs"] = args.epochs
    if args.learning_rate:
        changes["learning_rate"] = args.learning_rate
    recipe = anatomy_recipe(args).replace(**changes)
    run = out / args.run_name
    snapshots = run / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(model, record) -> None:
        fresh = load_new(seen)
        check_window(fresh, recipe.window)
        cases.extend(fresh)
        torch.save(model.state_dict(), snapshots / f"epoch-{int(record['epoch']):03d}.pt")
        print(json.dumps({**{k: v for k, v in record.items() if not isinstance(v, (list, dict))},
                          "cases": len(cases), "added": len(fresh)}), flush=True)

    print(f"{len(cases)} cases ({sum(c.severe for c in cases)} severe); {recipe.preset} from {recipe.init_from}", flush=True)
    result = fit(recipe, cases, run, device="cpu", progress=False, checkpoint_minutes=5, on_epoch_end=on_epoch_end)
    info = {"cases": len(cases), "severe": sum(c.severe for c in cases), "steps": result.steps, "history": result.history}
    (run / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


def cmd_export(args) -> int:
    """A snapshot (or the run's last state) as a weights file for measuring or shipping."""
    import torch

    from train.export import export_model, load_run_model

    out = Path(args.out)
    model, recipe = load_run_model(out / args.run_name)
    if args.snapshot:
        model.load_state_dict(torch.load(args.snapshot, map_location="cpu", weights_only=True))
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else {}
    if args.measured:
        metrics = {**card_metrics(json.loads(Path(args.measured).read_text())), **metrics}
    result = export_model(model.eval(), recipe, Path(args.to), version=args.version, training_data=TRAINING_DATA,
                          metrics=metrics, threshold=args.threshold, card_path=Path(args.to).with_suffix(".md"),
                          summary=args.summary, caution=args.caution)
    print(result.weights, result.sha256)
    return 0


TRAINING_DATA = (
    "Synthetic chest CT rendered from 32 real five-lobe annotations (LUNA16 / LIDC-IDRI chests, lobe labels by "
    "Tang et al. 2019, CC BY-NC-SA 4.0; m2unet.phantoms): elastic warps of each real chest with a synthetic body, "
    "vessel trees, five lesion looks (ground glass, consolidation, mixed, nodular, band) and randomised appearance "
    "(tissue HU with and without contrast, kernel, noise, slice thickness 0.625-8 mm); fine-tuned from the 0.2.0 "
    "weights (procedural phantoms), then carried to the window [-1200, 400] HU (train.rewindow) and fine-tuned "
    "there. Eight annotations and the crazy-paving look were held out."
)


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def measure(predictor, out: Path, limit: int | None, log=print) -> dict:
    from m2unet.preprocessing import series_seed
    from train.real_ct import measure_real_ct
    from train.metrics import segmentation_metrics

    result: dict = {}
    for name in ("holdout-anatomy", "holdout-look"):
        rows = []
        for i, case in enumerate(native_cases(out / name)):
            if limit and i >= limit:
                break
            started = time.monotonic()
            prediction = predictor.predict(case["volume"], seed=series_seed(f"m2unet-anatomy:{case['name']}"))
            seg = segmentation_metrics(prediction.lobe_map, case["lobe_map"])
            row = {"case": case["name"], "annotation": case["annotation"], "family": case["family"],
                   "thickness": case["thickness"], "severe": case["severe"], "ct_severity_score": case["score"],
                   "involvement_mean": round(float(np.mean(case["involvement"])), 2),
                   # significant digits, not decimals: the ranks (Spearman) of the many
                   # near-zero probabilities of mild cases survive
                   "probability_severe": float(f"{float(prediction.probability_severe):.4g}"),
                   "seconds": round(time.monotonic() - started, 1), **{k: round(v, 4) for k, v in seg.items()}}
            rows.append(row)
            log(json.dumps(row))
        result[name] = rows
    result["real_ct"] = measure_real_ct(predictor, out)
    log(json.dumps({k: v for k, v in result["real_ct"].items() if k != "centroids_lps_mm"}))
    result["summary"] = summarise(result)
    return result


def summarise(result: dict) -> dict:
    """The figures of a measurement: mean lobe Dice on all held-out anatomy renders and, apart, on
    those whose annotation passes :func:`m2unet.phantoms.annotations.layout_problems` (a render of
    a mislabelled map scores agreement with the mislabelling); AUC; Spearman on the unseen look."""
    from train.anatomy_data import layout_consistent
    from train.metrics import classification_metrics

    anatomy = result["holdout-anatomy"]
    summary: dict = {}
    if anatomy:
        consistent = layout_consistent({r.get("annotation") for r in anatomy})
        kept = [r for r in anatomy if r.get("annotation") in consistent]
        for key in LOBE_KEYS:
            summary[key] = round(float(np.mean([r[key] for r in anatomy])), 4)
        for key in LOBE_KEYS:
            if kept:
                summary[f"{key}_layout_consistent"] = round(float(np.mean([r[key] for r in kept])), 4)
        summary["layout_consistent_cases"] = len(kept)
        labels = [r["severe"] for r in anatomy]
        if 0 < sum(labels) < len(labels):
            metrics = classification_metrics(labels, [r["probability_severe"] for r in anatomy], 0.5)
            summary["auc_holdout_anatomy"] = round(float(metrics["auc"]), 4)
    look = result.get("holdout-look", [])
    if look:
        summary["spearman_probability_vs_score_crazy_paving"] = round(
            _spearman([r["ct_severity_score"] for r in look], [r["probability_severe"] for r in look]), 4)
        labels = [r["severe"] for r in look]
        if 0 < sum(labels) < len(labels):
            summary["auc_crazy_paving"] = round(float(classification_metrics(labels, [r["probability_severe"] for r in look], 0.5)["auc"]), 4)
    return summary


def worst_lobe(rows: list[dict]) -> float:
    """The lowest lobe Dice of any lobe in any of the renders."""
    return round(float(min(min(r[k] for k in LOBE_KEYS[1:]) for r in rows)), 4)


def card_metrics(result: dict) -> dict:
    """The model card's figures from one ``measure`` result (``OUT/measured-NAME.json``), so that
    no figure on a shipped card is typed by hand."""
    summary = summarise(result)
    real = result["real_ct"]
    anatomy, look = result["holdout-anatomy"], result.get("holdout-look", [])
    metrics: dict = {"holdout_anatomy_cases": len(anatomy)}
    for suffix in ("", "_layout_consistent"):
        for key in LOBE_KEYS:
            if key + suffix in summary:
                metrics[f"holdout_anatomy_{key}{suffix}"] = summary[key + suffix]
    metrics["holdout_anatomy_layout_consistent_cases"] = summary.get("layout_consistent_cases", 0)
    if anatomy:
        metrics["holdout_anatomy_worst_lobe_case"] = worst_lobe(anatomy)
    if "auc_holdout_anatomy" in summary:
        metrics["holdout_anatomy_auc"] = summary["auc_holdout_anatomy"]
    metrics["holdout_look_crazy_paving_cases"] = len(look)
    if "auc_crazy_paving" in summary:
        metrics["crazy_paving_auc"] = summary["auc_crazy_paving"]
    if "spearman_probability_vs_score_crazy_paving" in summary:
        metrics["crazy_paving_spearman_probability_vs_ct_severity_score"] = summary[
            "spearman_probability_vs_score_crazy_paving"]
    metrics.update({
        "real_ct_lobe_union_dice_vs_hu_lung_mask": real["lobe_union_dice_vs_hu_lung_mask"],
        "real_ct_network_union_dice": real["network_union_dice_vs_hu_lung_mask"],
        "real_ct_anatomy_checks_pass": bool(real["all_pass"]),
        "real_ct_probability_severe": real["probability_severe"],
        "real_ct_lobe_volumes_ml": real["lobe_volumes_ml"],
    })
    return metrics


def cmd_measure(args) -> int:
    import torch

    from m2unet.predictor import Predictor

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    predictor = Predictor.from_weights(Path(args.weights), device="cpu")
    result = {"weights": str(args.weights), **measure(predictor, out, args.limit)}
    (out / f"measured-{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"]), flush=True)
    return 0


LOBE_KEYS = ("dsc", "dsc_right_upper", "dsc_right_middle", "dsc_right_lower", "dsc_left_upper", "dsc_left_lower")


def compare(results: dict[str, dict]) -> dict:
    """Mean lobe Dice per measured weights on the held-out anatomy cases they all scored, and the
    summary figures of each (recomputed: older files predate some of them)."""
    common = set.intersection(*({r["case"] for r in data["holdout-anatomy"]} for data in results.values()))
    table = {}
    for name, data in results.items():
        rows = [r for r in data["holdout-anatomy"] if r["case"] in common]
        table[name] = {key: round(float(np.mean([r[key] for r in rows])), 4) for key in LOBE_KEYS}
        table[name]["summary"] = summarise(data)
        table[name]["worst_lobe_case"] = worst_lobe(rows)
        table[name]["real_ct_checks_pass"] = data["real_ct"]["all_pass"]
        table[name]["real_ct_probability_severe"] = data["real_ct"]["probability_severe"]
    return {"cases": len(common), "mean": table}


def cmd_compare(args) -> int:
    out = Path(args.out)
    results = {p.stem.removeprefix("measured-"): json.loads(p.read_text()) for p in sorted(out.glob("measured-*.json"))}
    print(json.dumps(compare(results), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.anatomy_run", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="render training cases into OUT/cache")
    p.add_argument("--out", required=True)
    p.add_argument("--per-annotation", type=int, default=3)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--window-high", type=float, help=WINDOW_HIGH_HELP)
    p.add_argument("--severe-share", type=float, default=SEVERE_SHARE,
                   help=f"share of the cases forced severe (default {SEVERE_SHARE})")
    p.set_defaults(run=cmd_render)
    p = sub.add_parser("holdout", help="render the held-out anatomy and look sets")
    p.add_argument("--out", required=True)
    p.add_argument("--per-annotation", type=int, default=2)
    p.add_argument("--look", type=int, default=2)
    p.set_defaults(run=cmd_holdout)
    p = sub.add_parser("fit", help="fine-tune on the cached cases (CPU)")
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=70.0)
    p.add_argument("--min-cases", type=int, default=32)
    p.add_argument("--init-from", default=str(SHIPPED))
    p.add_argument("--run", dest="run_name", default="run", help="run folder under OUT (a new one for a new recipe)")
    p.add_argument("--epochs", type=int, help="epochs of 100 steps (the preset's 20 unless given)")
    p.add_argument("--learning-rate", type=float, help="peak learning rate (the preset's 4e-4 unless given)")
    p.add_argument("--window-high", type=float, help=WINDOW_HIGH_HELP)
    p.set_defaults(run=cmd_fit)
    p = sub.add_parser("export", help="a run snapshot as a weights file")
    p.add_argument("--out", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--run", dest="run_name", default="run", help="run folder under OUT")
    p.add_argument("--snapshot")
    p.add_argument("--version", default="candidate")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--metrics", help="a JSON file of measured figures for the card")
    p.add_argument("--measured", help="a measure result (OUT/measured-NAME.json) whose figures go on the card "
                                      "(--metrics, when also given, adds to them and wins)")
    p.add_argument("--summary")
    p.add_argument("--caution", default="")
    p.set_defaults(run=cmd_export)
    p = sub.add_parser("measure", help="score weights on the held-out sets and the real series")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(run=cmd_measure)
    p = sub.add_parser("compare", help="measured weights side by side on the common held-out cases")
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_compare)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
