"""Inference: a CT volume in, the lobe map and the severity call out (Section III, at test time).

:class:`Predictor` holds a loaded network and maps a :class:`~m2unet.volume.Volume` to a
:class:`Prediction`:

* the **lobe map** on the source grid, every source slice: the decoder segments whole slices
  (the network is fully convolutional; the paper's patches are a training device), the 7 classes
  are merged to the 5 lobes (:func:`m2unet.labels.to_lobe_map`) and cleaned up
  (:mod:`m2unet.postprocess`: lobes only inside the lungs, no islands);
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
pixels (:func:`segment_region`). Batch norm is folded into the convolutions, tensors are
channels-last, everything runs under ``torch.inference_mode``; ONNX Runtime may replace PyTorch on
the CPU (``InferenceOptions.runtime``). Voxels outside the lungs' boxes are
background, which the clean-up would make them anyway (lobes only inside the lungs). Slices are
windowed a batch at a time: no float32 copy of the volume is held.

Variants (``metadata.variant``): ``seg_only`` weights give ``probability_severe = None`` and
``severity = None``; ``cls_only`` weights give ``lobe_map = None`` and ``class_map = None``.
:attr:`Prediction.has_severity` and :attr:`Prediction.has_lobes` say which; a consumer that needs
both (the node's SEG + SR) calls :meth:`Predictor.require_variant` at start-up and refuses the
weights there, with a message naming the variant.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import structlog
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from m2unet.device import PrecisionPolicy, precision_policy, resolve_device
from m2unet.labels import to_lobe_map
from m2unet.lungs import lung_mask as hu_lung_mask
from m2unet.model import DOWNSAMPLING, WIDTH, DecodingBlock, M2UNet
from m2unet.postprocess import postprocess
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
from m2unet.volume import Volume, validate_volume

log = structlog.get_logger(__name__)

SEVERE = "severe"
NON_SEVERE = "non-severe"
MIN_SLICES = 2  # one slice is a localiser or a single image, not a volume to segment in 3D
DEFAULT_BAGS = 3  # at most; see docs/engine-performance.md, "Bags"
DEFAULT_BAG_MARGIN = 0.05  # more bags only while |mean - threshold| < this
RUNTIMES = ("auto", "torch", "onnxruntime")
STAGES = ("preprocess", "lungs", "segmentation", "classification", "postprocess", "total")


@dataclass(frozen=True)
class InferenceOptions:
    """How segmentation is run; every field leaves the answer as the plain forward gives it
    (within the Dice measured in ``docs/engine-performance.md``) and only changes the cost.

    ``crop_margin``: pixels of context kept around the lungs' in-plane bounding box (None: whole
    slices); ``decoder_margin``: pixels around the lungs where the finest decoding block runs
    (None: over the whole crop; see :func:`segment_region`; 3 is the least that keeps labels exact); ``skip_empty_slices``: slices without lung are background without running the
    network; ``batch_size``: slices per forward; ``fuse_batch_norm`` and ``channels_last``: the
    network's layout; ``patch_batch``: bag patches per encoder forward; ``runtime``: ``torch`` (the
    default), ``onnxruntime`` (CPU only; 1.1-1.35x faster here, 3-6 s of export when the predictor
    is built) or ``auto`` (ONNX Runtime on the CPU when it is installed, else torch).
    """

    crop_margin: int | None = 96
    decoder_margin: int | None = 4
    skip_empty_slices: bool = True
    batch_size: int = 2
    fuse_batch_norm: bool = True
    channels_last: bool = True
    patch_batch: int = 50
    runtime: str = "torch"

    def __post_init__(self) -> None:
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


# -- the network, prepared for inference --------------------------------------------------------


def fold_batch_norm(model: M2UNet) -> M2UNet:
    """A copy of ``model`` (eval mode) with every conv -> batch-norm pair of a ``Sequential`` folded
    into one convolution; outputs equal the original's up to float rounding."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
    return model


def content_seed(hu: np.ndarray) -> int:
    """A 63-bit seed from the array's shape, dtype and bytes (sha256), so that the same volume always
    gives the same bags when the caller has no series key."""
    digest = hashlib.sha256(f"{hu.shape}|{hu.dtype.str}|".encode())
    for z in range(hu.shape[0]):  # one slice at a time: no copy of a non-contiguous volume
        digest.update(np.ascontiguousarray(hu[z]).data)
    return int.from_bytes(digest.digest()[:8], "big") & (2**63 - 1)


# -- where to run the network -------------------------------------------------------------------


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


