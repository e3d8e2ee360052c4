"""The training recipe: every setting of a training run in one dataclass, saved beside the weights.

The defaults are the paper's (Section III-F and IV-C): SGD, learning rate 0.01 with 'poly' decay of
power 0.75, momentum 0.9, weight decay 1e-4, 100 epochs, lambda = 0.01 on the MIL loss, bags of
200 patches of 128 x 128, severe cases duplicated to balance the classes, the segmentation loss only
where lobe masks exist, native in-plane resolution (no resampling).

Named presets (:data:`PRESETS`) change some of these settings; a preset's name is stored in the
recipe, so a weights file always says how it was trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTIMIZERS = ("sgd", "adamw")
VARIANTS = ("m2unet", "cls_only", "seg_only")
SELECTIONS = ("last", "best_auc", "best_dsc", "best_loss")


@dataclass(frozen=True)
class Recipe:
    """Every setting of one training run (defaults: the paper's recipe)."""

    preset: str = "paper"
    variant: str = "m2unet"
    # optimisation (Section III-F)
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    poly_power: float = 0.75
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 100
    steps_per_epoch: int | None = None  # None: one pass over the (balanced) training cases
    bags_per_step: int = 1  # bags in one optimisation step (per process)
    warmup_steps: int = 0
    init_from: str | None = None  # start from these weights: a weights file, a checkpoint.pt or a run folder
    time_budget_minutes: float | None = None  # wall-clock budget: the poly schedule ends, and training stops, when it is spent
    grad_clip: float | None = None
    # loss = mil_weight * MIL + (cross-entropy + Dice)
    mil_weight: float = 0.01
    # bags (Section III-B and IV-C)
    bag_size: int = 200
    patch_size: int = 128
    duplicate_severe: bool = True
    # preprocessing (must match what the predictor does; stored in the weights' metadata)
    in_plane_spacing_mm: float | None = None  # None: native resolution, as in the paper
    window: tuple[float, float] = (-1200.0, 0.0)
    # augmentation (off in the paper): intensity, and a per-patch in-plane zoom and rotation (train.augment)
    intensity_jitter_hu: float = 0.0
    scale_jitter: float = 0.0  # zoom factor drawn from [1 - s, 1 + s]
    rotation_jitter_deg: float = 0.0  # rotation drawn from [-r, +r] degrees
    # inference-time settings written to the weights
    inference_bag_size: int = 200
    decision_threshold: float = 0.5
    # evaluation / selection
    selection: str = "last"  # how the inner split picks the epoch: last | best_auc | best_dsc | best_loss
    validation_fraction: float = 0.2  # inner split of each training set
    validate_every: int = 1  # epochs
    # run
    seed: int = 0
    amp: bool = True  # mixed precision on GPU (float16 autocast + grad scaler)
    cpu_bfloat16: bool = False  # bfloat16 autocast on CPU
    num_threads: int | None = None  # torch threads on CPU; None: torch's default
    loader_workers: int = 0  # processes drawing the bags ahead of the steps (train.loader); 0: the training process
    checkpoint_every: int = 1  # epochs
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_recipe(self)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["window"] = list(self.window)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"recipe has unknown settings: {', '.join(unknown)}")
        data = dict(data)
        if "window" in data:
            data["window"] = tuple(float(v) for v in data["window"])
        return cls(**data)

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON recipe ({exc})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


def validate_recipe(recipe: Recipe) -> None:
    """Raise ``ValueError`` naming the setting and value that cannot work."""
    if recipe.variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {recipe.variant!r}")
    if recipe.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {recipe.optimizer!r}")
    if recipe.selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {recipe.selection!r}")
    positive = {
        "learning_rate": recipe.learning_rate,
        "epochs": recipe.epochs,
        "bags_per_step": recipe.bags_per_step,
        "bag_size": recipe.bag_size,
        "inference_bag_size": recipe.inference_bag_size,
        "checkpoint_every": recipe.checkpoint_every,
        "validate_every": recipe.validate_every,
    }
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    if recipe.loader_workers < 0:
        raise ValueError(f"loader_workers must be >= 0, got {recipe.loader_workers!r}")
    if recipe.time_budget_minutes is not None and not recipe.time_budget_minutes > 0:
        raise ValueError(f"time_budget_minutes must be positive or None, got {recipe.time_budget_minutes!r}")
    if recipe.steps_per_epoch is not None and recipe.steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be positive or None, got {recipe.steps_per_epoch!r}")
    if recipe.patch_size < 16 or recipe.patch_size % 16:
        raise ValueError(f"patch_size must be a positive multiple of 16, got {recipe.patch_size!r}")
    if recipe.mil_weight < 0:
        raise ValueError(f"mil_weight must be >= 0, got {recipe.mil_weight!r}")
    if not 0.0 < recipe.validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {recipe.validation_fraction!r}")
    if not 0.0 <= recipe.decision_threshold <= 1.0:
        raise ValueError(f"decision_threshold must be in [0, 1], got {recipe.decision_threshold!r}")
    if not 0.0 <= recipe.scale_jitter < 0.5:
        raise ValueError(f"scale_jitter must be in [0, 0.5), got {recipe.scale_jitter!r}")
    if not 0.0 <= recipe.rotation_jitter_deg <= 45.0:
        raise ValueError(f"rotation_jitter_deg must be in [0, 45] degrees, got {recipe.rotation_jitter_deg!r}")
    if recipe.in_plane_spacing_mm is not None and not 0.1 <= recipe.in_plane_spacing_mm <= 10.0:
        raise ValueError(f"in_plane_spacing_mm must be None or in [0.1, 10] mm, got {recipe.in_plane_spacing_mm!r}")
    if len(recipe.window) != 2 or not recipe.window[0] < recipe.window[1]:
        raise ValueError(f"window must be (low, high) HU with low < high, got {recipe.window!r}")


