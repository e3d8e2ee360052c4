"""Per-patch zoom and rotation (train.augment): image and class map move together, no mirror."""

import numpy as np
import pytest
import torch

from train.augment import random_affine
from train.recipe import GPU_DEMO, Recipe


def _square_patch(p: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """One patch: a bright square on the patient's right (image left) labelled 3, air elsewhere."""
    image = torch.zeros(1, 1, 1, p, p)
    labels = torch.zeros(1, 1, p, p, dtype=torch.int64)
    image[..., 10:22, 4:14] = 200.0
    labels[..., 10:22, 4:14] = 3
    return image, labels


def test_no_jitter_returns_the_batch_unchanged():
    image, labels = _square_patch()
    out_image, out_labels = random_affine(image, labels, scale_jitter=0.0, rotation_jitter_deg=0.0,
                                          generator=torch.Generator().manual_seed(0))
    assert out_image is image and out_labels is labels


def test_image_and_labels_stay_aligned_and_on_their_side():
    image, labels = _square_patch()
    images = image.repeat(4, 8, 1, 1, 1)
    targets = labels.repeat(4, 8, 1, 1)
    out_image, out_labels = random_affine(images, targets, scale_jitter=0.15, rotation_jitter_deg=10.0,
                                          generator=torch.Generator().manual_seed(1))
    assert out_image.shape == images.shape and out_image.dtype == images.dtype
    assert out_labels.shape == targets.shape and out_labels.dtype == torch.int64
    assert set(torch.unique(out_labels).tolist()) <= {0, 3}  # nearest neighbour: no invented classes
    assert not torch.equal(out_image, images)  # it did move
    bright = out_image[:, :, 0] > 100.0
    labelled = out_labels == 3
    agreement = (bright & labelled).sum() / (bright | labelled).sum()
    assert agreement > 0.85  # the map follows the image
    columns = torch.nonzero(labelled)[:, -1].float()
    assert columns.mean() < 16  # still on the image's left (the patient's right): never mirrored


def test_the_same_generator_seed_gives_the_same_batch():
    image, labels = _square_patch()
    images, targets = image.repeat(2, 3, 1, 1, 1), labels.repeat(2, 3, 1, 1)
    first = random_affine(images, targets, scale_jitter=0.1, rotation_jitter_deg=5.0, generator=torch.Generator().manual_seed(7))
    second = random_affine(images, targets, scale_jitter=0.1, rotation_jitter_deg=5.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_bad_shapes_and_settings_are_refused():
    image, labels = _square_patch()
    with pytest.raises(ValueError, match="images must be"):
        random_affine(image[0], None, scale_jitter=0.1, rotation_jitter_deg=0.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="targets"):
        random_affine(image, labels[..., :8], scale_jitter=0.1, rotation_jitter_deg=0.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="scale_jitter"):
        Recipe(scale_jitter=0.7)
    with pytest.raises(ValueError, match="rotation_jitter_deg"):
        Recipe(rotation_jitter_deg=-1.0)


def test_gpu_demo_preset_is_valid_and_augments():
    assert GPU_DEMO.preset == "gpu-demo"
    assert GPU_DEMO.scale_jitter > 0 and GPU_DEMO.rotation_jitter_deg > 0
    assert Recipe.from_dict(GPU_DEMO.to_dict()) == GPU_DEMO
    assert np.isclose(GPU_DEMO.in_plane_spacing_mm, 2.0)
