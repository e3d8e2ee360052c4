"""Preprocessing of a CT volume for M2UNet (Section III-B and III-F).

* Window (Section III-F): intensities clamped to [-1200, 0] HU (width 1200, level -600) and scaled
  to [0, 255].
* Body crop (Section III-B): "we first binarize the image using the threshold of zero, through which
  the human tissues and the gas regions will be separated. Then, the human body region is cropped
  according to the binary mask", at least 256 x 256 in-plane. Our reading: the zero of the paper is
  the boundary between gas and tissue on the intensity scale the authors stored; in Hounsfield units
  gas is below about -900 HU and every tissue of the body, fat included, above about -150 HU, so we
  binarize at ``body_threshold_hu`` (-500 HU by default, the middle of that gap; a threshold of
  0 HU would drop the subcutaneous fat, which is tissue). The body is the largest 3D connected
  component of the binary mask, found on a grid of 4x4-pixel block means (which erases thin
  structures: the table's shells, cables) after a small opening that cuts thin bridges; the crop is
  its bounding box (one block of margin), grown about its centre
  to at least ``min_body_size`` in-plane and clamped to the image (an image smaller than that is
  padded by the consumer).
* Bags (Section III-B): a bag is ``bag_size`` patches of ``patch_size`` x ``patch_size``, each taken
  from one slice of the body region at a random slice and a random position inside the body box;
  where the region is smaller than a patch the patch is padded with the window value 0 (air).
  Sampling is driven by a ``numpy.random.Generator``; :func:`series_seed` derives its seed from a
  series key, so the same series always gives the same bag.
* Resampling: the paper keeps the native resolution (``in_plane_spacing_mm = None``). A float
  resamples each slice in-plane to that pixel spacing (bilinear) before the network; label maps go
  back to the source grid through their logits (bilinear, then argmax) or, where only labels exist,
  by nearest neighbour.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F


@dataclass(frozen=True)
class PreprocessingConfig:
    """Preprocessing constants; stored in the weights' metadata so inference matches training."""

    window_low: float = -1200.0
    window_high: float = 0.0
    patch_size: int = 128
    bag_size: int = 200
    body_threshold_hu: float = -500.0
    min_body_size: int = 256
    in_plane_spacing_mm: float | None = None

    def __post_init__(self) -> None:
        for name in ("window_low", "window_high", "body_threshold_hu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.window_high <= self.window_low:
            raise ValueError(f"window_high ({self.window_high}) must exceed window_low ({self.window_low})")
        for name in ("patch_size", "bag_size", "min_body_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.patch_size % 16:
            raise ValueError(f"patch_size must be a multiple of 16, got {self.patch_size}")
        s = self.in_plane_spacing_mm
        if s is not None and (
            isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0.1 <= s <= 10
        ):
            raise ValueError(f"in_plane_spacing_mm must be None or a spacing in [0.1, 10] mm, got {s!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessingConfig":
        if not isinstance(data, dict):
            raise ValueError(f"preprocessing must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"preprocessing has unknown keys {unknown}")
        return cls(**data)


# -- window -------------------------------------------------------------------------------------


def window(hu: np.ndarray, config: PreprocessingConfig | None = None) -> np.ndarray:
    """Clamp to [window_low, window_high] HU and scale to [0, 255], float32 (Section III-F)."""
    config = config or PreprocessingConfig()
    low, high = float(config.window_low), float(config.window_high)
    out = np.clip(np.asarray(hu, dtype=np.float32), low, high)  # always a new array
    out -= np.float32(low)
    out *= np.float32(255.0 / (high - low))
    return out


# -- body crop ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BodyBox:
    """The body region: half-open index ranges ``[z0, z1) x [y0, y1) x [x0, x1)``."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if not (0 <= self.z0 < self.z1 and 0 <= self.y0 < self.y1 and 0 <= self.x0 < self.x1):
            raise ValueError(f"empty or negative body box {self}")

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return slice(self.z0, self.z1), slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0


BODY_GRID_STEP = 4  # in-plane subsampling for finding the body component


def _grow(start: int, stop: int, minimum: int, limit: int) -> tuple[int, int]:
    """Grow ``[start, stop)`` about its centre to at least ``minimum``, clamped to ``[0, limit)``."""
    size = stop - start
    if size >= minimum:
        return start, stop
    if minimum >= limit:
        return 0, limit
    start -= (minimum - size) // 2
    start = min(max(start, 0), limit - minimum)
    return start, start + minimum


def body_box(hu_volume: np.ndarray, config: PreprocessingConfig | None = None) -> BodyBox:
    """The bounding box of the body (largest component above ``body_threshold_hu``), grown in-plane
    to at least ``min_body_size`` (clamped to the image). Without any voxel above the threshold the
    whole volume is the box."""
    config = config or PreprocessingConfig()
    hu_volume = np.asarray(hu_volume)
    if hu_volume.ndim != 3 or min(hu_volume.shape) < 1:
        raise ValueError(f"hu_volume must be a non-empty (z, y, x) array, got shape {hu_volume.shape}")
    depth, height, width = hu_volume.shape
    step = BODY_GRID_STEP if min(height, width) >= 64 * BODY_GRID_STEP else 1
    rows, cols = height // step, width // step
    coarse = np.empty((depth, rows, cols), dtype=bool)
    for start in range(0, depth, 32):  # block means, slab by slab (small temporaries)
        blocks = hu_volume[start : start + 32, : rows * step, : cols * step].reshape(-1, rows, step, cols, step)
        coarse[start : start + 32] = blocks.mean(axis=(2, 4), dtype=np.float32) > config.body_threshold_hu
    # block means erase structures thinner than about half a block (the table's shells, cables,
    # blankets); a 3x3 opening on the coarse grid then cuts bridges up to about two blocks thick
    opened = ndimage.binary_opening(coarse, structure=np.ones((1, 3, 3), dtype=bool))
    if opened.any():
        coarse = opened
    labels, count = ndimage.label(coarse)
    if count == 0:
        return BodyBox(0, depth, 0, height, 0, width)
    sizes = np.bincount(labels.ravel())  # a coarse grid: small
    sizes[0] = 0
    (zs, ys, xs) = ndimage.find_objects(labels)[int(sizes.argmax()) - 1]
    y0, y1 = max((ys.start - 1) * step, 0), min((ys.stop + 1) * step, height)
    x0, x1 = max((xs.start - 1) * step, 0), min((xs.stop + 1) * step, width)
    y0, y1 = _grow(y0, y1, config.min_body_size, height)
    x0, x1 = _grow(x0, x1, config.min_body_size, width)
    return BodyBox(zs.start, zs.stop, y0, y1, x0, x1)


# -- in-plane resampling ------------------------------------------------------------------------


def resampled_shape(shape_yx: tuple[int, int], spacing_xy: tuple[float, float], target_mm: float) -> tuple[int, int]:
    """In-plane shape after resampling pixels of ``spacing_xy`` (x, y) mm to ``target_mm``."""
    height, width = shape_yx
    sx, sy = spacing_xy
    return max(1, round(height * sy / target_mm)), max(1, round(width * sx / target_mm))


def resample_in_plane(images: np.ndarray, spacing_xy: tuple[float, float], target_mm: float) -> np.ndarray:
    """Resample ``[..., y, x]`` images in-plane (bilinear) to ``target_mm`` pixels, float32."""
    images = np.asarray(images, dtype=np.float32)
    size = resampled_shape(images.shape[-2:], spacing_xy, target_mm)
    if size == images.shape[-2:]:
        return images.copy()
    flat = torch.from_numpy(np.ascontiguousarray(images.reshape(-1, 1, *images.shape[-2:])))
    antialias = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return out.reshape(*images.shape[:-2], *size).numpy()


def restore_in_plane_logits(logits: torch.Tensor, shape_yx: tuple[int, int]) -> torch.Tensor:
    """Logits ``[P, C, h, w]`` on the resampled grid back to the source grid (bilinear); the argmax
    of the result is the label map on the source grid (the preferred inverse)."""
    if tuple(logits.shape[-2:]) == tuple(shape_yx):
        return logits
    return F.interpolate(logits, size=tuple(shape_yx), mode="bilinear", align_corners=False)


def restore_in_plane_labels(labels: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Label maps ``[..., h, w]`` back to the source grid by nearest neighbour (pixel centres)."""
    labels = np.asarray(labels)
    h, w = labels.shape[-2:]
    height, width = shape_yx
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return labels[..., rows[:, None], cols[None, :]]


# -- bags ---------------------------------------------------------------------------------------


def series_seed(key: str | bytes) -> int:
    """A 63-bit seed from a series key (e.g. its SeriesInstanceUID), stable across runs."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise ValueError(f"series key must be str or bytes, got {type(key).__name__}")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & (2**63 - 1)


@dataclass
class Bag:
    """``patches`` float32 ``[n, 1, p, p]`` (windowed), ``slice_index`` ``[n]`` (z of each patch),
    ``origin_yx`` ``[n, 2]`` (row, column of each patch's top-left pixel in the source slice)."""

    patches: np.ndarray
    slice_index: np.ndarray
    origin_yx: np.ndarray


def sample_bag(
    volume: np.ndarray,
    box: BodyBox,
    config: PreprocessingConfig | None = None,
    rng: np.random.Generator | None = None,
    *,
    hu: bool = False,
    bag_size: int | None = None,
) -> Bag:
    """Sample a bag of patches from the body region of ``volume`` (z, y, x).

    ``volume`` is windowed ([0, 255]) unless ``hu=True``, in which case only the sampled patches are
    windowed. Each patch comes from one slice in ``[z0, z1)`` at a position drawn so that it lies
    inside the box; a box narrower than the patch gives a patch padded with 0 after the region.
    """
    config = config or PreprocessingConfig()
    if rng is None:
        raise ValueError("rng is required: pass np.random.default_rng(series_seed(...))")
    volume = np.asarray(volume) if not isinstance(volume, np.ndarray) else volume
    if volume.ndim != 3:
        raise ValueError(f"volume must be (z, y, x), got shape {volume.shape}")
    if box.z1 > volume.shape[0] or box.y1 > volume.shape[1] or box.x1 > volume.shape[2]:
        raise ValueError(f"body box {box} exceeds the volume of shape {volume.shape}")
    n = config.bag_size if bag_size is None else bag_size
    if n < 1:
        raise ValueError(f"bag_size must be positive, got {n}")
    p = config.patch_size
    z = rng.integers(box.z0, box.z1, size=n)
    y = rng.integers(box.y0, max(box.y0, box.y1 - p) + 1, size=n)
    x = rng.integers(box.x0, max(box.x0, box.x1 - p) + 1, size=n)
    patches = np.zeros((n, 1, p, p), dtype=np.float32)
    for i in range(n):
        y_end, x_end = min(int(y[i]) + p, box.y1), min(int(x[i]) + p, box.x1)
        region = volume[int(z[i]), int(y[i]) : y_end, int(x[i]) : x_end]
        patches[i, 0, : region.shape[0], : region.shape[1]] = window(region, config) if hu else region
    return Bag(patches=patches, slice_index=z.astype(np.int64), origin_yx=np.stack([y, x], axis=1).astype(np.int64))
