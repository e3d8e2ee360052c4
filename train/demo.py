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

The training set is a fixed set of phantoms (:mod:`m2unet.phantom`) prepared once on the 2 mm grid
of the ``cpu-demo`` preset (:data:`train.recipe.CPU_DEMO`) and cached as ``.npz``; two in five are
drawn severe (the generator's ``severity`` argument) so that the short run sees enough of both
classes. Each phantom gets its own in-plane spacing (0.586-0.984 mm) and slice spacing (1-7.5 mm),
its own anatomy, findings and scanner. Measurement goes through the engine's
:class:`m2unet.predictor.Predictor` on native volumes, exactly as the node runs: phantoms whose seeds
the training never saw (a selection set that fixes the decision threshold, and a test set that is
only scored), and the real series in ``../shared/data/real-ct`` (the union of the lobes against the
plain HU lung mask of :mod:`m2unet.lungs`, and where the lobes sit). Results go to
``OUT/measured-*.json`` (merged into ``OUT/measured-summary.json`` and the model card) and
``OUT/real-ct-overlay.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from train.recipe import CPU_DEMO, Recipe

TRAIN_SEEDS_START = 0
SELECTION_SEEDS_START = 500_000
TEST_SEEDS_START = 900_000
SLICE_SPACINGS_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5)
REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct"


def phantom_grid(seed: int) -> tuple[float, float, float]:
    """The spacing (x, y, z) of a demo phantom: varied, but never the 0.4 mm x 700-slice extreme
    (which costs minutes to render and teaches a 2-D network nothing the 1 mm slices do not)."""
    rng = np.random.default_rng([seed, 0xD3])
    in_plane = float(rng.uniform(0.586, 0.984))
    return in_plane, in_plane, float(rng.choice(SLICE_SPACINGS_MM))


HOLDOUT_SLICE_SPACINGS_MM = (2.5, 3.0, 5.0, 7.5)


def holdout_grid(seed: int) -> tuple[float, float, float]:
    """The spacing of a held-out phantom: in-plane as in training, slices 2.5-7.5 mm apart (a
    sub-range of training's, which bounds the measuring time on a shared CPU)."""
    rng = np.random.default_rng([seed, 0xD4])
    in_plane = float(rng.uniform(0.586, 0.984))
    return in_plane, in_plane, float(rng.choice(HOLDOUT_SLICE_SPACINGS_MM))


def phantom_severity(seed: int, severe_share: float = 0.4) -> str:
    rng = np.random.default_rng([seed, 0x5E])
    return "severe" if rng.random() < severe_share else "non-severe"


def make_demo_phantom(seed: int, *, forced: bool):
    """A training phantom (``forced``: severity drawn two in five severe) or a held-out one (the
    generator's own prevalence, about one in five severe)."""
    from m2unet.phantom import make_phantom

    if forced:
        return make_phantom(seed, spacing=phantom_grid(seed), severity=phantom_severity(seed))
    return make_phantom(seed, spacing=holdout_grid(seed))


def demo_recipe(epochs: int, steps_per_epoch: int, **changes) -> Recipe:
    return CPU_DEMO.replace(epochs=epochs, steps_per_epoch=steps_per_epoch, **changes)


# -- cache ----------------------------------------------------------------------------------------


def cmd_cache(args) -> int:
    from train.fit import preprocessing_config
    from train.prepared import prepare_case, save_prepared

    config = preprocessing_config(CPU_DEMO)
    folder = Path(args.out) / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(args.first, args.first + args.count):
        path = folder / f"phantom{seed:06d}.npz"
        if path.exists():
            continue
        started = time.monotonic()
        phantom = make_demo_phantom(seed, forced=True)
        case = prepare_case(f"phantom{seed:06d}", phantom.volume, phantom.class_map, phantom.severe, config)
        save_prepared(case, path)
        print(f"seed {seed} {phantom.severity} {phantom.volume.shape} -> {case.image.shape} "
              f"{time.monotonic() - started:.1f}s", flush=True)
    return 0


def load_cache(out: Path, limit: int | None = None):
    from train.prepared import load_prepared

    paths = sorted((out / "cache").glob("phantom*.npz"))
    if limit:
        paths = paths[:limit]
    if not paths:
        raise ValueError(f"{out / 'cache'}: no cached phantoms; run 'python -m train.demo cache' first")
    return [load_prepared(p) for p in paths]


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


