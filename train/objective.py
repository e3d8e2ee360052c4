"""The training objective: the engine's Eq. (5), ``L = lambda * L_MIL + L_seg``
(:func:`m2unet.losses.m2unet_loss`), with the segmentation loss only for bags whose case has lobe
masks, plus the per-term figures the progress bar and history show."""

from __future__ import annotations

import torch

from m2unet.losses import Losses, m2unet_loss
from m2unet.model import M2UNetOutput


def objective(
    output: M2UNetOutput,
    severity: torch.Tensor,
    targets: torch.Tensor | None,
    has_mask: torch.Tensor,
    mil_weight: float,
) -> Losses:
    return m2unet_loss(output, severity, targets, has_mask, lam=mil_weight)


def loss_figures(losses: Losses) -> dict[str, float]:
    """``loss``, ``mil`` and ``seg`` as floats (the terms that were computed)."""
    out = {"loss": float(losses.total.detach())}
    if losses.mil is not None:
        out["mil"] = float(losses.mil.detach())
    if losses.segmentation is not None:
        out["seg"] = float(losses.segmentation.detach())
    return out
