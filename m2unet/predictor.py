"""Inference: a CT volume in, the lobe map and the severity call out (Section III, at test time).

:class:`Predictor` holds a loaded network and maps a :class:`~m2unet.volume.Volume` to a
:class:`Prediction`:

* the **lobe map** on the source grid, every source slice: the decoder segments whole slices
  (the network is fully convolutional; the paper's patches are a training device), the 7 classes
  are merged to the 5 lobes (:func:`m2unet.labels.to_lobe_map`) and cleaned up
  (:mod:`m2unet.postprocess`: no islands, enclosed cavities filled; the lung is what the network
  paints, consolidated lung included, not a Hounsfield threshold);
* the **probability of severe**: the paper's test-time input, a bag of 200 patches of 128 x 128 from
  the body region (:func:`m2unet.preprocessing.sample_bag`), through the encoder and the two MIL
  levels. Bags are drawn from one generator seeded from the series: the first always, more (up to
  ``bags``) only while the running mean lies within ``bag_margin`` of the threshold, where a second
  opinion can change the call; the call is "severe" when the mean reaches the weights' threshold.

How it is made fast on a CPU without changing the answer (figures in ``docs/engine-performance.md``):
segmentation runs only on slices that hold lung (:mod:`m2unet.lungs`), two consecutive slices per
forward, cropped to the lungs' in-plane bounding box plus a context margin of 96 pixels (the
network's receptive field is wide: where the crop cuts through the body the convolutions see zero
padding, and a smaller margin changes labels inside the lungs), the crop aligned to the network's
16-pixel pooling grid so that every 2x2 max-pooling sees the same pixels as on the whole slice.
Inside the crop the full-resolution decoding block, the costliest, runs only over the lungs plus 4
pixels. Those regions are planned and the decoder nested in them by :mod:`m2unet.regions`
(:func:`~m2unet.regions.plan_slabs`, :func:`~m2unet.regions.segment_region`). Every forward goes
through a runner of :mod:`m2unet.runners`: batch norm is folded into the convolutions, tensors
are channels-last, everything runs under ``torch.inference_mode``; ONNX Runtime may replace
PyTorch on the CPU (``InferenceOptions.runtime``). Voxels outside the lungs' boxes are
background (the boxes are planned on the HU lung mask with a margin around it). Slices are
windowed a batch at a time: no float32 copy of the volume is held.

Variants (``metadata.variant``): ``seg_only`` weights give ``probability_severe = None`` and
``severity = None``; ``cls_only`` weights give ``lobe_map = None`` and ``class_map = None``.
:attr:`Prediction.has_severity` and :attr:`Prediction.has_lobes` say which; a consumer that needs
both (the node's SEG + SR) calls :meth:`Predictor.require_variant` at start-up and refuses the
weights there, with a message naming the variant.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import structlog
import torch

from m2unet.device import resolve_device
from m2unet.labels import to_lobe_map
from m2unet.lungs import lung_mask as hu_lung_mask
from m2unet.model import M2UNet
from m2unet.postprocess import network_lungs, postprocess
from m2unet.preprocessing import (
    BodyBox,
    PreprocessingConfig,
    body_box,
    resample_in_plane,
    resampled_shape,
    restore_in_plane_logits,
    sample_bag,
    window,
)
from m2unet.regions import Box, Slab, plan_slabs, segment_region
from m2unet.runners import RUNTIMES, make_runner, prepare_network
from m2unet.volume import Volume, validate_volume

log = structlog.get_logger(__name__)

SEVERE = "severe"
NON_SEVERE = "non-severe"
MIN_SLICES = 2  # one slice is a localiser or a single image, not a volume to segment in 3D
DEFAULT_BAGS = 3  # at most; see docs/engine-performance.md, "Bags"
DEFAULT_BAG_MARGIN = 0.05  # more bags only while |mean - threshold| < this
STAGES = ("preprocess", "lungs", "segmentation", "classification", "postprocess", "total")


@dataclass(frozen=True)
class InferenceOptions:
    """How segmentation is run; every field leaves the answer as the plain forward gives it
    (within the Dice measured in ``docs/engine-performance.md``) and only changes the cost.

    ``crop_margin``: pixels of context kept around the lungs' in-plane bounding box (None: whole
    slices); ``decoder_margin``: pixels around the lungs where the finest decoding block runs
    (None: over the whole crop; see :func:`m2unet.regions.segment_region`; 3 is the least that
    keeps labels exact); ``skip_empty_slices``: slices without lung are background without running
    the network; ``batch_size``: slices per forward; ``fuse_batch_norm`` and ``channels_last``: the
    network's layout; ``patch_batch``: bag patches per encoder forward; ``runtime``: ``torch`` (the
    default), ``onnxruntime`` (CPU only; 1.1-1.35x faster here, 3-6 s of export when the predictor
    is built) or ``auto`` (ONNX Runtime on the CPU when it is installed, else torch);
    ``bfloat16_trunk``: on the CPU with torch, the encoder and decoding blocks 5-4 in bfloat16
    (faster where the CPU has BF16 units; labels change slightly, see the document);
    ``lung_reach_mm``: how far beyond the HU lung mask, in-plane and across slices, the decoder runs
    and keeps labels (:func:`m2unet.regions.plan_slabs`' ``extra_margin`` and ``extra_slices``): the
    threshold mask loses consolidated lung at the pleura and the base, the network does not (0: the
    mask's own extent).
    """

    crop_margin: int | None = 96
    decoder_margin: int | None = 4
    skip_empty_slices: bool = True
    batch_size: int = 2
    fuse_batch_norm: bool = True
    channels_last: bool = True
    patch_batch: int = 50
    runtime: str = "torch"
    bfloat16_trunk: bool = False
    lung_reach_mm: float = 20.0

    def __post_init__(self) -> None:
        reach = self.lung_reach_mm
        if isinstance(reach, bool) or not isinstance(reach, (int, float)) or not 0.0 <= reach < float("inf"):
            raise ValueError(f"lung_reach_mm must be a finite number >= 0, got {reach!r}")
        for name in ("crop_margin", "decoder_margin"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or a non-negative integer, got {value!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        for name in ("batch_size", "patch_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def for_device(cls, device: torch.device) -> "InferenceOptions":
        if device.type == "cuda":
            return cls(batch_size=16, patch_batch=200)
        return cls()


@dataclass(frozen=True)
class Prediction:
    """The engine's answer for one volume.

    ``lobe_map`` (uint8, z-y-x, the source grid, :class:`m2unet.labels.Lobe` labels, 0 elsewhere)
    and ``class_map`` (uint8, the 7 decoder classes after the same clean-up; the lobe map is its
    :func:`~m2unet.labels.to_lobe_map`) are None for ``cls_only`` weights; ``raw_class_map`` is
    the decoder's map before the clean-up, kept only when asked (``keep_raw``); ``probability_severe`` (mean over the ``bags`` bags drawn) and ``severity`` ("severe" |
    "non-severe", ``probability_severe >= threshold``) are None for ``seg_only`` weights.
    ``bag_probabilities`` holds each bag's probability, ``bags`` their number. ``timings``: seconds
    per stage (:data:`STAGES`).
    """

    lobe_map: np.ndarray | None
    class_map: np.ndarray | None
    probability_severe: float | None
    severity: str | None
    threshold: float
    timings: dict[str, float]
    model_name: str
    model_version: str
    weights_sha256: str
    device: str
    bags: int
    variant: str = "m2unet"
    seed: int = 0
    bag_probabilities: tuple[float, ...] = ()
    lung_slices: int = 0
    trained: bool = False
    caution: str = ""
    raw_class_map: np.ndarray | None = field(default=None, repr=False)

    @property
    def has_lobes(self) -> bool:
        return self.lobe_map is not None

    @property
    def has_severity(self) -> bool:
        return self.probability_severe is not None


# -- bags ---------------------------------------------------------------------------------------


def content_seed(hu: np.ndarray) -> int:
    """A 63-bit seed from the array's shape, dtype and bytes (sha256), so that the same volume always
    gives the same bags when the caller has no series key."""
    digest = hashlib.sha256(f"{hu.shape}|{hu.dtype.str}|".encode())
    for z in range(hu.shape[0]):  # one slice at a time: no copy of a non-contiguous volume
        digest.update(np.ascontiguousarray(hu[z]).data)
    return int.from_bytes(digest.digest()[:8], "big") & (2**63 - 1)


# -- the predictor ------------------------------------------------------------------------------


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


class Predictor:
    """A loaded M2UNet ready to map volumes to :class:`Prediction` s."""

    def __init__(
        self,
        model: M2UNet,
        metadata,
        sha256: str,
        device: str | torch.device = "auto",
        bags: int = DEFAULT_BAGS,
        options: InferenceOptions | None = None,
        bag_margin: float | None = DEFAULT_BAG_MARGIN,
    ) -> None:
        if not isinstance(model, M2UNet):
            raise ValueError(f"model must be an M2UNet, got {type(model).__name__}")
        if isinstance(bags, bool) or not isinstance(bags, int) or not 1 <= bags <= 64:
            raise ValueError(f"bags must be an integer in 1..64, got {bags!r}")
        if bag_margin is not None and (isinstance(bag_margin, bool) or not isinstance(bag_margin, (int, float)) or not 0 <= bag_margin <= 1):
            raise ValueError(f"bag_margin must be None or a number in [0, 1], got {bag_margin!r}")
        if getattr(metadata, "variant", model.variant) != model.variant:
            raise ValueError(f"metadata variant {metadata.variant!r} does not match the model's {model.variant!r}")
        self.device = resolve_device(device)
        self.options = options or InferenceOptions.for_device(self.device)
        self.metadata = metadata
        self.sha256 = sha256
        self.bags = bags
        self.bag_margin = bag_margin
        self.variant = model.variant
        self.preprocessing: PreprocessingConfig = metadata.preprocessing_config
        self.threshold = float(metadata.threshold)
        self.network = prepare_network(
            model, self.device, fuse_batch_norm=self.options.fuse_batch_norm, channels_last=self.options.channels_last
        )
        self.runner = make_runner(self.network, self.device, self.options.runtime, self.options.channels_last,
                                  bfloat16_trunk=self.options.bfloat16_trunk)

    @classmethod
    def from_weights(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        bags: int = DEFAULT_BAGS,
        options: InferenceOptions | None = None,
        bag_margin: float | None = DEFAULT_BAG_MARGIN,
    ) -> "Predictor":
        """Load a weights file (None: the shipped weights) onto ``device``. ``bags``: at most this
        many bags; ``bag_margin``: draw another only while the mean is this close to the threshold
        (None: always draw ``bags``)."""
        from m2unet.weights import default_weights_path, load_weights

        resolved = resolve_device(device)  # refuse an absent CUDA before reading the file
        loaded = load_weights(Path(path) if path is not None else default_weights_path(), "cpu")
        return cls(loaded.model, loaded.metadata, loaded.sha256, resolved, bags=bags, options=options, bag_margin=bag_margin)

    @property
    def has_lobes(self) -> bool:
        return self.network.has_decoder

    @property
    def has_severity(self) -> bool:
        return self.network.has_classifier

    def require_variant(self, *, lobes: bool = True, severity: bool = True) -> None:
        """Raise ``ValueError`` when the weights lack a sub-network the caller needs."""
        if lobes and not self.has_lobes:
            raise ValueError(f"weights variant {self.variant!r} has no segmentation sub-network (no lobe map)")
        if severity and not self.has_severity:
            raise ValueError(f"weights variant {self.variant!r} has no classification sub-network (no severity)")

    # -- public ---------------------------------------------------------------------------------
    def predict(self, volume: Volume, seed: int | None = None, *, keep_raw: bool = False) -> Prediction:
        """Segment the lobes and assess severity; ``seed`` drives the bag sampling (None: derived
        from the volume's content; the node passes ``series_seed(SeriesInstanceUID)``).
        ``keep_raw`` keeps the decoder's class map before the clean-up in ``raw_class_map``."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with _stage(timings, "preprocess"):
            self._check_input(volume)
            if seed is None:
                seed = content_seed(volume.hu)
            elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
                raise ValueError(f"seed must be None or an integer in [0, 2**63), got {seed!r}")
            seed = int(seed)
            box = body_box(volume.hu, self.preprocessing)
        lungs = None
        raw = class_map = lobe_map = None
        lung_slices = 0
        if self.has_lobes:
            with _stage(timings, "lungs"):
                lungs = self.lung_mask(volume)
                lung_slices = int(lungs.any(axis=(1, 2)).sum())
            with _stage(timings, "segmentation"):
                raw = self.segment(volume, lungs)
        bag_probabilities: tuple[float, ...] = ()
        probability = severity = None
        if self.has_severity:
            with _stage(timings, "classification"):
                bag_probabilities = self.classify(volume, box, seed)
                probability = float(np.mean(bag_probabilities))
                severity = SEVERE if probability >= self.threshold else NON_SEVERE
        if raw is not None:
            with _stage(timings, "postprocess"):
                class_map = self.clean_up(volume, raw)
                lobe_map = to_lobe_map(class_map)
        for stage in STAGES[:-1]:
            timings.setdefault(stage, 0.0)
        timings["total"] = time.perf_counter() - started
        log.info(
            "predicted",
            slices=volume.shape[0],
            lung_slices=lung_slices,
            severity=severity,
            probability_severe=None if probability is None else round(probability, 4),
            seconds=round(timings["total"], 3),
            device=str(self.device),
        )
        return Prediction(
            lobe_map=lobe_map,
            class_map=class_map,
            probability_severe=probability,
            severity=severity,
            threshold=self.threshold,
            timings=timings,
            model_name=self.metadata.name,
            model_version=self.metadata.version,
            weights_sha256=self.sha256,
            device=str(self.device),
            bags=len(bag_probabilities),
            variant=self.variant,
            seed=seed,
            bag_probabilities=bag_probabilities,
            lung_slices=lung_slices,
            trained=bool(getattr(self.metadata, "trained", False)),
            caution=str(getattr(self.metadata, "caution", "")),
            raw_class_map=raw if keep_raw else None,
        )

    # -- stages ---------------------------------------------------------------------------------
    def _check_input(self, volume: Volume) -> None:
        if not isinstance(volume, Volume):
            raise ValueError(f"volume must be an m2unet.volume.Volume, got {type(volume).__name__}")
        validate_volume(volume)  # again: the array may have been changed since construction
        if volume.shape[0] < MIN_SLICES:
            raise ValueError(f"volume has {volume.shape[0]} slice(s); at least {MIN_SLICES} are needed")

    def lung_mask(self, volume: Volume) -> np.ndarray:
        """The HU lung mask of :func:`m2unet.lungs.lung_mask` (bool, z-y-x)."""
        return np.asarray(hu_lung_mask(volume), dtype=bool)

    def clean_up(self, volume: Volume, class_map: np.ndarray) -> np.ndarray:
        """The clean-up of :func:`m2unet.postprocess.postprocess` inside the network's own lungs
        (:func:`m2unet.postprocess.network_lungs`, consolidation included, which the HU mask would
        cut away): one component per class, enclosed cavities filled from the nearest label. On
        CUDA the same clean-up runs on the device (:func:`m2unet.postprocess_torch.postprocess_tensor`,
        the same labels), the map moved there once."""
        if self.device.type == "cuda":
            from m2unet.postprocess_torch import postprocess_tensor

            raw = torch.from_numpy(np.ascontiguousarray(class_map, dtype=np.uint8)).to(self.device)
            return postprocess_tensor(raw, volume.spacing).cpu().numpy()
        return np.asarray(postprocess(class_map, network_lungs(class_map), volume.spacing), dtype=np.uint8)

    def segment(self, volume: Volume, lung_mask: np.ndarray) -> np.ndarray:
        """The decoder's 7-class label map (uint8, source grid) before the clean-up; 0 outside the
        windows of :func:`m2unet.regions.plan_slabs`."""
        hu = volume.hu
        height, width = hu.shape[1:]
        class_map = np.zeros(hu.shape, dtype=np.uint8)
        target = self.preprocessing.in_plane_spacing_mm
        spacing_xy = (float(volume.spacing[0]), float(volume.spacing[1]))
        reach = self.options.lung_reach_mm
        extra_margin = math.floor(reach / min(spacing_xy) + 1e-9)  # pixels within the reach
        extra_slices = math.floor(reach / float(volume.spacing[2]) + 1e-9)
        for slab in plan_slabs(lung_mask, self.options, extra_margin, extra_slices):
            z = list(slab.z)
            if target is None:
                self._segment_native(hu, z, slab, class_map)
            else:
                labels, (y0, y1, x0, x1) = self._segment_resampled(hu, z, slab, spacing_xy, target)
                class_map[z, y0:y1, x0:x1] = labels
        return class_map

    def _segment_native(self, hu: np.ndarray, z: list[int], slab: Slab, class_map: np.ndarray) -> None:
        height, width = hu.shape[1:]
        oy0, oy1, ox0, ox1 = slab.outer
        images = np.zeros((len(z), 1, oy1 - oy0, ox1 - ox0), dtype=np.float32)
        ey, ex = min(oy1, height), min(ox1, width)
        images[:, 0, : ey - oy0, : ex - ox0] = window(hu[z, oy0:ey, ox0:ex], self.preprocessing)
        boxes = [(y0 - oy0, y1 - oy0, x0 - ox0, x1 - ox0) for y0, y1, x0, x1 in slab.inner]
        for (y0, y1, x0, x1), labels in zip(slab.inner, segment_region(self.runner, images, boxes)):
            ky, kx = min(y1, height) - y0, min(x1, width) - x0  # the part inside the image
            class_map[z, y0 : y0 + ky, x0 : x0 + kx] = labels[..., :ky, :kx]

    def _segment_resampled(
        self, hu: np.ndarray, z: list[int], slab: Slab, spacing_xy: tuple[float, float], target: float
    ) -> tuple[np.ndarray, Box]:
        """Weights trained at another pixel spacing: whole slices resampled in-plane and segmented
        whole (a crop's margin would have to be counted in resampled pixels, which at 2 mm spans
        the slice anyway), the logits brought back to the source grid (bilinear) over the rows and
        columns of the slab's inner boxes, then the argmax."""
        height, width = hu.shape[1:]
        images = self._resampled_images(window(hu[z], self.preprocessing), spacing_xy, target)
        size = resampled_shape((height, width), spacing_xy, target)
        y0, y1 = min(b[0] for b in slab.inner), min(max(b[1] for b in slab.inner), height)
        x0, x1 = min(b[2] for b in slab.inner), min(max(b[3] for b in slab.inner), width)
        logits = self.runner("segment", images)[..., : size[0], : size[1]].float()
        labels = []
        with torch.inference_mode():
            for k in range(len(z)):  # one slice at a time: 7 float channels of a whole slice each
                restored = restore_in_plane_logits(logits[k : k + 1], (height, width))
                labels.append(restored[0, :, y0:y1, x0:x1].argmax(dim=0).to(torch.uint8).cpu().numpy())
        return np.stack(labels), (y0, y1, x0, x1)

    @staticmethod
    def _resampled_images(windowed: np.ndarray, spacing_xy: tuple[float, float], target: float) -> np.ndarray:
        resampled = resample_in_plane(windowed, spacing_xy, target)
        h, w = resampled.shape[-2:]
        images = np.zeros((len(resampled), 1, -(-h // 16) * 16, -(-w // 16) * 16), dtype=np.float32)
        images[:, 0, :h, :w] = resampled
        return images

    def classify(self, volume: Volume, box: BodyBox, seed: int) -> tuple[float, ...]:
        """The probability of severe of each bag drawn from ``default_rng(seed)``: the first, then
        more (up to ``bags``) while their mean is within ``bag_margin`` of the threshold."""
        rng = np.random.default_rng(seed)
        config = self.preprocessing
        source, bag_box, hu_input = volume.hu, box, True
        if config.in_plane_spacing_mm is not None:
            source, bag_box = self._resampled_body(volume, box)
            hu_input = False
        probabilities = []
        for _ in range(self.bags):
            if probabilities and self.bag_margin is not None:
                if abs(float(np.mean(probabilities)) - self.threshold) >= self.bag_margin:
                    break
            bag = sample_bag(source, bag_box, config, rng, hu=hu_input)
            patches = bag.patches
            embeddings = []
            for start in range(0, len(patches), self.options.patch_batch):
                chunk = np.ascontiguousarray(patches[start : start + self.options.patch_batch])
                embeddings.append(self.runner("encoder", chunk))
            logits = self.runner("classifier", *embeddings).float()  # one bag: the two MIL levels
            with torch.inference_mode():
                probabilities.append(float(torch.softmax(logits, dim=1)[0, 1]))
        return tuple(probabilities)

    def _resampled_body(self, volume: Volume, box: BodyBox) -> tuple[np.ndarray, BodyBox]:
        """The body region's slices windowed and resampled in-plane (float32), and the box in it."""
        target = float(self.preprocessing.in_plane_spacing_mm)
        spacing_xy = (float(volume.spacing[0]), float(volume.spacing[1]))
        zs, ys, xs = box.slices
        h, w = resampled_shape((box.y1 - box.y0, box.x1 - box.x0), spacing_xy, target)
        out = np.empty((box.z1 - box.z0, h, w), dtype=np.float32)
        for start in range(box.z0, box.z1, 32):
            stop = min(start + 32, box.z1)
            windowed = window(volume.hu[start:stop, ys, xs], self.preprocessing)
            out[start - box.z0 : stop - box.z0] = resample_in_plane(windowed, spacing_xy, target)
        return out, BodyBox(0, box.z1 - box.z0, 0, h, 0, w)


__all__ = [
    "DEFAULT_BAGS",
    "InferenceOptions",
    "MIN_SLICES",
    "NON_SEVERE",
    "Prediction",
    "Predictor",
    "SEVERE",
    "STAGES",
    "content_seed",
]
