"""Benchmark of the training loop and its input pipeline (issue 14): steps per second and TFLOP/s.

    .venv/bin/python bench/bench_training.py                      # CPU, tiny steps, workers 0 and 2
    .venv/bin/python bench/bench_training.py --batch 6 --bag 48 --patch 96 --input-only
                                                                  # can the CPU feed the gpu-demo step?
    .venv/bin/python bench/bench_training.py --device cuda --batch 6 --bag 48 --patch 96 --workers 0 4 8
                                                                  # the gpu-demo step, on a lent GPU

The last GPU run (docs/demo-weights.md, "Throughput seen") took 0.24 s per step of the gpu-demo
recipe, 6 bags of 48 patches of 96 x 96, with the bags drawn in the training loop; the target is
three times its steps per second at that batch.

For each worker count (``recipe.loader_workers``) it runs :func:`train.fit.fit` itself on small
synthetic prepared phantoms (the gpu-demo recipe with ``--batch`` bags of ``--bag`` patches of
``--patch`` pixels, augmentation on) and reports: steps per second of the epochs after the first
(the first carries the start-up: worker forks, kernel selection), the input alone (the same
batches from :class:`train.loader.BagFeed`, copied to the device, no training), and the TFLOP/s
reached, from the model's FLOPs per step (forward and backward, counted by
``torch.utils.flop_counter.FlopCounterMode`` on one step traced on the meta device) times the steps
per second. M2UNet costs
about 1.7 GFLOP per 32 x 32 patch (27 per 128 x 128), so on a CPU only tiny steps finish quickly;
``--input-only`` skips the training and measures the pipeline alone at any batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import structlog
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2unet.model import M2UNet  # noqa: E402
from train.fit import fit, preprocessing_config  # noqa: E402
from train.loader import BagFeed  # noqa: E402
from train.phantoms import prepared_phantoms  # noqa: E402
from train.recipe import GPU_DEMO, Recipe  # noqa: E402

LAST_GPU_SECONDS_PER_STEP = 0.24  # docs/demo-weights.md: gpu-demo alone on one H100, drawn in the loop


def bench_recipe(args: argparse.Namespace, workers: int) -> Recipe:
    return GPU_DEMO.replace(
        epochs=args.epochs, steps_per_epoch=args.steps, time_budget_minutes=None, warmup_steps=0,
        bags_per_step=args.batch, bag_size=args.bag, patch_size=args.patch, num_threads=args.threads,
        loader_workers=workers, checkpoint_every=10**6, notes="bench/bench_training.py",
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_step(recipe: Recipe) -> int:
    """FLOPs of one training step's forward and backward (convolutions and matrix products; the
    losses add none that count), traced on the meta device: nothing is computed, any batch is quick."""
    p = recipe.patch_size
    with torch.device("meta"):
        model = M2UNet(recipe.variant)
        images = torch.empty(recipe.bags_per_step, recipe.bag_size, 1, p, p)
    with FlopCounterMode(display=False) as counter:
        output = model(images)
        logits = [t for t in (output.segmentation_logits, output.severity_logits) if t is not None]
        sum(t.float().sum() for t in logits).backward()
    return counter.get_total_flops()


def steps_per_second_of_fit(recipe: Recipe, cases: list, device: torch.device) -> float:
    """Steps per second of ``fit`` over the epochs after the first."""
    ends: list[float] = []

    def on_epoch_end(model, record) -> None:
        synchronize(device)  # the epoch's record has read the losses back already
        ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as run:
        fit(recipe, cases, run, device=device, progress=False, on_epoch_end=on_epoch_end)
    return recipe.steps_per_epoch * (len(ends) - 1) / (ends[-1] - ends[0])


def steps_per_second_of_input(recipe: Recipe, cases: list, device: torch.device) -> float:
    """Batches per second the input pipeline hands over (copied to the device), after its first epoch."""
    feed = BagFeed(recipe, cases, preprocessing_config(recipe), recipe.steps_per_epoch,
                   pin_memory=device.type == "cuda")
    try:
        ends = []
        for epoch in range(recipe.epochs):
            for index in range(recipe.steps_per_epoch):
                last = feed.batch(epoch, index).to(device)
            synchronize(device)
            ends.append(time.perf_counter())
        del last
    finally:
        feed.close()
    return recipe.steps_per_epoch * (len(ends) - 1) / (ends[-1] - ends[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to compare")
    parser.add_argument("--steps", type=int, default=6, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    parser.add_argument("--batch", type=int, default=2, help="bags per step")
    parser.add_argument("--bag", type=int, default=4, help="patches per bag")
    parser.add_argument("--patch", type=int, default=32, help="patch size (pixels, a multiple of 16)")
    parser.add_argument("--cases", type=int, default=6, help="synthetic prepared phantoms")
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 192, 192], help="phantom grid (z y x)")
    parser.add_argument("--input-only", action="store_true", help="time the input pipeline alone, no training")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training process (CPU)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    device = torch.device(args.device)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # no per-epoch lines

    template = bench_recipe(args, 0)
    cases = prepared_phantoms(list(range(args.cases)), preprocessing_config(template), shape=tuple(args.shape))
    flops = flops_per_step(template)
    patches = args.batch * args.bag
    print(f"device {device}; step: {args.batch} bags x {args.bag} patches of {args.patch} x {args.patch} "
          f"({patches} patches); {flops / 1e9:.1f} GFLOP per step forward + backward "
          f"({flops / patches / 1e9:.2f} per patch); {args.cases} phantoms {tuple(args.shape)}")
    rows = []
    for workers in args.workers:
        recipe = bench_recipe(args, workers)
        fed = steps_per_second_of_input(recipe, cases, device)
        trained = float("nan") if args.input_only else steps_per_second_of_fit(recipe, cases, device)
        rows.append({"workers": workers, "steps_per_second": trained, "ms_per_step": 1000.0 / trained,
                     "input_steps_per_second": fed, "tflops": flops * trained / 1e12})
    print(f"{'workers':>7}  {'steps/s':>8}  {'ms/step':>8}  {'input steps/s':>13}  {'TFLOP/s':>8}")
    for row in rows:
        print(f"{row['workers']:>7}  {row['steps_per_second']:>8.2f}  {row['ms_per_step']:>8.1f}  "
              f"{row['input_steps_per_second']:>13.1f}  {row['tflops']:>8.3f}")
    gpu_demo_batch = (GPU_DEMO.bags_per_step, GPU_DEMO.bag_size, GPU_DEMO.patch_size)
    if (args.batch, args.bag, args.patch) == gpu_demo_batch and not args.input_only:
        best = max(row["steps_per_second"] for row in rows)
        print(f"last GPU run: {1 / LAST_GPU_SECONDS_PER_STEP:.2f} steps/s at this batch; best here {best:.2f} "
              f"({best * LAST_GPU_SECONDS_PER_STEP:.1f}x; target 3x)")
    if args.json:
        print(json.dumps({"device": str(device), "batch": args.batch, "bag": args.bag, "patch": args.patch,
                          "flops_per_step": flops, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