def plan_slabs(lung_mask: np.ndarray, options: InferenceOptions, extra_margin: int = 0) -> list[Slab]:
    """Group the slices to segment into batches of consecutive slices with their windows.

    ``extra_margin`` (pixels) widens the inner boxes beyond the lungs, for a clean-up that keeps
    labels a little outside the lung mask."""
    depth, height, width = lung_mask.shape
    full = (0, -(-height // DOWNSAMPLING) * DOWNSAMPLING, 0, -(-width // DOWNSAMPLING) * DOWNSAMPLING)
    rows = lung_mask.any(axis=2)  # (z, y)
    cols = lung_mask.any(axis=1)  # (z, x)
    has_lung = rows.any(axis=1)
    slices = np.flatnonzero(has_lung) if options.skip_empty_slices else np.arange(depth)
    slabs = []
    for start in range(0, len(slices), options.batch_size):
        group = slices[start : start + options.batch_size]
        z = tuple(int(k) for k in group)
        lung = group[has_lung[group]]
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
            outer = (*_aligned(y_lo, y_hi, options.crop_margin, height), *_aligned(x_lo, x_hi, options.crop_margin, width))
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


def _halo_part(x, box: Box):
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


class Trunk(nn.Module):
    """The encoder and decoding blocks 5 and 4 over a whole window: ``images`` -> outputs of
    encoding blocks 1 and 2 (skips of the two finest decoding blocks) and of decoding block 4."""

    def __init__(self, network: M2UNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.network
        e1, e2, e3, e4, e5 = n.encode(images)
        d = n.decoding_block4(n.decoding_block5(e5, e4), e3)
        return e1, e2, d


class RegionBlock(nn.Module):
    """A decoding block over a region: ``part`` (the coarse input over the region's half, with the
    halo of :func:`_halo_part`) and ``skip`` (the encoder output over the region)."""

    def __init__(self, block: DecodingBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, part: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(part, scale_factor=2.0, mode="bilinear", align_corners=False)[..., 2:-2, 2:-2]
        return self.block.fuse(torch.cat([self.block.up(up), skip], dim=1))


class Head(nn.Module):
    """Decoding blocks 2 and 1 over a region, then the argmax: labels ``[P, h, w]`` (int64)."""

    def __init__(self, network: M2UNet) -> None:
        super().__init__()
        self.block = RegionBlock(network.decoding_block2)
        self.classes = network.decoding_block1

    def forward(self, part: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.classes(self.block(part, skip)).argmax(dim=1)


class Encoder(nn.Module):
    """Encoding blocks 1-5 of bag patches -> the embedding (output of encoding block 5)."""

    def __init__(self, network: M2UNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.network.encode(patches)[-1]


def segment_region(run, images, inner: Box | Sequence[Box]) -> np.ndarray | list[np.ndarray]:
    """Labels (uint8 ``[P, h, w]``) of ``images`` (``[P, 1, H, W]``, H and W multiples of 16) over
    ``inner`` (a box with even bounds relative to the images, or a list of boxes: a list of label
    arrays); ``run(name, *inputs)`` runs the part ``name`` ("trunk", "block3", "head").

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
    d3 = run("block3", _halo_part(d4, (my0 // 2, my1 // 2, mx0 // 2, mx1 // 2)), e2[..., my0:my1, mx0:mx1])
    results = []
    for y0, y1, x0, x1 in boxes:
        head_box = (y0 // 2 - my0, y1 // 2 - my0, x0 // 2 - mx0, x1 // 2 - mx0)
        labels = run("head", _halo_part(d3, head_box), e1[..., y0:y1, x0:x1])
        if isinstance(labels, torch.Tensor):
            labels = labels.to(torch.uint8).cpu().numpy()
        results.append(labels.astype(np.uint8, copy=False))
    return results[0] if isinstance(inner[0], (int, np.integer)) else results


class TorchRunner:
    """Runs the parts with PyTorch on the predictor's device (channels-last, autocast per policy)."""

    name = "torch"

    def __init__(self, network: M2UNet, device: torch.device, policy: PrecisionPolicy, channels_last: bool) -> None:
        self.device = device
        self.policy = policy
        self.channels_last = channels_last
        self.parts = {"trunk": Trunk(network).eval(), "encoder": Encoder(network).eval()}
        if network.has_decoder:
            self.parts["block3"] = RegionBlock(network.decoding_block3).eval()
            self.parts["head"] = Head(network).eval()

    def tensor(self, array) -> torch.Tensor:
        tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        if tensor.device != self.device:
            if self.device.type == "cuda":
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            else:
                tensor = tensor.to(self.device)
        if self.channels_last and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def __call__(self, name: str, *inputs):
        with torch.inference_mode(), self.policy.autocast():
            return self.parts[name](*(self.tensor(x) for x in inputs))


class OnnxRunner:
    """Runs the parts with ONNX Runtime on the CPU: each part exported once (legacy TorchScript
    exporter, dynamic batch and size) when the predictor is built."""

    name = "onnxruntime"

    def __init__(self, network: M2UNet, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no memory arena: with crops of changing size it keeps the largest of everything (+1.5 GiB
        # resident on a 300-slice study); plain allocations cost no measurable time here
        options.enable_cpu_mem_arena = False
        network = network.float().to("cpu").to(memory_format=torch.contiguous_format).eval()
        c = WIDTH
        examples = {
            "trunk": ((torch.zeros(1, 1, 64, 64),), ["images"], ["e1", "e2", "d4"]),
            "encoder": ((torch.zeros(1, 1, 32, 32),), ["patches"], ["embedding"]),
        }
        if network.has_decoder:
            examples["block3"] = ((torch.zeros(1, c, 6, 6), torch.zeros(1, c, 8, 8)), ["part", "skip"], ["out"])
            examples["head"] = ((torch.zeros(1, c, 6, 6), torch.zeros(1, c, 8, 8)), ["part", "skip"], ["labels"])
        modules = {
            "trunk": Trunk(network), "encoder": Encoder(network),
            "block3": RegionBlock(network.decoding_block3) if network.has_decoder else None,
            "head": Head(network) if network.has_decoder else None,
        }
        # the exporter leaves a module in the mode it found it in: eval, or batch norm would train
        modules = {k: (v.eval() if v is not None else None) for k, v in modules.items()}
        self.sessions = {}
        for name, (args, inputs, outputs) in examples.items():
            buffer = io.BytesIO()
            axes = {k: {0: "batch", 2: f"{k}_h", 3: f"{k}_w"} for k in inputs + outputs}
            if "labels" in axes:
                axes["labels"] = {0: "batch", 1: "labels_h", 2: "labels_w"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    modules[name], args, buffer, dynamo=False, input_names=inputs, output_names=outputs,
                    dynamic_axes=axes, opset_version=17,
                )
            self.sessions[name] = (ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"]), inputs)
        network.eval()

    def __call__(self, name: str, *inputs):
        session, names = self.sessions[name]
        feed = {}
        for key, value in zip(names, inputs):
            if isinstance(value, torch.Tensor):
                value = value.numpy()
            feed[key] = np.ascontiguousarray(value, dtype=np.float32)
        outputs = session.run(None, feed)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


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
        self.policy: PrecisionPolicy = precision_policy(self.device)
        self.options = options or InferenceOptions.for_device(self.device)
        self.metadata = metadata
        self.sha256 = sha256
        self.bags = bags
        self.bag_margin = bag_margin
        self.variant = model.variant
        self.preprocessing: PreprocessingConfig = metadata.preprocessing_config
        self.threshold = float(metadata.threshold)
        network = fold_batch_norm(model) if self.options.fuse_batch_norm else copy.deepcopy(model).eval()
        network = network.to(self.device)
        if self.options.channels_last:
            network = network.to(memory_format=torch.channels_last)
        for p in network.parameters():
            p.requires_grad_(False)
        self.network = network
        runtime = self.options.runtime
        if runtime == "auto":
            runtime = "onnxruntime" if self.device.type == "cpu" and onnxruntime_available() else "torch"
        if runtime == "onnxruntime":
            if self.device.type != "cpu":
                raise ValueError(f"runtime 'onnxruntime' runs on the CPU only, not on device {self.device}")
            if not onnxruntime_available():
                raise ValueError("runtime 'onnxruntime' needs the packages onnxruntime and onnx, which are not installed")
            self.runner = OnnxRunner(network)
        else:
            self.runner = TorchRunner(network, self.device, self.policy, self.options.channels_last)

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
                class_map = self.clean_up(volume, raw, lungs)
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

    def clean_up(self, volume: Volume, class_map: np.ndarray, lung_mask: np.ndarray) -> np.ndarray:
        """The clean-up of :func:`m2unet.postprocess.postprocess`: labels only inside the lungs, one
        component per class, lung voxels without a label filled from the nearest."""
        return np.asarray(postprocess(class_map, lung_mask, volume.spacing), dtype=np.uint8)

    def _tensor(self, array) -> torch.Tensor:
        """An array or tensor as a tensor on this predictor's device, in its memory format."""
        tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        tensor = tensor.to(self.device)
        if self.options.channels_last and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def segment(self, volume: Volume, lung_mask: np.ndarray) -> np.ndarray:
        """The decoder's 7-class label map (uint8, source grid) before the clean-up; 0 outside the
        windows of :func:`plan_slabs`."""
        hu = volume.hu
        height, width = hu.shape[1:]
        class_map = np.zeros(hu.shape, dtype=np.uint8)
        target = self.preprocessing.in_plane_spacing_mm
        spacing_xy = (float(volume.spacing[0]), float(volume.spacing[1]))
        for slab in plan_slabs(lung_mask, self.options):
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
        with torch.inference_mode(), self.policy.autocast():
            logits = self.network.segment(self._tensor(images))[..., : size[0], : size[1]].float()
            labels = []
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
                embeddings.append(self._tensor(self.runner("encoder", chunk)))
            with torch.inference_mode(), self.policy.autocast():
                logits = self.network.classify(torch.cat(embeddings), bag_size=len(patches)).float()
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
    "OnnxRunner",
    "Prediction",
    "Predictor",
    "RUNTIMES",
    "SEVERE",
    "STAGES",
    "Slab",
    "TorchRunner",
    "content_seed",
    "fold_batch_norm",
    "onnxruntime_available",
    "plan_slabs",
    "segment_region",
]
