"""Real five-lobe annotations: reading one, and the fixed split into training and held-out chests.

The label maps (LUNA16 / LIDC-IDRI chests annotated by Tang et al., ISBI 2019; CC BY-NC-SA 4.0)
code value & 255: 4 right upper, 5 right middle, 6 right lower, 7 left upper, 8 left lower lobe,
1 unassigned lung; values >= 512 mark airway voxels (512 + the lobe code inside a lobe, 512 or 513
in the central airways). Geometry: LPS, identity direction, z towards the head.

The held-out chests are fixed by name (:data:`HELD_OUT`, eight of the forty): training never sees
them; they are for choosing checkpoints and for reporting lobe Dice.

:func:`layout_problems` checks a label map against the one piece of lobe anatomy without
exceptions that a centroid can test: the right middle lobe lies in front of the oblique fissure
(anterior to the right lower lobe) and below the horizontal fissure (below the right upper lobe).
Two of the forty maps break it (held-out chests 07 and 32: their "middle lobe" sits in the upper
posterior lung, where the posterior segment of the upper lobe or the superior segment of the lower
lobe lies); every other map clears both bounds by 45 mm or more. Lobe Dice on those two measures
agreement with a mislabelled map, so reports give the held-out figures with and without them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt

from m2unet.labels import Lobe

ANNOTATIONS_ENV = "M2UNET_LOBE_MASKS"
_SUFFIX = "_LobeSegmentation.nrrd"
_CODES = {4: Lobe.RIGHT_UPPER, 5: Lobe.RIGHT_MIDDLE, 6: Lobe.RIGHT_LOWER, 7: Lobe.LEFT_UPPER, 8: Lobe.LEFT_LOWER}
_UNASSIGNED = 1
_AIRWAY_BIT = 512

# Eight chests never trained on: the series UIDs' last digits, chosen before any training ran
# (every fifth file in name order, starting with the third).
HELD_OUT: tuple[str, ...] = (
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.119209873306155771318545953948",
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.151669338315069779994664893123",
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.192256506776434538421891524301",
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.237215747217294006286437405216",
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.272042302501586336192628818865",
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.306788423710427765311352901943",
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.333145094436144085379032922488",
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.842980983137518332429408284002",
)


@dataclass(frozen=True)
class Annotation:
    """One real chest's lobes: ``lobes`` uint8 (z, y, x) of :class:`Lobe` labels (0 outside the
    lungs; unassigned lung given its nearest lobe), ``airway`` bool (airway lumen, inside or outside
    the lobes), ``spacing`` and ``origin`` (x, y, z) mm, LPS, identity direction."""

    name: str
    lobes: np.ndarray
    airway: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


def default_folder() -> Path | None:
    """The annotations' folder: ``$M2UNET_LOBE_MASKS``, else ``../shared/data/lobe-masks`` beside
    the repository, else None (an installed node has no training data)."""
    env = os.environ.get(ANNOTATIONS_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[3] / "shared" / "data" / "lobe-masks"
    return here if here.is_dir() else None


def annotation_paths(folder: str | Path | None = None) -> list[Path]:
    """The label map files in ``folder`` (default :func:`default_folder`), in name order."""
    folder = Path(folder) if folder is not None else default_folder()
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"no lobe annotations folder (set ${ANNOTATIONS_ENV}); looked at {folder}")
    paths = sorted(folder.glob(f"*{_SUFFIX}"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no *{_SUFFIX} files")
    return paths


def annotation_name(path: str | Path) -> str:
    name = Path(path).name
    return name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else Path(path).stem


def held_out_names() -> tuple[str, ...]:
    return HELD_OUT


def split_annotations(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(training, held-out) by :data:`HELD_OUT`."""
    held = set(HELD_OUT)
    train = [p for p in paths if annotation_name(p) not in held]
    test = [p for p in paths if annotation_name(p) in held]
    return train, test


def decode_labels(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lobe labels uint8, airway bool) from the annotation's stored values; unassigned lung
    voxels take the label of the nearest lobe voxel."""
    raw = np.asarray(raw)
    code = (raw & 255).astype(np.uint8)
    airway = raw >= _AIRWAY_BIT
    lobes = np.zeros(raw.shape, dtype=np.uint8)
    for value, lobe in _CODES.items():
        lobes[code == value] = int(lobe)
    unassigned = code == _UNASSIGNED
    if unassigned.any() and lobes.any():
        _, nearest = distance_transform_edt(lobes == 0, return_indices=True)
        filled = lobes[tuple(nearest)]
        lobes[unassigned] = filled[unassigned]
    return lobes, airway


# The right middle lobe's centroid against its neighbours' (mm). The 38 consistent maps: 60-104 mm
# anterior to the right lower lobe's, 55-99 mm below the right upper lobe's.
RML_ANTERIOR_OF_RLL_MM = 10.0
RML_BELOW_RUL_MM = 10.0


def _centroid_mm(lobes: np.ndarray, lobe: Lobe, spacing: tuple[float, float, float]) -> np.ndarray | None:
    """(z, y) centroid of one lobe in mm (z towards the head, y towards the back: LPS)."""
    coords = np.nonzero(lobes == int(lobe))
    if coords[0].size == 0:
        return None
    return np.array([coords[0].mean() * spacing[2], coords[1].mean() * spacing[1]])


def layout_problems(annotation: Annotation) -> list[str]:
    """Why the right middle lobe's label contradicts anatomy ([] when it does not)."""
    lobes, spacing = annotation.lobes, annotation.spacing
    middle = _centroid_mm(lobes, Lobe.RIGHT_MIDDLE, spacing)
    upper = _centroid_mm(lobes, Lobe.RIGHT_UPPER, spacing)
    lower = _centroid_mm(lobes, Lobe.RIGHT_LOWER, spacing)
    if middle is None or upper is None or lower is None:
        return ["a right lobe is missing"]
    problems = []
    anterior = lower[1] - middle[1]
    if anterior < RML_ANTERIOR_OF_RLL_MM:
        problems.append(f"right middle lobe {anterior:.0f} mm anterior to the right lower lobe (< {RML_ANTERIOR_OF_RLL_MM:.0f})")
    below = upper[0] - middle[0]
    if below < RML_BELOW_RUL_MM:
        problems.append(f"right middle lobe {below:.0f} mm below the right upper lobe (< {RML_BELOW_RUL_MM:.0f})")
    return problems


def load_annotation(path: str | Path) -> Annotation:
    """Read one label map (NRRD) with SimpleITK; raises ``ValueError`` if it is not axial LPS."""
    import SimpleITK as sitk

    path = Path(path)
    image = sitk.ReadImage(str(path))
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.allclose(direction, np.eye(3), atol=1e-3):
        raise ValueError(f"{path.name}: direction {direction.ravel().round(3).tolist()} is not the identity")
    lobes, airway = decode_labels(sitk.GetArrayFromImage(image))
    if not lobes.any():
        raise ValueError(f"{path.name}: no lobe voxels")
    return Annotation(
        name=annotation_name(path),
        lobes=lobes,
        airway=airway,
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
    )
