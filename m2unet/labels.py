"""The label maps of the engine.

The paper segments seven categories (background and six lung parts, Table I's 7-way head) without
naming them. We name them here, once: the six parts are the five lobes with the left upper lobe
split into its upper division and the lingula, the one sub-lobar region radiologists routinely name.
The product reports five lobes; :func:`to_lobe_map` merges the lingula into the left upper lobe.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class SegmentationClass(IntEnum):
    """The seven output classes of the decoder (Table I, decoding block 1: 64 -> 7)."""

    BACKGROUND = 0
    RIGHT_UPPER_LOBE = 1
    RIGHT_MIDDLE_LOBE = 2
    RIGHT_LOWER_LOBE = 3
    LEFT_UPPER_LOBE_UPPER_DIVISION = 4
    LINGULA = 5
    LEFT_LOWER_LOBE = 6


class Lobe(IntEnum):
    """The five lung lobes the product reports; values are the labels of a lobe map."""

    RIGHT_UPPER = 1
    RIGHT_MIDDLE = 2
    RIGHT_LOWER = 3
    LEFT_UPPER = 4
    LEFT_LOWER = 5

    @property
    def display_name(self) -> str:
        return LOBE_NAMES[self]

    @property
    def laterality(self) -> str:
        return "right" if self in (Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE, Lobe.RIGHT_LOWER) else "left"


NUM_CLASSES = len(SegmentationClass)

CLASS_NAMES: dict[int, str] = {
    SegmentationClass.BACKGROUND: "background",
    SegmentationClass.RIGHT_UPPER_LOBE: "right upper lobe",
    SegmentationClass.RIGHT_MIDDLE_LOBE: "right middle lobe",
    SegmentationClass.RIGHT_LOWER_LOBE: "right lower lobe",
    SegmentationClass.LEFT_UPPER_LOBE_UPPER_DIVISION: "left upper lobe, upper division",
    SegmentationClass.LINGULA: "lingula",
    SegmentationClass.LEFT_LOWER_LOBE: "left lower lobe",
}

LOBE_NAMES: dict[Lobe, str] = {
    Lobe.RIGHT_UPPER: "right upper lobe",
    Lobe.RIGHT_MIDDLE: "right middle lobe",
    Lobe.RIGHT_LOWER: "right lower lobe",
    Lobe.LEFT_UPPER: "left upper lobe",
    Lobe.LEFT_LOWER: "left lower lobe",
}

# class label -> lobe label (0 stays background)
CLASS_TO_LOBE = np.array(
    [
        0,
        Lobe.RIGHT_UPPER,
        Lobe.RIGHT_MIDDLE,
        Lobe.RIGHT_LOWER,
        Lobe.LEFT_UPPER,
        Lobe.LEFT_UPPER,  # lingula belongs to the left upper lobe
        Lobe.LEFT_LOWER,
    ],
    dtype=np.uint8,
)


def to_lobe_map(class_map: np.ndarray) -> np.ndarray:
    """Map a 7-class label map to the 5-lobe map (labels :class:`Lobe`, 0 background)."""
    class_map = np.asarray(class_map)
    if class_map.size and (class_map.min() < 0 or class_map.max() >= NUM_CLASSES):
        raise ValueError(
            f"class_map holds labels outside 0..{NUM_CLASSES - 1}: "
            f"min {class_map.min()}, max {class_map.max()}"
        )
    return CLASS_TO_LOBE[class_map]


def label_map_metadata() -> dict[str, str]:
    """The class label map as stored in a weights file's metadata (string keys for JSON)."""
    return {str(int(k)): v for k, v in CLASS_NAMES.items()}
