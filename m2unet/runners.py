"""Runners: the network prepared for inference and run, part by part, on a device.

The predictor never calls the network itself: every forward goes through a runner, called as
``runner(name, *inputs)`` with numpy arrays or tensors, which returns what the part ``name``
returns (tensors from :class:`TorchRunner`, numpy arrays from the ONNX Runtime sessions of
:class:`OnnxRunner`). The parts:

* ``trunk``, ``block3``, ``head``: the nested decoder of :func:`m2unet.regions.segment_region`
  (the encoder and decoding blocks 5 and 4 over a whole window, decoding block 3 over a region,
  decoding blocks 2 and 1 and the argmax over a region);
* ``segment``: the whole decoder over whole windows, logits (weights trained at another pixel
  spacing, whose slices are resampled and segmented whole);
* ``encoder``: bag patches -> their embedding (the output of encoding block 5);
* ``classifier``: one bag's embeddings -> the severity logits (the two MIL levels).

A runner owns how its parts run: the device, the memory format (channels-last), autocast per
the device's :class:`~m2unet.device.PrecisionPolicy` (float16 on CUDA, float32 on the CPU) and
``torch.inference_mode``. :func:`prepare_network` makes the copy of the model the runners share
(batch norm folded, on the device, no gradients); :func:`make_runner` picks the runner that
``InferenceOptions.runtime`` names (figures in ``docs/engine-performance.md``).
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from m2unet.device import NO_NATIVE_BFLOAT16, PrecisionPolicy, cpu_native_bfloat16, precision_policy
from m2unet.model import WIDTH, DecodingBlock, M2UNet

RUNTIMES = ("auto", "torch", "onnxruntime")


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


def prepare_network(model: M2UNet, device: torch.device, *, fuse_batch_norm: bool, channels_last: bool) -> M2UNet:
    """A copy of ``model`` for inference on ``device``: eval mode, batch norm folded
    (:func:`fold_batch_norm`) when asked, channels-last weights when asked, no gradients."""
    network = fold_batch_norm(model) if fuse_batch_norm else copy.deepcopy(model).eval()
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    for p in network.parameters():
        p.requires_grad_(False)
    return network


# -- the parts ----------------------------------------------------------------------------------


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
    one-pixel halo of :func:`m2unet.regions.halo_part`) and ``skip`` (the encoder output over the
    region)."""

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


