"""The training loop: a plain, readable loop with the recipe's optimiser, schedule and loss.

One step takes ``bags_per_step`` bags (per process) drawn from the epoch's case order (severe
cases duplicated) by :mod:`train.loader` (in ``recipe.loader_workers`` worker processes, or in this
one), runs M2UNet, and applies ``loss = lambda * MIL + (CE + Dice)``. The loop itself reads nothing
back from the device between steps: batches are copied without blocking, the losses are summed on
the device and read once an epoch (and every ``PROGRESS_EVERY`` steps for the progress bar), and on
CUDA the fused optimiser skips an overflowed float16 step by itself. The learning rate follows the
'poly' schedule ``lr * (1 - step / total) ** power`` (after an optional linear warm-up). Mixed
precision: float16 autocast with a gradient scaler on CUDA, optional bfloat16 autocast on the CPU.
Every ``checkpoint_every`` epochs (and every ``checkpoint_minutes``) the model, optimiser, scaler,
step and history go to ``out_dir/checkpoint.pt``; a run started again with the same ``out_dir``
resumes there. ``out_dir/recipe.json`` holds the recipe. With validation cases, each
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

import structlog
import torch
from torch.nn.parallel import DistributedDataParallel

from m2unet.device import NO_NATIVE_BFLOAT16, cpu_native_bfloat16
from m2unet.losses import Losses
from m2unet.model import M2UNet
from m2unet.preprocessing import PreprocessingConfig
from train.augment import random_affine
from train.distributed import SINGLE, DistributedContext, all_reduce_max, all_reduce_mean, barrier
from train.loader import BagFeed
from train.objective import loss_figures, objective
from train.prepared import PreparedCase, check_window
from train.recipe import Recipe

log = structlog.get_logger()

CHECKPOINT = "checkpoint.pt"
SELECTED = "selected.pt"
RECIPE = "recipe.json"
PROGRESS_EVERY = 20  # steps between the progress bar's loss readings (each waits for the device)


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


def make_optimizer(recipe: Recipe, model: torch.nn.Module, *, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimiser; ``fused`` (CUDA) also lets the gradient scaler skip a step on
    overflow on the device instead of reading the overflow flag back every step."""
    options = {"fused": True} if fused else {}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
            **options,
        )
    return torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay, **options)


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


def _autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """float16 on CUDA (``amp``); bfloat16 on the CPU (``cpu_bfloat16``) where the CPU has its
    kernels (:func:`m2unet.device.cpu_native_bfloat16`), float32 (None) otherwise."""
    if device.type == "cuda" and recipe.amp:
        return torch.float16
    if device.type == "cpu" and recipe.cpu_bfloat16:
        if cpu_native_bfloat16():
            return torch.bfloat16
        log.warning("cpu_bfloat16_unavailable", reason=NO_NATIVE_BFLOAT16, training_in="float32")
    return None


def _autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _summed(running: Losses | None, terms: Losses) -> Losses:
    """``running + terms`` on the device (float64, as the history's sums were in Python floats)."""
    def add(total: torch.Tensor | None, term: torch.Tensor | None) -> torch.Tensor | None:
        if term is None:
            return total
        term = term.detach().double()
        return term if total is None else total + term

    running = running or Losses(None, None, None)
    return Losses(add(running.total, terms.total), add(running.mil, terms.mil),
                  add(running.segmentation, terms.segmentation))


