"""Spatial augmentation of training patches: a random in-plane scale and rotation per patch.

Chests differ in size and sit at slightly different angles on the table, and a network that has
seen only one generator's anatomy learns its exact proportions. Each patch (and its class map,
alike) is zoomed by a factor drawn from ``[1 - scale_jitter, 1 + scale_jitter]`` and rotated by an
angle drawn from ``[-rotation_jitter_deg, +rotation_jitter_deg]`` about its centre; the image is
interpolated bilinearly, the class map by nearest neighbour, and what comes in from outside the
patch is air in the image (0, the window's bottom) and background in the map. There is never a
mirror image: laterality is what the lobe labels encode.

It runs on whatever device the batch is on (one ``grid_sample`` per tensor), after the bags have
been moved there, so on a GPU it costs next to nothing.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def random_affine(
    images: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    scale_jitter: float,
    rotation_jitter_deg: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zoom and rotate every patch of ``images`` ``[B, n, 1, p, p]`` and of ``targets``
    ``[B, n, p, p]`` (or None) by its own random amount; returns tensors of the same shapes, dtypes
    and device. The random numbers come from ``generator`` (a CPU generator, so that a run is the
    same on any device)."""
    if images.ndim != 5 or images.shape[2] != 1:
        raise ValueError(f"images must be [B, n, 1, p, p], got {tuple(images.shape)}")
    if targets is not None and targets.shape != images.shape[:2] + images.shape[3:]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match images {tuple(images.shape)}")
    if not 0.0 <= scale_jitter < 1.0:
        raise ValueError(f"scale_jitter must be in [0, 1), got {scale_jitter!r}")
    if rotation_jitter_deg < 0:
        raise ValueError(f"rotation_jitter_deg must be >= 0, got {rotation_jitter_deg!r}")
    if scale_jitter == 0.0 and rotation_jitter_deg == 0.0:
        return images, targets
    batch, bag, _, height, width = images.shape
    count = batch * bag
    zoom = 1.0 + (torch.rand(count, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * scale_jitter
    angle = (torch.rand(count, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * math.radians(rotation_jitter_deg)
    # affine_grid maps output coordinates to input coordinates: zooming in by z samples a region 1/z as wide
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(count, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    # only the 2 x 3 matrices cross to the device; the grid is built where the patches are
    theta = theta.to(device=images.device, dtype=torch.float32, non_blocking=True)
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)
    flat = images.reshape(count, 1, height, width)
    warped = F.grid_sample(flat.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped_images = warped.to(images.dtype).reshape(images.shape)
    if targets is None:
        return warped_images, None
    labels = targets.reshape(count, 1, height, width).float()
    warped_labels = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped_images, warped_labels.round().to(targets.dtype).reshape(targets.shape)