PAPER = Recipe()

# A reduced recipe that trains useful demo weights on one shared CPU core in about an hour (on this
# project's 2-core machine 2.5 s per step when the core is free, far more when it is shared, so the
# run is bounded by wall-clock time: the poly schedule runs to its end when the budget is spent): a fixed set of pre-generated
# phantoms, bags of 12 patches of 96 x 96 on slices resampled to 2 mm in-plane (a patch sees 19 cm,
# most of a hemithorax with the mediastinum, enough to tell the lobes apart; the encoder's last block
# is then a 6 x 6 embedding-level bag), AdamW with a short warm-up and poly decay, a stronger MIL
# weight (the short run would otherwise barely train the classifier), and bfloat16 autocast on CPU.
CPU_DEMO = Recipe(
    preset="cpu-demo",
    optimizer="adamw",
    learning_rate=1e-3,
    poly_power=0.75,
    weight_decay=1e-4,
    epochs=20,  # an upper bound: the time budget ends the run
    steps_per_epoch=100,
    time_budget_minutes=50.0,
    warmup_steps=20,
    grad_clip=5.0,
    mil_weight=0.2,
    bag_size=12,
    patch_size=96,
    in_plane_spacing_mm=2.0,
    intensity_jitter_hu=30.0,
    inference_bag_size=48,
    cpu_bfloat16=True,
    num_threads=1,
    notes="reduced CPU preset for the shipped demo weights; synthetic phantoms only",
)

# The shipped demo weights, trained on one lent GPU in minutes (train.demo_device): the cpu-demo grid
# (2 mm in plane, so that the node segments a 300-slice study in well under a minute on a CPU) and
# its 96 x 96 patches, six bags of 48 patches per step (so every batch-norm layer sees several cases
# of both labels at once), AdamW with warm-up and poly decay over a wall-clock budget, float16 mixed
# precision, and intensity, zoom and rotation augmentation against the synthetic anatomy's fixed
# proportions. The paper's 128 x 128 patches were tried beside it and lost on the real series
# (docs/demo-weights.md).
GPU_DEMO = Recipe(
    preset="gpu-demo",
    optimizer="adamw",
    learning_rate=1e-3,
    poly_power=0.75,
    weight_decay=1e-4,
    epochs=10_000,  # an upper bound: the time budget ends the run
    steps_per_epoch=100,
    time_budget_minutes=7.0,
    warmup_steps=100,
    grad_clip=5.0,
    mil_weight=0.1,
    bag_size=48,
    bags_per_step=6,
    patch_size=96,
    in_plane_spacing_mm=2.0,
    intensity_jitter_hu=30.0,
    scale_jitter=0.15,
    rotation_jitter_deg=10.0,
    inference_bag_size=48,
    num_threads=2,
    loader_workers=6,  # bags drawn beside the GPU (the lent machine has 16 cores), one per bag of a step
    notes="demo preset for one lent GPU; synthetic phantoms only",
)

# Fine-tuning on chests rendered from real lobe annotations (train.anatomy_run), on a CPU without a
# lent GPU: the cpu-demo grid and patches (the node's inference grid does not change), a lower
# learning rate since it starts from trained weights, zoom and rotation augmentation, and two
# torch threads (the renderer shares the machine only at the start).
ANATOMY_CPU = CPU_DEMO.replace(
    preset="anatomy-cpu",
    window=(-1200.0, 400.0),  # wider than the paper's: consolidation against the chest wall (docs/real-anatomy.md)
    learning_rate=4e-4,
    warmup_steps=20,
    mil_weight=0.2,
    scale_jitter=0.1,
    rotation_jitter_deg=8.0,
    time_budget_minutes=70.0,
    num_threads=2,
    notes="fine-tuning on phantoms rendered from real lobe annotations (m2unet.phantoms), CPU",
)

# The smallest thing that exercises every code path: for tests and smoke runs.
SMOKE = Recipe(
    preset="smoke",
    epochs=1,
    steps_per_epoch=2,
    bag_size=2,
    patch_size=32,
    inference_bag_size=4,
    in_plane_spacing_mm=6.0,
    amp=False,
    num_threads=1,
    notes="smoke run: a few steps on tiny phantoms, not a model",
)

PRESETS: dict[str, Recipe] = {
    "paper": PAPER, "cpu-demo": CPU_DEMO, "gpu-demo": GPU_DEMO, "anatomy-cpu": ANATOMY_CPU, "smoke": SMOKE,
}


def preset(name: str) -> Recipe:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