def same_recipe(stored: dict | None, recipe: Recipe) -> bool:
    """Whether a checkpoint's recipe is ``recipe``; a setting added to :class:`Recipe` after the
    checkpoint was written counts as holding its default there (so a run resumes across it)."""
    if not isinstance(stored, dict):
        return False
    current, defaults = recipe.to_dict(), Recipe().to_dict()
    return set(stored) <= set(current) and all(stored.get(k, defaults[k]) == v for k, v in current.items())


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
    check_window(cases, recipe.window)
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
    optimizer = make_optimizer(recipe, model, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and recipe.amp)
    autocast_dtype = _autocast_dtype(recipe, device)  # once: the CPU probe and its warning
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
        if not same_recipe(state.get("recipe"), recipe):
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
        model.load_state_dict(initial_state(recipe.init_from, recipe.window))
        log.info("initialised", source=str(recipe.init_from))

    net: torch.nn.Module = model
    if world.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    feed = BagFeed(recipe, cases, preprocessing_config(recipe), per_epoch, world=world,
                   pin_memory=device.type == "cuda")
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
            # an epoch interrupted mid-way restarts at its beginning: skip nothing, redo it
            step = epoch * per_epoch
            running: Losses | None = None
            started = time.monotonic()
            done_steps = 0
            for i in range(per_epoch):
                done_fraction = progress_fraction(step)
                if budget and done_fraction >= 1.0:
                    out_of_time = True  # the time budget is spent: the schedule has reached its end
                    break
                batch = feed.batch(epoch, i).to(device)
                images, targets = random_affine(batch.images, batch.targets, scale_jitter=recipe.scale_jitter,
                                                rotation_jitter_deg=recipe.rotation_jitter_deg, generator=augment)
                lr = poly_learning_rate(recipe, round(done_fraction * total_steps), total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with _autocast(autocast_dtype, device):
                    output = net(images)
                terms = objective(output, batch.severity, targets, batch.has_mask, recipe.mil_weight)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms.total).backward()
                if recipe.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                done_steps += 1
                running = _summed(running, terms)
                if bar is not None:
                    bar.update(1)
                    if done_steps % PROGRESS_EVERY == 0 or i + 1 == per_epoch:
                        mean_loss = float(running.total) / done_steps
                        bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                if checkpoint_minutes and time.monotonic() - last_checkpoint > 60 * checkpoint_minutes:
                    save_checkpoint(epoch)  # resumes at this epoch's start
                    last_checkpoint = time.monotonic()
            sums = loss_figures(running) if running is not None else {}  # the epoch's one read of the device
            record = {k: all_reduce_mean(v / max(done_steps, 1), world) for k, v in sums.items()}
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
        feed.close()
        if bar is not None:
            bar.close()

    del net  # the DDP wrapper and its reducer go now, not at interpreter exit
    if selected_epoch is not None and recipe.selection != "last" and (out_dir / SELECTED).exists():
        model.load_state_dict(torch.load(out_dir / SELECTED, map_location=device, weights_only=True))
    model.eval()
    return FitResult(model=model, history=history, selected_epoch=selected_epoch, steps=step, out_dir=out_dir)


def initial_state(source: str | Path, window: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
    """The state dict to start from: an m2unet weights file, a ``checkpoint.pt``, or a run folder
    (its ``checkpoint.pt``). With ``window`` (low, high HU) the first convolution is carried over
    from the window the source was trained with (:mod:`train.rewindow`); a bare state dict does
    not say its window and is taken to have been trained with ``window``."""
    state, source_window = _initial_state_and_window(source)
    if window is not None and source_window is not None and tuple(source_window) != tuple(window):
        from train.rewindow import rewindow_first_convolution

        log.info("rewindowed", source=str(source), source_window=list(source_window), window=list(window))
        state = rewindow_first_convolution(state, source_window, window)
    return state


def _initial_state_and_window(source: str | Path) -> tuple[dict[str, torch.Tensor], tuple[float, float] | None]:
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"init_from {str(source)!r}: no weights file or checkpoint there")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(payload, dict) and payload.get("format") == "m2unet-weights":
        from m2unet.weights import load_weights

        loaded = load_weights(path)
        prep = loaded.metadata.preprocessing_config
        return loaded.model.state_dict(), (prep.window_low, prep.window_high)
    if isinstance(payload, dict) and "model" in payload and isinstance(payload["model"], dict):
        recipe = payload.get("recipe")
        window = tuple(float(v) for v in recipe["window"]) if isinstance(recipe, dict) and "window" in recipe else None
        return payload["model"], window
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload, None
    raise ValueError(f"init_from {str(source)!r}: not an m2unet weights file, checkpoint or state dict")


def _selection_score(recipe: Recipe, scores: dict, record: dict) -> float | None:
    if recipe.selection == "best_auc":
        return scores.get("auc")
    if recipe.selection == "best_dsc":
        return scores.get("dsc")
    if recipe.selection == "best_loss":
        return -record["loss"] if "loss" in record else None
    return float(record["epoch"])  # "last": the latest epoch wins
