"""Regions: which parts of which slices go through the network, and how the decoder is nested in them.

Segmentation runs only where labels are kept (Section III at test time; figures in
``docs/engine-performance.md``). :func:`plan_slabs` groups the slices that hold lung into
:class:`Slab` s of consecutive slices, one forward each, and gives each slab its windows: the
``outer`` crop the encoder sees (the lungs' in-plane bounding box plus a context margin, aligned to
the network's 16-pixel pooling grid so that every 2x2 max-pooling sees the same pixels as on the
whole slice) and the ``inner`` boxes (the lungs plus a few pixels, one per lung where the
mediastinum leaves a wide gap) where labels are kept. :func:`segment_region` runs a runner's parts
(:mod:`m2unet.runners`) over those regions: the coarse blocks over the whole window, the finer
blocks only over the boxes, with the one-pixel halo of :func:`halo_part` that keeps the bilinear
up-sampling exact.

Boxes are ``(y0, y1, x0, x1)``: rows ``[y0, y1)``, columns ``[x0, x1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from m2unet.model import DOWNSAMPLING

if TYPE_CHECKING:
    from m2unet.predictor import InferenceOptions

Box = tuple[int, int, int, int]  # rows [y0, y1), columns [x0, x1)


@dataclass(frozen=True)
class Slab:
    """Slices segmented in one forward. ``outer``: the window the encoder sees, in the slice
    zero-padded to multiples of 16; its bounds are multiples of 16 (the pooling grid of the whole
    slice) and ``y1``/``x1`` may pass the image's edge. ``inner``: one or two boxes (same
    coordinates, even bounds, inside ``outer``) where the finest decoding block runs and labels are
    kept: the lungs of these slices with a margin, split in two where the mediastinum leaves a wide
    gap between the lungs."""

    z: tuple[int, ...]
    outer: Box
    inner: tuple[Box, ...]


def _aligned(lo: int, hi: int, margin: int, limit: int, step: int = DOWNSAMPLING) -> tuple[int, int]:
    padded = -(-limit // DOWNSAMPLING) * DOWNSAMPLING
    lo = max(0, (lo - margin) // step * step)
    hi = min(padded, -(-(hi + margin) // step) * step)
    return lo, hi


def _clip(box: Box, outer: Box) -> Box:
    return (max(box[0], outer[0]), min(box[1], outer[1]), max(box[2], outer[2]), min(box[3], outer[3]))


def plan_slabs(
    lung_mask: np.ndarray, options: InferenceOptions, extra_margin: int = 0, extra_slices: int = 0
) -> list[Slab]:
    """Group the slices to segment into batches of consecutive slices with their windows.

    ``options`` (:class:`m2unet.predictor.InferenceOptions`): ``batch_size`` slices per slab,
    ``skip_empty_slices``, ``crop_margin`` (None: whole slices), ``decoder_margin`` (None: the
    inner box is the whole window). ``extra_margin`` (pixels, in-plane) and ``extra_slices`` reach
    beyond the mask: the boxes grow by ``extra_margin`` (the context crop with them), and a slice
    within ``extra_slices`` of a slice with lung is segmented too, its boxes those of the lung in
    the slices within that reach. The HU mask loses consolidated lung at the pleura and at the
    base (``m2unet.lungs``); the reach keeps it inside the decoder's windows."""
    if isinstance(extra_margin, bool) or not isinstance(extra_margin, (int, np.integer)) or extra_margin < 0:
        raise ValueError(f"extra_margin must be a non-negative integer, got {extra_margin!r}")
    if isinstance(extra_slices, bool) or not isinstance(extra_slices, (int, np.integer)) or extra_slices < 0:
        raise ValueError(f"extra_slices must be a non-negative integer, got {extra_slices!r}")
    depth, height, width = lung_mask.shape
    full = (0, -(-height // DOWNSAMPLING) * DOWNSAMPLING, 0, -(-width // DOWNSAMPLING) * DOWNSAMPLING)
    rows = lung_mask.any(axis=2)  # (z, y)
    cols = lung_mask.any(axis=1)  # (z, x)
    has_lung = rows.any(axis=1)
    lung_slices = np.flatnonzero(has_lung)
    near_lung = np.zeros(depth, dtype=bool)
    for k in lung_slices:
        near_lung[max(0, k - extra_slices) : k + extra_slices + 1] = True
    slices = np.flatnonzero(near_lung) if options.skip_empty_slices else np.arange(depth)
    slabs = []
    for start in range(0, len(slices), options.batch_size):
        group = slices[start : start + options.batch_size]
        z = tuple(int(k) for k in group)
        lung = lung_slices[(np.abs(lung_slices[:, None] - group[None, :]) <= extra_slices).any(axis=1)]
        if len(lung) == 0:
            if options.crop_margin is None:
                slabs.append(Slab(z, full, (full,)))
            continue  # no lung here: nothing to keep
        ys = np.flatnonzero(rows[lung].any(axis=0))
        xs = np.flatnonzero(cols[lung].any(axis=0))
        y_lo, y_hi, x_lo, x_hi = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        if options.crop_margin is None:
            outer = full
        else:
            c = options.crop_margin + extra_margin
            outer = (*_aligned(y_lo, y_hi, c, height), *_aligned(x_lo, x_hi, c, width))
        if options.decoder_margin is None:
            slabs.append(Slab(z, outer, (outer,)))
            continue
        m = options.decoder_margin + extra_margin
        gaps = np.diff(xs)
        split = int(gaps.argmax()) if len(gaps) else -1
        if split >= 0 and gaps[split] > 2 * m + 2 * DOWNSAMPLING:  # two lungs apart: two boxes
            parts = [(x_lo, int(xs[split]) + 1), (int(xs[split + 1]), x_hi)]
        else:
            parts = [(x_lo, x_hi)]
        inner = []
        for a, b in parts:
            rows_here = np.flatnonzero(lung_mask[lung, :, a:b].any(axis=(0, 2)))
            box = (*_aligned(int(rows_here[0]), int(rows_here[-1]) + 1, m, height, 2), *_aligned(a, b, m, width, 2))
            inner.append(_clip(box, outer))
        slabs.append(Slab(z, outer, tuple(inner)))
    return slabs


def halo_part(x, box: Box):
    """``x[..., box]`` (coarse coordinates, ``x`` covers them from 0) with one pixel more on every
    side: the real neighbours where ``x`` has them, else the edge pixel repeated. Bilinear
    up-sampling of the result, less two fine pixels on every side, equals the up-sampling of the
    whole of ``x`` restricted to the box (the model clamps at the edge the same way)."""
    y0, y1, x0, x1 = box
    h, w = x.shape[-2:]
    top, bottom, left, right = int(y0 > 0), int(y1 < h), int(x0 > 0), int(x1 < w)
    part = x[..., y0 - top : y1 + bottom, x0 - left : x1 + right]
    pads = (1 - top, 1 - bottom, 1 - left, 1 - right)
    if not any(pads):
        return part
    if isinstance(part, np.ndarray):
        return np.pad(part, ((0, 0), (0, 0), pads[:2], pads[2:]), mode="edge")
    return F.pad(part, (pads[2], pads[3], pads[0], pads[1]), mode="replicate")


def segment_region(run, images, inner: Box | Sequence[Box]) -> np.ndarray | list[np.ndarray]:
    """Labels (uint8 ``[P, h, w]``) of ``images`` (``[P, 1, H, W]``, H and W multiples of 16) over
    ``inner`` (a box with even bounds relative to the images, or a list of boxes: a list of label
    arrays); ``run(name, *inputs)`` runs the part ``name`` ("trunk", "block3", "head"; a runner of
    :mod:`m2unet.runners`).

    Equal to the argmax of ``network.segment(images)`` inside each box away from its edge: the
    encoder and the three coarsest decoding blocks run over the whole window (their receptive
    field is wide), decoding block 3 over the boxes' union grown by 16 pixels, and decoding
    block 2 (full resolution, the costliest) over each box only. The blocks' convolutions pad with
    zeros at the edges of these regions, which changes the output within 3 pixels of an edge that
    is not the window's; labels are kept only well inside."""
    boxes = [inner] if isinstance(inner[0], (int, np.integer)) else list(inner)
    height, width = images.shape[-2:]
    e1, e2, d4 = run("trunk", images)
    union = (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))
    middle = (*_aligned(union[0], union[1], 16, height, 4), *_aligned(union[2], union[3], 16, width, 4))
    my0, my1, mx0, mx1 = (v // 2 for v in middle)  # 1/2 resolution, even
    d3 = run("block3", halo_part(d4, (my0 // 2, my1 // 2, mx0 // 2, mx1 // 2)), e2[..., my0:my1, mx0:mx1])
    results = []
    for y0, y1, x0, x1 in boxes:
        head_box = (y0 // 2 - my0, y1 // 2 - my0, x0 // 2 - mx0, x1 // 2 - mx0)
        labels = run("head", halo_part(d3, head_box), e1[..., y0:y1, x0:x1])
        if isinstance(labels, torch.Tensor):
            labels = labels.to(torch.uint8).cpu().numpy()
        results.append(labels.astype(np.uint8, copy=False))
    return results[0] if isinstance(inner[0], (int, np.integer)) else results


__all__ = ["Box", "Slab", "halo_part", "plan_slabs", "segment_region"]