def training_data_description(cases) -> str:
    severe = sum(c.severe for c in cases)
    return (
        f"Synthetic chest CT phantoms only (m2unet.phantom), no patient data: {len(cases)} cases "
        f"({severe} severe by the phantom's rule, CT severity score >= 18 of 25; {len(cases) - severe} "
        "non-severe), every case with the 7-class lobe map; in-plane spacing 0.586-0.984 mm, slice spacing "
        "1-7.5 mm, varied anatomy, ground-glass and consolidation findings and five synthetic scanner profiles."
    )


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


def _export_candidate(out: Path, version: str, name: str = "candidate", run: str = "run-head") -> Path:
    """The run's current model as a weights file (threshold 0.5) for measuring."""
    from train.export import export_run

    run_info = out / run / "run.json"
    description = (json.loads(run_info.read_text())["training_data"] if run_info.exists()
                   else "synthetic phantoms (training in progress)")
    path = out / f"{name}.pt"
    export_run(out / run, path, version=version, card_path=out / f"{name}.md", training_data=description,
               threshold=0.5, metrics={})
    return path


def _holdout_path(out: Path, seed: int) -> Path:
    return out / "holdout" / f"phantom{seed:06d}.npz"


def cmd_holdout(args) -> int:
    """Render held-out phantoms ahead of measurement (native volumes, natural prevalence)."""
    out = Path(args.out)
    for seed in list(range(SELECTION_SEEDS_START, SELECTION_SEEDS_START + args.selection)) + list(
        range(TEST_SEEDS_START, TEST_SEEDS_START + args.test)
    ):
        path = _holdout_path(out, seed)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        p = make_demo_phantom(seed, forced=False)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, hu=p.volume.hu, spacing=np.array(p.volume.spacing), origin=np.array(p.volume.origin),
                 direction=np.array(p.volume.direction), class_map=p.class_map, severe=np.array(p.severe),
                 score=np.array(p.ct_severity_score))
        tmp.replace(path)
        print(f"holdout {seed} {p.severity} {p.volume.shape}", flush=True)
    return 0


def _holdout_phantom(out: Path, seed: int) -> dict:
    from m2unet.labels import to_lobe_map
    from m2unet.volume import Volume

    path = _holdout_path(out, seed)
    if path.exists():
        with np.load(path) as d:
            volume = Volume(hu=d["hu"], spacing=tuple(d["spacing"]), origin=tuple(d["origin"]), direction=tuple(d["direction"]))
            return {"volume": volume, "lobe_map": to_lobe_map(d["class_map"]), "severe": bool(d["severe"]),
                    "score": int(d["score"])}
    p = make_demo_phantom(seed, forced=False)
    return {"volume": p.volume, "lobe_map": p.lobe_map, "severe": bool(p.severe), "score": int(p.ct_severity_score)}


def score_phantoms(predictor, seeds: list[int], out: Path, log=print) -> list[dict]:
    from m2unet.preprocessing import series_seed
    from train.metrics import segmentation_metrics

    rows = []
    for seed in seeds:
        phantom = _holdout_phantom(out, seed)
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


def lobe_anatomy(lobe_map: np.ndarray, volume) -> dict:
    """Centroids of each lobe in patient coordinates (LPS mm) and the anatomical checks."""
    from m2unet.labels import Lobe

    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    spacing = np.asarray(volume.spacing, dtype=float)
    origin = np.asarray(volume.origin, dtype=float)
    centroids = {}
    for lobe in Lobe:
        zyx = np.argwhere(lobe_map == int(lobe))
        if not len(zyx):
            continue
        index_xyz = zyx[:, ::-1].mean(axis=0)
        centroids[lobe.name.lower()] = (origin + direction @ (index_xyz * spacing)).round(1).tolist()
    c = {k: np.asarray(v) for k, v in centroids.items()}
    checks = {}
    if all(k in c for k in ("right_upper", "right_middle", "right_lower", "left_upper", "left_lower")):
        right_x = max(c["right_upper"][0], c["right_middle"][0], c["right_lower"][0])
        left_x = min(c["left_upper"][0], c["left_lower"][0])
        checks["right_lobes_on_patient_right"] = bool(right_x < left_x)  # LPS: +x is the patient's left
        checks["right_upper_above_right_lower"] = bool(c["right_upper"][2] > c["right_lower"][2])  # +z head
        checks["left_upper_above_left_lower"] = bool(c["left_upper"][2] > c["left_lower"][2])
        checks["middle_lobe_anterior"] = bool(c["right_middle"][1] < c["right_lower"][1])  # LPS: -y anterior
    return {"centroids_lps_mm": centroids, "checks": checks, "all_pass": bool(checks) and all(checks.values())}