class Segment(nn.Module):
    """The whole decoder over whole windows: ``images`` -> segmentation logits ``[P, 7, H, W]``."""

    def __init__(self, network: M2UNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.segment(images)


class Encoder(nn.Module):
    """Encoding blocks 1-5 of bag patches -> the embedding (output of encoding block 5)."""

    def __init__(self, network: M2UNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.network.encode(patches)[-1]


class Classifier(nn.Module):
    """The two MIL levels over one bag: the embeddings of its patches (in chunks, as the encoder
    produced them) -> severity logits ``[1, 2]``."""

    def __init__(self, network: M2UNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, *embeddings: torch.Tensor) -> torch.Tensor:
        embedding = torch.cat(embeddings)
        return self.network.classify(embedding, bag_size=embedding.shape[0])


# -- the runners --------------------------------------------------------------------------------


class TorchRunner:
    """Runs the parts with PyTorch on the predictor's device (channels-last, autocast per policy)."""

    name = "torch"

    def __init__(
        self, network: M2UNet, device: torch.device, policy: PrecisionPolicy, channels_last: bool,
        bfloat16_trunk: bool = False,
    ) -> None:
        self.device = device
        self.policy = policy
        self.channels_last = channels_last
        self.bfloat16_trunk = bfloat16_trunk
        self.parts = {"trunk": Trunk(network).eval(), "encoder": Encoder(network).eval()}
        if network.has_decoder:
            self.parts["block3"] = RegionBlock(network.decoding_block3).eval()
            self.parts["head"] = Head(network).eval()
            self.parts["segment"] = Segment(network).eval()
        if network.has_classifier:
            self.parts["classifier"] = Classifier(network).eval()

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
        if name == "trunk" and self.bfloat16_trunk:
            return self._trunk_bfloat16(*inputs)
        with torch.inference_mode(), self.policy.autocast():
            return self.parts[name](*(self.tensor(x) for x in inputs))

    def _trunk_bfloat16(self, images):
        """The trunk under bfloat16 autocast (the CPU's AVX-512 BF16 or AMX units), its outputs back
        in float32 so that the finer decoding blocks, where the labels are decided, run as before."""
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            outputs = self.parts["trunk"](self.tensor(images))
        return tuple(t.float() for t in outputs)


class OnnxRunner:
    """Runs the parts with ONNX Runtime on the CPU: the nested decoder's parts and the bag encoder,
    each exported once (legacy TorchScript exporter, dynamic batch and size) when the predictor is
    built. The parts not exported (``segment`` and ``classifier``) run with PyTorch on the CPU,
    through a :class:`TorchRunner` (float32, ``channels_last`` inputs as asked)."""

    name = "onnxruntime"

    def __init__(self, network: M2UNet, threads: int | None = None, channels_last: bool = True) -> None:
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
        # (module, example inputs, input names, output names); the decoder's parts only where the
        # weights have a decoder (the trunk runs decoding blocks 5 and 4: none in ``cls_only``)
        exports = {"encoder": (Encoder(network), (torch.zeros(1, 1, 32, 32),), ["patches"], ["embedding"])}
        if network.has_decoder:
            regions = (torch.zeros(1, c, 6, 6), torch.zeros(1, c, 8, 8))
            exports["trunk"] = (Trunk(network), (torch.zeros(1, 1, 64, 64),), ["images"], ["e1", "e2", "d4"])
            exports["block3"] = (RegionBlock(network.decoding_block3), regions, ["part", "skip"], ["out"])
            exports["head"] = (Head(network), regions, ["part", "skip"], ["labels"])
        self.sessions = {}
        for name, (module, args, inputs, outputs) in exports.items():
            module.eval()  # the exporter leaves a module in the mode it found it in: eval, or batch norm would train
            buffer = io.BytesIO()
            axes = {k: {0: "batch", 2: f"{k}_h", 3: f"{k}_w"} for k in inputs + outputs}
            if "labels" in axes:
                axes["labels"] = {0: "batch", 1: "labels_h", 2: "labels_w"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module, args, buffer, dynamo=False, input_names=inputs, output_names=outputs,
                    dynamic_axes=axes, opset_version=17,
                )
            self.sessions[name] = (ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"]), inputs)
        network.eval()
        cpu = torch.device("cpu")
        self.torch = TorchRunner(network, cpu, precision_policy(cpu), channels_last)

    def __call__(self, name: str, *inputs):
        if name not in self.sessions:
            return self.torch(name, *inputs)
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


def make_runner(
    network: M2UNet, device: torch.device, runtime: str, channels_last: bool, bfloat16_trunk: bool = False
) -> TorchRunner | OnnxRunner:
    """The runner ``runtime`` names (:data:`RUNTIMES`) for ``network`` (from :func:`prepare_network`)
    on ``device``: ``torch``, ``onnxruntime`` (CPU only; ``ValueError`` on another device or when
    the packages are missing) or ``auto`` (ONNX Runtime on the CPU when it is installed, else
    torch; torch when ``bfloat16_trunk`` is asked). ``bfloat16_trunk`` (torch on the CPU only) runs
    the trunk under bfloat16 autocast where the CPU has bfloat16 kernels, and is dropped with a
    warning where it has not (it would be many times slower there)."""
    if bfloat16_trunk and (device.type != "cpu" or runtime == "onnxruntime"):
        raise ValueError("bfloat16_trunk is a CPU option of the torch runtime (CUDA runs float16 throughout)")
    if bfloat16_trunk and not cpu_native_bfloat16():
        warnings.warn(f"bfloat16_trunk dropped: {NO_NATIVE_BFLOAT16}; the trunk runs in float32", RuntimeWarning,
                      stacklevel=2)
        bfloat16_trunk = False
    if runtime == "auto":
        onnx = device.type == "cpu" and onnxruntime_available() and not bfloat16_trunk
        runtime = "onnxruntime" if onnx else "torch"
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"runtime 'onnxruntime' runs on the CPU only, not on device {device}")
        if not onnxruntime_available():
            raise ValueError("runtime 'onnxruntime' needs the packages onnxruntime and onnx, which are not installed")
        return OnnxRunner(network, channels_last=channels_last)
    return TorchRunner(network, device, precision_policy(device), channels_last, bfloat16_trunk=bfloat16_trunk)


__all__ = [
    "RUNTIMES",
    "OnnxRunner",
    "TorchRunner",
    "fold_batch_norm",
    "make_runner",
    "onnxruntime_available",
    "prepare_network",
]
