"""Scoring a model on prepared cases: the probability of severe and the lobe map of each case.

The probability comes from a bag drawn as the predictor draws it (``inference_bag_size`` random
patches of the body box, seeded by the case id, Section IV-C: "we also use the random crop strategy
in testing stage"). The lobe map comes from whole slices on the training grid (the network is
fully convolutional; slices are padded to a multiple of 16 with air). This is the fast scoring used
for selection and cross-validation; the shipped weights are also measured through the engine's
predictor on native volumes (``train.measurements``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from m2unet.labels import to_lobe_map
from m2unet.model import DOWNSAMPLING, M2UNet
from m2unet.preprocessing import PreprocessingConfig, sample_bag, series_seed
from train.metrics import classification_metrics, segmentation_metrics
from train.prepared import PreparedCase


@dataclass
class CaseScore:
    case_id: str
    severe: bool
    probability_severe: float | None
    segmentation: dict[str, float] | None


def _pad_to_multiple(images: torch.Tensor, multiple: int = DOWNSAMPLING) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph), value=0.0)
    return images, (h, w)


@torch.no_grad()
def probability_severe(model: M2UNet, case: PreparedCase, config: PreprocessingConfig) -> float:
    rng = np.random.default_rng(series_seed(case.case_id))
    bag = sample_bag(case.image, case.box, config, rng)
    device = next(model.parameters()).device
    patches = torch.from_numpy(bag.patches).to(device)
    features = model.encode(patches)
    logits = model.classify(features[-1], patches.shape[0])
    return float(logits.float().softmax(dim=1)[0, 1])


@torch.no_grad()
def segment_case(model: M2UNet, case: PreparedCase, config: PreprocessingConfig, slices_per_batch: int = 8) -> np.ndarray:
    """The 7-class map of ``case`` on its grid, slice by slice."""
    device = next(model.parameters()).device
    out = np.zeros(case.image.shape, dtype=np.uint8)
    for start in range(0, case.image.shape[0], slices_per_batch):
        chunk = case.image[start : start + slices_per_batch].astype(np.float32)
        images, (h, w) = _pad_to_multiple(torch.from_numpy(chunk)[:, None].to(device))
        logits = model.segment(images)[..., :h, :w]
        out[start : start + chunk.shape[0]] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


def score_cases(model: M2UNet, cases: list[PreparedCase], config: PreprocessingConfig) -> list[CaseScore]:
    was_training = model.training
    model.eval()
    scores = []
    try:
        for case in cases:
            probability = probability_severe(model, case, config) if model.has_classifier else None
            segmentation = None
            if model.has_decoder and case.class_map is not None:
                predicted = to_lobe_map(segment_case(model, case, config))
                segmentation = segmentation_metrics(predicted, to_lobe_map(case.class_map))
            scores.append(CaseScore(case.case_id, case.severe, probability, segmentation))
    finally:
        model.train(was_training)
    return scores


def summarize(scores: list[CaseScore], threshold: float = 0.5) -> dict[str, float]:
    """Classification metrics over the cases and the mean segmentation metrics over cases with masks."""
    out: dict[str, float] = {}
    with_probability = [s for s in scores if s.probability_severe is not None]
    if with_probability:
        out.update(
            classification_metrics(
                [s.severe for s in with_probability], [s.probability_severe for s in with_probability], threshold
            )
        )
    with_masks = [s.segmentation for s in scores if s.segmentation is not None]
    if with_masks:
        for key in with_masks[0]:
            out[key] = float(np.mean([m[key] for m in with_masks]))
    return out