def measure_real_ct(predictor, out: Path, folder: Path = REAL_CT) -> dict:
    from m2unet.labels import Lobe
    from m2unet.lungs import lung_mask
    from m2unet.preprocessing import series_seed
    from train.dicom_series import read_dicom_series
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
        # the network's own foreground before the predictor's clean-up (which keeps lobes inside the lung mask)
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


def overlay_png(volume, lobe_map: np.ndarray, path: Path) -> Path:
    """Two slices (upper and lower chest) with the lobe map over the lung window."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from m2unet.labels import Lobe

    colours = ["#00000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4"]
    cmap = ListedColormap(colours)
    per_slice = [(lobe_map[z] > 0).sum() for z in range(lobe_map.shape[0])]
    lung_slices = [z for z, n in enumerate(per_slice) if n > 0]
    if not lung_slices:
        lung_slices = [lobe_map.shape[0] // 2]
    picks = [lung_slices[int(len(lung_slices) * f)] for f in (0.35, 0.7)]
    figure, axes = plt.subplots(1, 2, figsize=(12, 6.4), dpi=90)
    for ax, z in zip(axes, picks):
        ax.imshow(volume.hu[z], cmap="gray", vmin=-1200, vmax=0)
        overlay = np.ma.masked_where(lobe_map[z] == 0, lobe_map[z])
        ax.imshow(overlay, cmap=cmap, vmin=0, vmax=5, alpha=0.45, interpolation="nearest")
        z_mm = volume.origin[2] + z * volume.spacing[2]
        ax.set_title(f"slice {z} (z = {z_mm:.0f} mm); image left = patient right")
        ax.axis("off")
    handles = [Patch(color=colours[int(lobe)], label=lobe.display_name) for lobe in Lobe]
    figure.legend(handles=handles, loc="lower center", ncol=5)
    figure.suptitle("m2unet demo weights on the real series: lobe map (synthetic training only)")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def cmd_measure(args) -> int:
    """Score the run's model through the predictor; several of these may run side by side on
    disjoint seed ranges, each writing its own JSON (``ship`` merges them)."""
    import torch

    from m2unet.predictor import Predictor

    out = Path(args.out)
    torch.set_num_threads(args.threads)
    weights = _export_candidate(out, "candidate", name=f"candidate-{args.name}", run=args.run)
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


SEGMENTATION_KEYS = ("dsc", "sen", "ppv", "dsc_right_upper", "dsc_right_middle", "dsc_right_lower", "dsc_left_upper",
                     "dsc_left_lower")


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


# -- ship -----------------------------------------------------------------------------------------


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
        f"(which keeps lobes inside that mask), {_verdict(real.get('network_union_dice_vs_hu_lung_mask'), 0.85)} for the "
        f"network's own foreground; {anatomy}.{volume_text} The severity output on real CT means nothing: the "
        "classifier has only seen synthetic findings. Train and validate on local data before drawing any conclusion "
        "from either output."
    )


DEMO_CAUTION = "Demo weights, synthetic training only: not for clinical use"


def cmd_ship(args) -> int:
    from m2unet.weights import default_weights_path
    from train.export import export_run

    out = Path(args.out)
    files = sorted(out.glob("measured-*.json"))
    summary = summarize_measurements(files)
    threshold = summary.pop("threshold")
    metrics = {
        "how_measured": (
            "with m2unet.predictor.Predictor (CPU, float32, 3 bags, lobe clean-up) on native volumes that training never "
            f"saw: test phantoms (seeds from {TEST_SEEDS_START}, the generator's own prevalence, slice spacing 2.5-7.5 mm), "
            f"decision threshold by Youden's J on other phantoms (seeds from {SELECTION_SEEDS_START}); the real series "
            "(64 slices of 5 mm): union of the five lobes against the plain HU lung mask of m2unet.lungs (Dice), and "
            "lobe centroids in LPS (right lobes at smaller x, upper lobes at larger z, middle lobe at smaller y than "
            "the right lower lobe)"
        ),
        **summary,
    }
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
