"""The weights file: an M2UNet state dict with the metadata needed to use it.

One file written by ``torch.save`` holding a plain dict::

    {"format": "m2unet-weights", "format_version": 1,
     "metadata": {...WeightsMetadata...}, "state_dict": {...}}

read back with ``torch.load(weights_only=True)`` (no pickled code runs). Tensors may be stored as
float16 to halve the file; they are cast to float32 on load. Batch-norm running statistics are part
of the state dict. A file that is missing, truncated, not a torch archive, of another format or
version, for an unknown variant, whose tensors do not fit the variant, or whose label map is not the
7 classes of Table I is refused with a :class:`WeightsError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import io
import numbers
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import structlog
import torch

from m2unet.labels import NUM_CLASSES, label_map_metadata
from m2unet.model import VARIANTS, M2UNet
from m2unet.preprocessing import PreprocessingConfig

FORMAT = "m2unet-weights"
FORMAT_VERSION = 1
MODEL_NAME = "M2UNet"
UNTRAINED_DESCRIPTION = "untrained: random initialisation, for tests only"
DEFAULT_WEIGHTS_FILE = "m2unet-demo.pt"

log = structlog.get_logger(__name__)


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"weights file {self.path}: {problem}")


def _plain(value, where: str):
    """``value`` as plain JSON-like Python (dict with str keys, list, str, int, float, bool, None),
    numpy scalars and arrays converted, so that ``torch.load(weights_only=True)`` can read it."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise ValueError(f"{where} holds a {type(value).__name__}; only JSON-like values can be stored")


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


