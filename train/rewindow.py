"""Carry trained weights over to another intensity window.

The network sees HU through a window scaled to [0, 255] (:func:`m2unet.preprocessing.window`).
Weights trained with one window can start training with another when the first convolution is
rescaled so that it computes the same pre-activations for every HU inside both windows: with
``x_s = (h - low_s) * 255 / width_s`` and ``x_t = (h - low_t) * 255 / width_t``,
``x_s = a * x_t + c`` with ``a = width_t / width_s`` and ``c = (low_t - low_s) * 255 / width_s``, so
``W * x_s + b = (a * W) * x_t + (b + c * sum(W))``. Where the two windows share their low end
(``c = 0``) this is exact everywhere, the zero padding of the convolution included (0 is the low
end in both); HU above the source window's top, which the source weights never saw apart, now
reach the network with their own values and training learns what to make of them.
"""

from __future__ import annotations

import torch

from train.sampling import WINDOW_MAX

FIRST_CONVOLUTION = "encoding_block1.0"


def rewindow_first_convolution(
    state: dict[str, torch.Tensor], source: tuple[float, float], target: tuple[float, float]
) -> dict[str, torch.Tensor]:
    """``state`` with its first convolution rescaled from the ``source`` window (low, high) HU to
    ``target``; the other tensors are shared, not copied."""
    (low_s, high_s), (low_t, high_t) = (tuple(float(v) for v in w) for w in (source, target))
    if not (low_s < high_s and low_t < high_t):
        raise ValueError(f"windows must be (low, high) with low < high, got {source!r} and {target!r}")
    weight, bias = state[f"{FIRST_CONVOLUTION}.weight"], state[f"{FIRST_CONVOLUTION}.bias"]
    scale = (high_t - low_t) / (high_s - low_s)
    shift = (low_t - low_s) * WINDOW_MAX / (high_s - low_s)
    out = dict(state)
    out[f"{FIRST_CONVOLUTION}.weight"] = weight * scale
    out[f"{FIRST_CONVOLUTION}.bias"] = bias + shift * weight.sum(dim=(1, 2, 3))
    return out
