"""The losses of Section III-D and III-E, Eq. (3)-(5).

* Eq. (3), MIL: cross-entropy of the classifier's severity logits against the clinicians' label
  (0 non-severe, 1 severe), averaged over the bags of the batch.
* Eq. (4), segmentation: pixel-wise cross-entropy averaged over every pixel of every patch, plus
  the soft Dice loss ``1 - 2 * sum(p * l) / (sum(p) + sum(l))`` on the softmax probabilities ``p``
  and one-hot labels ``l``. Our reading of the Dice term: it is computed per class over all pixels
  of the batch's annotated patches and averaged over the classes present in their ground truth (a
  class absent from the ground truth has no overlap to reward; counting it would add a constant
  penalty per patch instead of a measure of overlap).
* Eq. (5): ``L = lambda * L_MIL + L_seg`` with lambda = 0.01. "Most of the cases in our dataset do
  not have ground-truth segmentation masks. For these cases, we simply avoid calculating the
  segmentation loss": ``has_mask`` per case selects the cases that enter Eq. (4); a batch where no
  case has masks gives ``L_seg = 0`` (still connected to the graph, so ``backward`` works).
* The ablations train one task alone: for ``cls_only`` the loss is ``L_MIL``, for ``seg_only``
  ``L_seg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from m2unet.model import M2UNetOutput

LAMBDA = 0.01  # Eq. (5), Section III-E
DICE_EPS = 1e-6


def _on_host(labels: torch.Tensor) -> bool:
    """Whether reading ``labels`` costs no device sync. Labels on an accelerator are not read back
    each step for the range checks (CUDA's cross-entropy and one-hot refuse out-of-range labels on
    their own)."""
    return labels.device.type == "cpu"


def mil_loss(severity_logits: torch.Tensor, severity: torch.Tensor) -> torch.Tensor:
    """Eq. (3): cross-entropy of ``[B, 2]`` logits against labels ``[B]`` (1 = severe)."""
    if severity_logits.ndim != 2 or severity_logits.shape[1] != 2:
        raise ValueError(f"severity_logits must be [B, 2], got {tuple(severity_logits.shape)}")
    severity = torch.as_tensor(severity, device=severity_logits.device).long().reshape(-1)
    if severity.shape[0] != severity_logits.shape[0]:
        raise ValueError(f"{severity.shape[0]} severity labels for {severity_logits.shape[0]} bags")
    if _on_host(severity) and severity.numel() and (severity.min() < 0 or severity.max() > 1):
        raise ValueError(f"severity labels must be 0 or 1, got {severity.tolist()}")
    return F.cross_entropy(severity_logits.float(), severity)


def dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss of logits ``[P, C, H, W]`` against labels ``[P, H, W]``, averaged over the
    classes present in ``masks``."""
    num_classes = logits.shape[1]
    probabilities = logits.float().softmax(dim=1)
    one_hot = F.one_hot(masks, num_classes).permute(0, 3, 1, 2).to(probabilities.dtype)
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + DICE_EPS) / (denominator + DICE_EPS)
    present = (one_hot.sum(dims) > 0).to(dice.dtype)
    return 1 - (dice * present).sum() / present.sum().clamp(min=1)  # no boolean index: no host sync


def segmentation_loss(segmentation_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Eq. (4) for annotated patches: logits ``[P, C, H, W]``, labels ``[P, H, W]`` (0..C-1)."""
    if segmentation_logits.ndim != 4:
        raise ValueError(f"segmentation_logits must be [P, C, H, W], got {tuple(segmentation_logits.shape)}")
    masks = masks.long()
    if masks.shape != segmentation_logits.shape[:1] + segmentation_logits.shape[2:]:
        raise ValueError(
            f"masks of shape {tuple(masks.shape)} do not fit logits of shape {tuple(segmentation_logits.shape)}"
        )
    num_classes = segmentation_logits.shape[1]
    if _on_host(masks) and masks.numel() and (masks.min() < 0 or masks.max() >= num_classes):
        raise ValueError(f"mask labels must lie in 0..{num_classes - 1}, got {int(masks.min())}..{int(masks.max())}")
    cross_entropy = F.cross_entropy(segmentation_logits.float(), masks)
    return cross_entropy + dice_loss(segmentation_logits, masks)


@dataclass
class Losses:
    """``total`` to back-propagate; ``mil`` and ``segmentation`` (None where not computed)."""

    total: torch.Tensor
    mil: torch.Tensor | None
    segmentation: torch.Tensor | None


def m2unet_loss(
    output: M2UNetOutput,
    severity: torch.Tensor | None,
    masks: torch.Tensor | None = None,
    has_mask: torch.Tensor | None = None,
    lam: float = LAMBDA,
) -> Losses:
    """Eq. (5) for a batch of bags.

    ``severity`` ``[B]`` (needed when the model classifies), ``masks`` ``[B, n, H, W]`` class labels
    of every patch (rows of cases without masks are ignored; may be None when no case has masks),
    ``has_mask`` ``[B]`` booleans (default: every case has masks when ``masks`` is given).
    """
    seg_logits = output.segmentation_logits
    sev_logits = output.severity_logits
    if sev_logits is None and seg_logits is None:
        raise ValueError("the output holds neither severity nor segmentation logits")

    mil = None
    if sev_logits is not None:
        if severity is None:
            raise ValueError("severity labels are required for a model with a classifier")
        mil = mil_loss(sev_logits, severity)

    segmentation = None
    if seg_logits is not None:
        batch = seg_logits.shape[0]
        if has_mask is None:
            has_mask = torch.full((batch,), masks is not None, dtype=torch.bool)
        # which cases carry masks decides the graph's shape: read on the host (StepBatch keeps it there)
        has_mask = torch.as_tensor(has_mask, dtype=torch.bool).cpu().reshape(-1)
        if has_mask.shape[0] != batch:
            raise ValueError(f"has_mask has {has_mask.shape[0]} entries for {batch} cases")
        if bool(has_mask.any()):
            if masks is None:
                raise ValueError("has_mask marks cases with masks but masks is None")
            if masks.shape[0] != batch:
                raise ValueError(f"masks has {masks.shape[0]} cases for {batch}")
            masks = masks.to(seg_logits.device)
            logits = seg_logits
            if not bool(has_mask.all()):
                chosen = has_mask.nonzero().reshape(-1).to(seg_logits.device, non_blocking=True)
                logits, masks = logits.index_select(0, chosen), masks.index_select(0, chosen)
            segmentation = segmentation_loss(logits.flatten(0, 1), masks.flatten(0, 1))
        else:
            segmentation = seg_logits.reshape(-1)[:0].sum()  # no annotated case: 0 on the graph, never NaN

    if mil is not None and segmentation is not None:
        total = lam * mil + segmentation
    else:
        total = mil if mil is not None else segmentation
    return Losses(total=total, mil=mil, segmentation=segmentation)
