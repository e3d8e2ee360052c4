"""Where the engine runs: the torch device named in the config, and its precision policy.

``[model] device`` is ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
Asking for CUDA on a machine without it is a configuration error, refused with a ``ValueError``
that says so, never a silent fall-back to the CPU.

Mixed precision: on CUDA the network runs under ``torch.autocast`` in float16 (tensor cores,
about twice the throughput and half the memory); on the CPU it runs in float32, because the
lobe map must match the plain full-precision forward (see ``docs/engine-performance.md``).

bfloat16 on the CPU (training's ``cpu_bfloat16``, the predictor's ``bfloat16_trunk``) pays only
where oneDNN has bfloat16 kernels (AVX-512 or AMX): on an AVX2-only CPU (an AMD EPYC of the Zen 3
generation, for one) a training step of the anatomy preset took 37 s against 1.7 s in float32.
:func:`cpu_native_bfloat16` says which; where it is false both fall back to float32 and say so.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Map ``auto | cpu | cuda | cuda:N`` to a :class:`torch.device` present on this machine."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda":
        index = 0
    else:
        match = _CUDA_INDEX.match(text)
        if match is None:
            raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
        index = int(match.group(1))
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} asks for CUDA, but this machine has no usable CUDA device "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use 'cpu' or 'auto'"
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {name!r}: CUDA device index {index} out of range, this machine has {count}")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class PrecisionPolicy:
    """How the network runs on a device: autocast dtype (None: float32) and memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for a forward pass (a no-op context in float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def precision_policy(device: torch.device) -> PrecisionPolicy:
    """Autocast in float16 on CUDA only; channels-last memory format on both (it pays on CPU
    with oneDNN and on tensor cores)."""
    if device.type == "cuda":
        return PrecisionPolicy(device=device, autocast_dtype=torch.float16, channels_last=True)
    return PrecisionPolicy(device=device, autocast_dtype=None, channels_last=True)


NO_NATIVE_BFLOAT16 = "this CPU has no AVX-512 or AMX bfloat16 kernels, where bfloat16 runs many times slower than float32"


def cpu_native_bfloat16() -> bool:
    """Whether this CPU has oneDNN's bfloat16 kernels (AVX-512 or AMX), where bfloat16 autocast
    is faster than float32 rather than many times slower."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:  # a build without oneDNN
        return False


def describe(device: torch.device) -> str:
    """A short human-readable name of the device, for logs and reports."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
