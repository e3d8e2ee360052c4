"""Training bags: random patches of a prepared case with their lobe targets (Section III-B).

The patches are drawn exactly as the predictor draws them at inference
(:func:`m2unet.preprocessing.sample_bag`: a random slice and a random position inside the body box),
so the classifier sees at training time the kind of bag it is given in use. The class map is cut
at the same places. An optional intensity jitter (scale and offset in the window) imitates scanners
that calibrate differently; there is no left-right flip, since laterality is what the lobes encode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from m2unet.preprocessing import PreprocessingConfig, sample_bag
from train.prepared import PreparedCase

WINDOW_MAX = 255.0


@dataclass
class TrainingBag:
    """``patches`` float32 ``[n, 1, p, p]`` in [0, 255]; ``targets`` int64 ``[n, p, p]`` or None;
    ``severe`` the bag's label."""

    patches: np.ndarray
    targets: np.ndarray | None
    severe: bool
    case_id: str


def draw_bag(
    case: PreparedCase,
    config: PreprocessingConfig,
    rng: np.random.Generator,
    bag_size: int,
    intensity_jitter_hu: float = 0.0,
) -> TrainingBag:
    """One random bag of ``bag_size`` patches from ``case`` with the class map cut alike."""
    bag = sample_bag(case.image, case.box, config, rng, bag_size=bag_size)
    patches = bag.patches
    if intensity_jitter_hu > 0:
        scale_per_hu = WINDOW_MAX / (config.window_high - config.window_low)
        offset = rng.normal(0.0, intensity_jitter_hu) * scale_per_hu
        gain = 1.0 + rng.normal(0.0, 0.03)
        patches = np.clip(patches * gain + offset, 0.0, WINDOW_MAX).astype(np.float32)
    targets = None
    if case.class_map is not None:
        p = config.patch_size
        targets = np.zeros((bag_size, p, p), dtype=np.int64)
        y1, x1 = case.box.y1, case.box.x1
        for i, (z, (y, x)) in enumerate(zip(bag.slice_index, bag.origin_yx)):
            region = case.class_map[int(z), int(y) : min(int(y) + p, y1), int(x) : min(int(x) + p, x1)]
            targets[i, : region.shape[0], : region.shape[1]] = region
    return TrainingBag(patches=patches, targets=targets, severe=case.severe, case_id=case.case_id)


def collate(bags: list[TrainingBag]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Bags -> ``images [B, n, 1, p, p]``, ``severity [B]``, ``targets [B, n, p, p]`` or None, and
    ``has_mask [B]`` (bool). Bags without masks get all-zero targets and ``has_mask`` False."""
    images = torch.from_numpy(np.stack([b.patches for b in bags]))
    severity = torch.tensor([int(b.severe) for b in bags], dtype=torch.int64)
    has_mask = torch.tensor([b.targets is not None for b in bags], dtype=torch.bool)
    targets = None
    if has_mask.any():
        shape = bags[0].patches.shape
        stacked = [b.targets if b.targets is not None else np.zeros((shape[0], shape[2], shape[3]), np.int64) for b in bags]
        targets = torch.from_numpy(np.stack(stacked))
    return images, severity, targets, has_mask


def balanced_case_order(severe: list[bool], duplicate_severe: bool, rng: np.random.Generator) -> list[int]:
    """Indices of one epoch's cases, shuffled; with ``duplicate_severe`` the severe cases repeat
    until they are about as many as the non-severe ones (Section III-F: "we augmented the data by
    directly duplicating the severe cases in the training set")."""
    indices = list(range(len(severe)))
    if duplicate_severe:
        positives = [i for i in indices if severe[i]]
        negatives = len(indices) - len(positives)
        if positives and negatives > len(positives):
            copies = max(1, round(negatives / len(positives))) - 1
            indices += positives * copies
    order = np.asarray(indices)
    rng.shuffle(order)
    return [int(i) for i in order]
