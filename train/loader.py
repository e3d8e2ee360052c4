"""The training input pipeline: each step's bags drawn ahead of the step, in worker processes.

Why: on the lent H100 the gpu-demo recipe ran 0.24 s per step of 6 bags x 48 patches of 96 x 96
(docs/demo-weights.md, "Throughput seen"; about 18 TFLOP/s at 4.4 TFLOP a step), far below the
card's peak, because the loop drew every step's bags on the CPU between two steps (the GPU idle
meanwhile) and read the losses back every step. Here the drawing leaves the training loop:

* :class:`BagStream` is an ``IterableDataset`` that yields one ready batch per optimisation step
  (:class:`StepBatch`: the bags of :func:`train.sampling.draw_bag` stacked by
  :func:`train.sampling.collate`, the class maps as uint8, an eighth of the bytes of int64 to copy).
  It runs over every epoch of the run from the first one asked for, so its workers never stop at
  an epoch's end and keep prefetching across it.
* With ``recipe.loader_workers = N > 0`` a ``DataLoader`` runs it in N worker processes: worker
  ``w`` draws the steps ``s`` with ``s % N == w`` (s counted over the whole run), so the loader's
  round-robin hands the batches back in step order. Each worker has its own numpy Generator, seeded
  from the run's seed, the epoch, the rank and the worker (:func:`bag_generator`), so a run is the
  same for a given worker count; worker 0's Generator is the one the training process itself uses
  with ``N = 0``, so one worker reproduces the in-process run exactly, and ``N = 0`` draws exactly
  what the loop drew before this pipeline existed. Workers are forked on Linux, so the prepared
  cases are shared with them copy-on-write rather than pickled; each holds ``PREFETCH`` batches
  ahead. On CUDA the batches come in pinned memory and :meth:`StepBatch.to` copies them without
  blocking.
* :class:`BagFeed` is the training loop's side. The epoch order is drawn from the case list at
  each epoch's start, and callers append cases between epochs (``fit``'s ``on_epoch_end``); the
  feed notices at an epoch's start that the list changed and restarts the stream there with the
  new list. Otherwise its one DataLoader iterator lives for the whole run, which is what
  ``persistent_workers`` would give with one iterator per epoch, without the stall at each epoch's
  start. The spatial augmentation (:mod:`train.augment`) stays in the loop, on the device.

What remains between two steps on the training process: fetching the batch, the augmentation's
sampling grid (built on the CPU by :func:`train.augment.random_affine` and copied in a blocking
copy), and the argument checks of :mod:`m2unet.losses` that read values back (labels' range, "does
any bag have masks").

Measured with ``bench/bench_training.py`` on the project's 2-core CPU, shared with two other jobs
(load average about 6), so the figures move by a factor of two from run to run:

* the input alone at the gpu-demo batch (6 bags x 48 patches of 96 x 96, 4.34 TFLOP a step forward
  and backward by ``FlopCounterMode``; the last GPU run's 0.24 s a step is 18 TFLOP/s by this
  count, and the target, 3 x 4.2 steps/s, is 12.5 steps/s or 54 TFLOP/s): 20 batches/s drawn in
  the training process (about 50 ms of its time a step), 20 with one worker, 30 with two, now
  off the training process's path;
* training on the CPU (2 bags x 4 patches of 32 x 32, 13.4 GFLOP a step, 2 torch threads):
  0.8 - 1.5 steps/s (0.01 - 0.02 TFLOP/s) in process, 0.4 - 1.75 with two workers. On a CPU the
  network is the bound and the workers take cores from its threads, so ``loader_workers`` stays 0
  there; it is meant for a GPU host (e.g. 8 on the lent machine's 16 cores), where the training
  process should only launch kernels. The GPU figures are still to be measured
  (``bench/bench_training.py --device cuda --batch 6 --bag 48 --patch 96 --workers 0 4 8``).
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from m2unet.preprocessing import PreprocessingConfig
from train.distributed import SINGLE, DistributedContext
from train.prepared import PreparedCase
from train.recipe import Recipe
from train.sampling import balanced_case_order, collate, draw_bag

PREFETCH = 4  # batches each worker keeps ready


class StepBatch(NamedTuple):
    """One optimisation step's input: ``images`` float32 ``[B, n, 1, p, p]`` in [0, 255],
    ``severity`` int64 ``[B]``, ``targets`` uint8 ``[B, n, p, p]`` (or None when no bag has lobe
    masks), ``has_mask`` bool ``[B]``; ``step`` its index over the run (epoch * steps + index)."""

    step: int
    images: torch.Tensor
    severity: torch.Tensor
    targets: torch.Tensor | None
    has_mask: torch.Tensor

    def to(self, device: torch.device) -> "StepBatch":
        """The batch on ``device``; the copies do not block (from pinned memory they overlap the step).
        ``has_mask`` stays on the host: it decides which patches the loss reads, and reading it there
        costs no device sync."""
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=True)

        return StepBatch(self.step, move(self.images), move(self.severity), move(self.targets), self.has_mask)


def case_order(
    recipe: Recipe, cases: list[PreparedCase], epoch: int, steps: int, world: DistributedContext
) -> list[int]:
    """This process's case indices for ``epoch``: the same shuffled balanced order on every rank
    (seeded by seed and epoch), repeated to fill the epoch, dealt out by rank."""
    rng = np.random.default_rng([recipe.seed, epoch, 7])
    needed = steps * recipe.bags_per_step * world.world_size
    order: list[int] = []
    while len(order) < needed:
        order += balanced_case_order([c.severe for c in cases], recipe.duplicate_severe, rng)
    order = order[:needed]
    return order[world.rank :: world.world_size]


def bag_generator(seed: int, epoch: int, rank: int, worker: int = 0) -> np.random.Generator:
    """The Generator that draws ``worker``'s bags of ``epoch`` on ``rank``; worker 0's is the
    in-process one."""
    return np.random.default_rng([seed, epoch, rank, 11] + ([worker] if worker else []))


def draw_step(
    cases: list[PreparedCase], picks: list[int], config: PreprocessingConfig, rng: np.random.Generator,
    recipe: Recipe, step: int,
) -> StepBatch:
    """The bags of ``cases[picks]`` for one step, stacked."""
    bags = [draw_bag(cases[j], config, rng, recipe.bag_size, recipe.intensity_jitter_hu) for j in picks]
    images, severity, targets, has_mask = collate(bags)
    return StepBatch(step, images, severity, None if targets is None else targets.to(torch.uint8), has_mask)


class BagStream(IterableDataset):
    """Every step's batch from epoch ``first_epoch`` to the recipe's last, in step order (each
    worker of a DataLoader its share: see the module's docstring)."""

    def __init__(
        self,
        recipe: Recipe,
        cases: list[PreparedCase],
        config: PreprocessingConfig,
        steps_per_epoch: int,
        first_epoch: int = 0,
        world: DistributedContext = SINGLE,
    ) -> None:
        super().__init__()
        self.recipe, self.cases, self.config = recipe, list(cases), config
        self.steps_per_epoch, self.first_epoch, self.world = steps_per_epoch, first_epoch, world

    def __iter__(self) -> Iterator[StepBatch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        recipe, per_epoch, per_step = self.recipe, self.steps_per_epoch, self.recipe.bags_per_step
        for epoch in range(self.first_epoch, recipe.epochs):
            order = case_order(recipe, self.cases, epoch, per_epoch, self.world)
            rng = bag_generator(recipe.seed, epoch, self.world.rank, worker)
            for index in range(per_epoch):
                step = epoch * per_epoch + index
                if step % workers == worker:
                    picks = order[index * per_step : (index + 1) * per_step]
                    yield draw_step(self.cases, picks, self.config, rng, recipe, step)


def bag_loader(stream: BagStream, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over ``stream``: in the calling process with ``num_workers = 0``, else in forked
    workers (Linux) that prefetch ``PREFETCH`` batches each."""
    options: dict = {}
    if num_workers:
        options["prefetch_factor"] = PREFETCH
        if sys.platform.startswith("linux"):
            options["multiprocessing_context"] = multiprocessing.get_context("fork")
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **options)


class BagFeed:
    """The batches of a training run, step by step: ``feed.batch(epoch, index)``. The stream is
    started at the first epoch asked for and restarted at an epoch's start when ``cases`` (the
    caller's list, read there) has changed since; :meth:`close` stops its workers."""

    def __init__(
        self,
        recipe: Recipe,
        cases: list[PreparedCase],
        config: PreprocessingConfig,
        steps_per_epoch: int,
        *,
        world: DistributedContext = SINGLE,
        pin_memory: bool = False,
    ) -> None:
        self.recipe, self.cases, self.config, self.steps_per_epoch = recipe, cases, config, steps_per_epoch
        self.world, self.pin_memory = world, pin_memory
        self._iterator: Iterator[StepBatch] | None = None
        self._next_step: int | None = None
        self._drawn_from: tuple[int, ...] = ()

    def batch(self, epoch: int, index: int) -> StepBatch:
        step = epoch * self.steps_per_epoch + index
        if index == 0 and (self._next_step != step or self._drawn_from != self._snapshot()):
            self._start(epoch)
        elif self._next_step != step:
            raise ValueError(f"steps are taken in order from an epoch's start: asked for {step}, "
                             f"next is {self._next_step}")
        batch = next(self._iterator)
        if batch.step != step:
            raise RuntimeError(f"the loader handed step {batch.step} for step {step}")
        self._next_step = step + 1
        return batch

    def close(self) -> None:
        self._iterator = None  # the multi-process iterator shuts its workers down when it goes
        self._next_step = None

    def _snapshot(self) -> tuple[int, ...]:
        return tuple(id(case) for case in self.cases)

    def _start(self, epoch: int) -> None:
        self.close()
        stream = BagStream(self.recipe, self.cases, self.config, self.steps_per_epoch, epoch, self.world)
        self._drawn_from = self._snapshot()
        self._iterator = iter(bag_loader(stream, self.recipe.loader_workers, self.pin_memory))
