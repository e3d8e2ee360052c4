"""The training loop: a plain, readable loop with the recipe's optimiser, schedule and loss.

One step draws ``bags_per_step`` bags (per process) from the epoch's case order (severe cases
duplicated), runs M2UNet, and applies ``loss = lambda * MIL + (CE + Dice)``. The learning rate
follows the 'poly' schedule ``lr * (1 - step / total) ** power`` (after an optional linear warm-up).
Mixed precision: float16 autocast with a gradient scaler on CUDA, optional bfloat16 autocast on
the CPU. Every ``checkpoint_every`` epochs (and every ``checkpoint_minutes``) the model, optimiser,
scaler, step and history go to ``out_dir/checkpoint.pt``; a run started again with the same
``out_dir`` resumes there. ``out_dir/recipe.json`` holds the recipe. With validation cases, each
``validate_every`` epochs is scored, and the state chosen by ``recipe.selection`` is kept in
``out_dir/selected.pt``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import structlog
import torch
from torch.nn.parallel import DistributedDataParallel

from m2unet.model import M2UNet
from m2unet.preprocessing import PreprocessingConfig
from train.augment import random_affine
from train.distributed import SINGLE, DistributedContext, all_reduce_max, all_reduce_mean, barrier
from train.objective import loss_figures, objective
from train.prepared import PreparedCase
from train.recipe import Recipe
from train.sampling import balanced_case_order, collate, draw_bag

log = structlog.get_logger()

CHECKPOINT = "checkpoint.pt"
SELECTED = "selected.pt"
RECIPE = "recipe.json"


def preprocessing_config(recipe: Recipe, *, inference: bool = False) -> PreprocessingConfig:
    """The engine's preprocessing constants for this recipe (training bag or inference bag)."""
    return PreprocessingConfig(
        window_low=float(recipe.window[0]),
        window_high=float(recipe.window[1]),
        patch_size=recipe.patch_size,
        bag_size=recipe.inference_bag_size if inference else recipe.bag_size,
        in_plane_spacing_mm=recipe.in_plane_spacing_mm,
    )


def poly_learning_rate(recipe: Recipe, step: int, total_steps: int) -> float:
    """'Poly' decay (power ``recipe.poly_power``) after ``recipe.warmup_steps`` of linear warm-up."""
    if recipe.warmup_steps and step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    progress = min(step / max(total_steps, 1), 1.0)
    return recipe.learning_rate * (1.0 - progress) ** recipe.poly_power


def make_optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)


def steps_per_epoch(recipe: Recipe, num_cases: int, world_size: int = 1) -> int:
    """Steps of one epoch: the recipe's, or one pass over the balanced case list."""
    if recipe.steps_per_epoch is not None:
        return recipe.steps_per_epoch
    per_step = recipe.bags_per_step * world_size
    return max(1, math.ceil(num_cases / per_step))


@dataclass
class FitResult:
    model: M2UNet
    history: list[dict] = field(default_factory=list)
    selected_epoch: int | None = None
    steps: int = 0
    out_dir: Path | None = None