@dataclass(frozen=True)
class WeightsMetadata:
    """What a weights file says about itself.

    ``threshold`` is the decision threshold on the probability of severe; ``trained`` is False for
    random weights, which must never be described as trained; ``caution`` is a short warning that
    every result made with the weights must carry (the shipped demo weights: trained on synthetic
    phantoms only, not for clinical use), empty for weights validated for their use.
    """

    version: str
    variant: str = "m2unet"
    name: str = MODEL_NAME
    label_map: dict[str, str] = field(default_factory=label_map_metadata)
    preprocessing: dict = field(default_factory=lambda: PreprocessingConfig().to_dict())
    threshold: float = 0.5
    training_data: str = UNTRAINED_DESCRIPTION
    trained: bool = False
    created: str = field(default_factory=_today)
    metrics: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    caution: str = ""  # a warning every result made with these weights carries ("" for none)

    def __post_init__(self) -> None:
        if isinstance(self.preprocessing, PreprocessingConfig):
            object.__setattr__(self, "preprocessing", self.preprocessing.to_dict())
        for name in ("label_map", "preprocessing", "metrics", "recipe"):
            object.__setattr__(self, name, _plain(getattr(self, name), name))
        if isinstance(self.threshold, numbers.Real) and not isinstance(self.threshold, bool):
            object.__setattr__(self, "threshold", float(self.threshold))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.version, str) or not self.version:
            raise ValueError(f"version must be a non-empty string, got {self.version!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant {self.variant!r} is unknown (known: {', '.join(VARIANTS)})")
        label_map = self.label_map
        expected_keys = {str(i) for i in range(NUM_CLASSES)}
        if not isinstance(label_map, dict) or set(label_map) != expected_keys:
            got = sorted(label_map) if isinstance(label_map, dict) else type(label_map).__name__
            raise ValueError(f"label map must name the {NUM_CLASSES} classes 0..{NUM_CLASSES - 1}, got {got}")
        if not all(isinstance(v, str) and v for v in label_map.values()):
            raise ValueError("label map names must be non-empty strings")
        PreprocessingConfig.from_dict(self.preprocessing)  # validates
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {t!r}")
        if not isinstance(self.trained, bool):
            raise ValueError(f"trained must be true or false, got {self.trained!r}")
        if not isinstance(self.training_data, str) or not self.training_data:
            raise ValueError("training_data must describe the training data (non-empty string)")
        if not self.trained and "untrained" not in self.training_data:
            raise ValueError(f"untrained weights must say so in training_data, got {self.training_data!r}")
        if self.trained and self.training_data == UNTRAINED_DESCRIPTION:
            raise ValueError(f"trained weights need a description of their training data, got {self.training_data!r}")
        try:
            datetime.fromisoformat(self.created)
        except (TypeError, ValueError):
            raise ValueError(f"created must be an ISO date, got {self.created!r}") from None
        if not isinstance(self.caution, str):
            raise ValueError(f"caution must be a string, got {type(self.caution).__name__}")
        for name in ("metrics", "recipe"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")

    @property
    def preprocessing_config(self) -> PreprocessingConfig:
        return PreprocessingConfig.from_dict(self.preprocessing)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WeightsMetadata":
        if not isinstance(data, dict):
            raise ValueError(f"metadata must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        missing = sorted({"version", "variant"} - set(data))
        if missing:
            raise ValueError(f"metadata lacks {missing}")
        # keys written by a later minor revision are ignored rather than refused
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class LoadedWeights:
    """A model in eval mode on the requested device, its metadata and the file's sha256."""

    model: M2UNet
    metadata: WeightsMetadata
    sha256: str
    path: Path | None = None


def default_weights_path() -> Path:
    """The weights shipped with the package (written by the training issue)."""
    return Path(__file__).resolve().parent / "weights" / DEFAULT_WEIGHTS_FILE


def save_weights(
    path: str | os.PathLike,
    model: M2UNet,
    metadata: WeightsMetadata,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Write ``model``'s state dict and ``metadata`` to ``path`` atomically; returns the sha256.

    ``dtype`` (float32 or float16) is the storage type of the floating-point tensors.
    """
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    if not isinstance(metadata, WeightsMetadata):
        raise ValueError(f"metadata must be WeightsMetadata, got {type(metadata).__name__}")
    if getattr(model, "variant", None) != metadata.variant:
        raise ValueError(f"metadata variant {metadata.variant!r} does not match the model's {getattr(model, 'variant', None)!r}")
    state = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": metadata.to_dict(),
        "state_dict": state,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _check_state_dict(path: Path, model: M2UNet, state: object) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(path, "state_dict is not a mapping of tensors")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
        raise WeightsError(path, f"state_dict does not match variant {model.variant!r}: " + "; ".join(parts))
    converted = {}
    for key, ref in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(ref.shape):
            raise WeightsError(
                path,
                f"state_dict does not match variant {model.variant!r}: {key} has shape "
                f"{tuple(tensor.shape)}, expected {tuple(ref.shape)}",
            )
        if ref.is_floating_point():
            if not tensor.is_floating_point():
                raise WeightsError(path, f"{key} has dtype {tensor.dtype}, expected floating point")
            tensor = tensor.to(torch.float32).contiguous()
            if not np.isfinite(tensor.numpy()).all():  # numpy: torch's thread pool is slow here
                raise WeightsError(path, f"{key} holds NaN or infinite values")
        converted[key] = tensor
    return converted


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedWeights:
    """Read and check a weights file; the model comes back in eval mode on ``device``."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(path, "not found")
    if not path.is_file():
        raise WeightsError(path, "not a regular file")
    data = path.read_bytes()
    if not data:
        raise WeightsError(path, "empty (0 bytes)")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad_member = archive.testzip()  # torch itself does not check the members' CRC
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise WeightsError(path, f"truncated or corrupt (not a torch zip archive): {exc}") from None
    if bad_member is not None:
        raise WeightsError(path, f"corrupt: checksum mismatch in archive member {bad_member}")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        raise WeightsError(path, f"truncated or corrupt (not a readable torch archive): {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise WeightsError(path, f"wrong format marker {found!r}, expected {FORMAT!r}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(path, f"unsupported format_version {version!r} (this reader knows {FORMAT_VERSION})")
    try:
        metadata = WeightsMetadata.from_dict(payload.get("metadata"))
    except (TypeError, ValueError) as exc:
        raise WeightsError(path, f"invalid metadata: {exc}") from None
    model = M2UNet(metadata.variant)
    state = _check_state_dict(path, model, payload.get("state_dict"))
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device).eval()
    log.info(
        "weights_loaded",
        path=str(path),
        sha256=sha256,
        variant=metadata.variant,
        version=metadata.version,
        trained=metadata.trained,
        device=str(device),
    )
    if not metadata.trained:
        log.warning("weights_untrained", path=str(path), training_data=metadata.training_data)
    elif metadata.caution:
        log.warning("weights_caution", path=str(path), caution=metadata.caution)
    return LoadedWeights(model=model, metadata=metadata, sha256=sha256, path=path)


def calibrate_batch_norm(model: M2UNet, seed: int = 0, patches: int = 2, size: int = 64) -> None:
    """Set batch-norm running statistics from one random bag of windowed-range patches, so that an
    untrained network's activations stay in a sane range (used for random weights only)."""
    generator = torch.Generator().manual_seed(seed)
    bag = torch.rand(1, patches, 1, size, size, generator=generator) * 255.0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over this one pass
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny forward: one thread is faster than a contended pool
    try:
        with torch.no_grad():
            model(bag)
    finally:
        torch.set_num_threads(threads)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    model.eval()


def random_weights(
    path: str | os.PathLike,
    seed: int = 0,
    variant: str = "m2unet",
    dtype: torch.dtype = torch.float32,
    version: str = "0.0.0-random",
) -> Path:
    """Write randomly initialised weights (``trained=False``) for tests; returns the path."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = M2UNet(variant)
        calibrate_batch_norm(model, seed=seed)
    metadata = WeightsMetadata(
        version=version,
        variant=variant,
        training_data=UNTRAINED_DESCRIPTION,
        trained=False,
        recipe={"initialisation": "PyTorch default", "seed": seed},
    )
    save_weights(path, model, metadata, dtype=dtype)
    return Path(path)
