"""A training case on the network's grid: its body region windowed and resampled, its label map.

Training draws many bags from each case, so each case is brought once to what the network sees
(the body region, windowed, each slice resampled in-plane to the recipe's ``in_plane_spacing_mm``
or kept native) and kept as compact arrays (uint8 window values, uint8 classes). :func:`save_prepared` and
:func:`load_prepared` cache it as ``.npz`` so a fixed set of phantoms is generated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2unet.labels import NUM_CLASSES
from m2unet.preprocessing import BodyBox, PreprocessingConfig, body_box, resample_in_plane, restore_in_plane_labels, window
from m2unet.volume import Volume

PAPER_WINDOW = (-1200.0, 0.0)  # Section III-F; also the window of caches written before it was recorded


@dataclass
class PreparedCase:
    """``image`` uint8 (z, y, x): the body region windowed to [0, 255] and resampled in-plane, as the
    predictor feeds the network; ``class_map`` uint8 of the same shape (the 7 classes of
    :class:`m2unet.labels.SegmentationClass`) or None where the case has no lobe masks; ``severe``
    the label; ``spacing`` (x, y, z) mm of this grid; ``window`` (low, high) HU the image was
    windowed with (training refuses a case of another window than its recipe's)."""

    case_id: str
    image: np.ndarray
    class_map: np.ndarray | None
    severe: bool
    spacing: tuple[float, float, float]
    window: tuple[float, float] = PAPER_WINDOW

    @property
    def has_mask(self) -> bool:
        return self.class_map is not None

    @property
    def box(self) -> BodyBox:
        """The whole prepared array is the body region."""
        depth, height, width = self.image.shape
        return BodyBox(0, depth, 0, height, 0, width)


def resample_labels_in_plane(class_map: np.ndarray, source_yx: tuple[int, int], target_yx: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour label maps ``[..., y, x]`` from the source in-plane grid to the target grid."""
    if tuple(source_yx) == tuple(target_yx):
        return np.asarray(class_map, dtype=np.uint8)
    return restore_in_plane_labels(np.asarray(class_map, dtype=np.uint8), target_yx)


def prepare_case(
    case_id: str,
    volume: Volume,
    class_map: np.ndarray | None,
    severe: bool,
    config: PreprocessingConfig,
) -> PreparedCase:
    """Bring one case to the network's grid the way the predictor does: the body box found on the
    source grid (:func:`m2unet.preprocessing.body_box`), that region windowed, then resampled in-plane
    (bilinear; labels by nearest neighbour) when ``config.in_plane_spacing_mm`` is set."""
    if class_map is not None:
        class_map = np.asarray(class_map)
        if class_map.shape != volume.shape:
            raise ValueError(f"case {case_id}: mask shape {class_map.shape} differs from image shape {volume.shape}")
        if class_map.size and (class_map.min() < 0 or class_map.max() >= NUM_CLASSES):
            raise ValueError(f"case {case_id}: mask holds labels outside 0..{NUM_CLASSES - 1}")
    sx, sy, sz = (float(s) for s in volume.spacing)
    box = body_box(volume.hu, config)
    region = volume.hu[box.slices]
    labels = None if class_map is None else class_map[box.slices]
    image = np.empty((0,) + region.shape[1:], dtype=np.uint8)
    chunks = []
    for start in range(0, region.shape[0], 32):
        windowed = window(region[start : start + 32], config)
        if config.in_plane_spacing_mm is not None:
            windowed = resample_in_plane(windowed, (sx, sy), config.in_plane_spacing_mm)
        chunks.append(np.clip(np.rint(windowed), 0, 255).astype(np.uint8))
    image = np.concatenate(chunks) if chunks else image
    if labels is not None and labels.shape[1:] != image.shape[1:]:
        labels = resample_labels_in_plane(labels, labels.shape[1:], image.shape[1:])
    if config.in_plane_spacing_mm is not None:
        sx = sy = float(config.in_plane_spacing_mm)
    return PreparedCase(
        case_id=case_id,
        image=np.ascontiguousarray(image),
        class_map=None if labels is None else np.ascontiguousarray(labels, dtype=np.uint8),
        severe=bool(severe),
        spacing=(sx, sy, sz),
        window=(float(config.window_low), float(config.window_high)),
    )


def check_window(cases: list[PreparedCase], window: tuple[float, float]) -> None:
    """Refuse cases windowed otherwise than ``window`` (a cache rendered for another recipe)."""
    wanted = tuple(float(v) for v in window)
    for case in cases:
        if tuple(case.window) != wanted:
            raise ValueError(f"case {case.case_id} was windowed with {list(case.window)} HU, the recipe wants "
                             f"{list(wanted)}: render the cases again for this window (another output folder)")


def save_prepared(case: PreparedCase, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "image": case.image,
        "severe": np.array(case.severe),
        "spacing": np.array(case.spacing, dtype=np.float64),
        "case_id": np.array(case.case_id),
        "window": np.array(case.window, dtype=np.float64),
    }
    if case.class_map is not None:
        arrays["class_map"] = case.class_map
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_prepared(path: str | Path) -> PreparedCase:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            class_map = data["class_map"] if "class_map" in data else None
            return PreparedCase(
                case_id=str(data["case_id"]),
                image=data["image"],
                class_map=class_map,
                severe=bool(data["severe"]),
                spacing=tuple(float(s) for s in data["spacing"]),
                window=tuple(float(v) for v in data["window"]) if "window" in data else PAPER_WINDOW,
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a prepared case ({exc})") from None