def _autocast(recipe: Recipe, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and recipe.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and recipe.cpu_bfloat16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _case_order(recipe: Recipe, cases: list[PreparedCase], epoch: int, steps: int, world: DistributedContext) -> list[int]:
    """This process's case indices for ``epoch``: the same shuffled balanced order on every rank
    (seeded by seed and epoch), repeated to fill the epoch, dealt out by rank."""
    rng = np.random.default_rng([recipe.seed, epoch, 7])
    needed = steps * recipe.bags_per_step * world.world_size
    order: list[int] = []
    while len(order) < needed:
        order += balanced_case_order([c.severe for c in cases], recipe.duplicate_severe, rng)
    order = order[:needed]
    return order[world.rank :: world.world_size]


def fit(
    recipe: Recipe,
    cases: list[PreparedCase],
    out_dir: str | Path,
    *,
    validation: list[PreparedCase] | None = None,
    device: torch.device | str = "cpu",
    world: DistributedContext = SINGLE,
    progress: bool = True,
    checkpoint_minutes: float | None = None,
    validate: Callable[[M2UNet, list[PreparedCase], Recipe], dict] | None = None,
    on_epoch_end: Callable[[M2UNet, dict], None] | None = None,
) -> FitResult:
    """Train on ``cases`` following ``recipe``; resumes from ``out_dir/checkpoint.pt`` if present.
    ``on_epoch_end(model, record)`` is called on the main process after each epoch's record (and
    checkpoint); the epoch order is drawn from ``cases`` at each epoch's start, so cases it appends
    to that list take part from the next epoch on."""
    if not cases:
        raise ValueError("no training cases: the dataset is empty")
    device = torch.device(device)
    out_dir = Path(out_dir)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        recipe.save(out_dir / RECIPE)
    if recipe.num_threads and device.type == "cpu":
        torch.set_num_threads(recipe.num_threads)
    torch.manual_seed(recipe.seed)
    model = M2UNet(recipe.variant).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # faster with oneDNN, as the predictor runs it
    optimizer = make_optimizer(recipe, model)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and recipe.amp)
    per_epoch = steps_per_epoch(recipe, len(cases), world.world_size)
    total_steps = per_epoch * recipe.epochs
    lr = recipe.learning_rate
    history: list[dict] = []
    start_epoch, step = 0, 0
    trained_seconds = 0.0  # wall-clock training time of earlier sessions (for time_budget_minutes)
    selected_epoch, selected_score = None, None

    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state.get("recipe") != recipe.to_dict():
            raise ValueError(
                f"{checkpoint_path}: the checkpoint was written with another recipe; "
                "use a new output folder or the same recipe"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        history = list(state["history"])
        trained_seconds = float(state.get("trained_seconds", 0.0))
        selected_epoch, selected_score = state.get("selected_epoch"), state.get("selected_score")
        log.info("resumed", epoch=start_epoch, step=step)

    elif recipe.init_from:
        model.load_state_dict(initial_state(recipe.init_from))
        log.info("initialised", source=str(recipe.init_from))

    net: torch.nn.Module = model
    if world.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    config = preprocessing_config(recipe)
    augment = torch.Generator().manual_seed(recipe.seed * 1000 + world.rank)
    bar = None
    if progress and world.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc=f"fit {recipe.preset}", unit="step", dynamic_ncols=True)
    last_checkpoint = session_start = time.monotonic()
    budget = 60.0 * recipe.time_budget_minutes if recipe.time_budget_minutes else None

    def progress_fraction(at_step: int) -> float:
        """Where the schedule stands: by steps, or by the time budget when that is further along
        (the same on every process)."""
        fraction = at_step / max(total_steps, 1)
        if budget:
            elapsed = (trained_seconds + time.monotonic() - session_start) / budget
            fraction = max(fraction, all_reduce_max(elapsed, world))
        return min(fraction, 1.0)

    def save_checkpoint(epoch: int) -> None:
        if not world.is_main:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "history": history,
            "trained_seconds": trained_seconds + time.monotonic() - session_start,
            "recipe": recipe.to_dict(),
            "selected_epoch": selected_epoch,
            "selected_score": selected_score,
        }
        tmp = checkpoint_path.with_name(CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        tmp.replace(checkpoint_path)

    try:
        out_of_time = False
        for epoch in range(start_epoch, recipe.epochs):
            if out_of_time:
                break
            net.train()
            order = _case_order(recipe, cases, epoch, per_epoch, world)
            rng = np.random.default_rng([recipe.seed, epoch, world.rank, 11])
            # an epoch interrupted mid-way restarts at its beginning: skip nothing, redo it
            step = epoch * per_epoch
            running: dict[str, float] = {}
            started = time.monotonic()
            done_steps = 0
            for i in range(per_epoch):
                done_fraction = progress_fraction(step)
                if budget and done_fraction >= 1.0:
                    out_of_time = True  # the time budget is spent: the schedule has reached its end
                    break
                picks = order[i * recipe.bags_per_step : (i + 1) * recipe.bags_per_step]
                bags = [draw_bag(cases[j], config, rng, recipe.bag_size, recipe.intensity_jitter_hu) for j in picks]
                images, severity, targets, has_mask = collate(bags)
                images, severity, has_mask = images.to(device), severity.to(device), has_mask.to(device)
                targets = targets.to(device) if targets is not None else None
                images, targets = random_affine(images, targets, scale_jitter=recipe.scale_jitter,
                                                rotation_jitter_deg=recipe.rotation_jitter_deg, generator=augment)
                lr = poly_learning_rate(recipe, round(done_fraction * total_steps), total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with _autocast(recipe, device):
                    output = net(images)
                terms = objective(output, severity, targets, has_mask, recipe.mil_weight)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms.total).backward()
                if recipe.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                done_steps += 1
                for key, value in loss_figures(terms).items():
                    running[key] = running.get(key, 0.0) + value
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{running['loss'] / (i + 1):.4f}", lr=f"{lr:.2e}")
                if checkpoint_minutes and time.monotonic() - last_checkpoint > 60 * checkpoint_minutes:
                    save_checkpoint(epoch)  # resumes at this epoch's start
                    last_checkpoint = time.monotonic()
            record = {k: all_reduce_mean(v / max(done_steps, 1), world) for k, v in running.items()}
            record.update(epoch=epoch + 1, step=step, seconds=round(time.monotonic() - started, 1), lr=lr)
            if validation and validate is not None and ((epoch + 1) % recipe.validate_every == 0 or epoch + 1 == recipe.epochs):
                if world.is_main:
                    scores = validate(model, validation, recipe)
                    record.update({f"val_{k}": v for k, v in scores.items()})
                    score = _selection_score(recipe, scores, record)
                    if score is not None and (selected_score is None or score >= selected_score):
                        selected_epoch, selected_score = epoch + 1, score
                        torch.save(model.state_dict(), out_dir / SELECTED)
                barrier(world)
            history.append(record)
            log.info("epoch_done", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()
                                      if k.count("_") < 2})
            if out_of_time:
                record["stopped"] = "time budget spent"
            if out_of_time or (epoch + 1) % recipe.checkpoint_every == 0 or epoch + 1 == recipe.epochs:
                save_checkpoint(recipe.epochs if out_of_time else epoch + 1)
                last_checkpoint = time.monotonic()
            if on_epoch_end is not None and world.is_main:
                on_epoch_end(model, record)
    finally:
        if bar is not None:
            bar.close()

    del net  # the DDP wrapper and its reducer go now, not at interpreter exit
    if selected_epoch is not None and recipe.selection != "last" and (out_dir / SELECTED).exists():
        model.load_state_dict(torch.load(out_dir / SELECTED, map_location=device, weights_only=True))
    model.eval()
    return FitResult(model=model, history=history, selected_epoch=selected_epoch, steps=step, out_dir=out_dir)


def initial_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The state dict to start from: an m2unet weights file, a ``checkpoint.pt``, or a run folder
    (its ``checkpoint.pt``)."""
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"init_from {str(source)!r}: no weights file or checkpoint there")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(payload, dict) and payload.get("format") == "m2unet-weights":
        from m2unet.weights import load_weights

        return load_weights(path).model.state_dict()
    if isinstance(payload, dict) and "model" in payload and isinstance(payload["model"], dict):
        return payload["model"]
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    raise ValueError(f"init_from {str(source)!r}: not an m2unet weights file, checkpoint or state dict")


def _selection_score(recipe: Recipe, scores: dict, record: dict) -> float | None:
    if recipe.selection == "best_auc":
        return scores.get("auc")
    if recipe.selection == "best_dsc":
        return scores.get("dsc")
    if recipe.selection == "best_loss":
        return -record["loss"] if "loss" in record else None
    return float(record["epoch"])  # "last": the latest epoch wins
