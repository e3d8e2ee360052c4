"""The CT volume that crosses the boundary between the node and the engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
MIN_SLICES = 2
MAX_SPACING_MM = 50.0


@dataclass(frozen=True)
class Volume:
    """A CT volume in Hounsfield units with its patient-space geometry.

    ``hu`` is indexed (z, y, x): slice, row, column. ``spacing``, ``origin`` and ``direction``
    follow SimpleITK's conventions in LPS patient coordinates: spacing (x, y, z) in mm, origin
    (x, y, z) of voxel (0, 0, 0) in mm, direction a row-major 3x3 matrix whose columns are the
    unit vectors of the x, y and z index axes.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    def __post_init__(self) -> None:
        validate_volume(self)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        sx, sy, sz = self.spacing
        return sx * sy * sz / 1000.0

    def to_sitk(self):
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.hu)
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction))
        return image

    @classmethod
    def from_sitk(cls, image) -> "Volume":
        import SimpleITK as sitk

        return cls(
            hu=sitk.GetArrayFromImage(image),
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
        )


def validate_volume(volume: Volume) -> None:
    """Raise ``ValueError`` naming what is wrong with a volume's array or geometry."""
    hu = volume.hu
    if not isinstance(hu, np.ndarray):
        raise ValueError(f"hu must be a numpy array, got {type(hu).__name__}")
    if hu.ndim != 3:
        raise ValueError(f"hu must have 3 dimensions (z, y, x), got shape {hu.shape}")
    if not (np.issubdtype(hu.dtype, np.integer) or np.issubdtype(hu.dtype, np.floating)):
        raise ValueError(f"hu must hold integers or floats, got dtype {hu.dtype}")
    if min(hu.shape) < 1:
        raise ValueError(f"hu is empty: shape {hu.shape}")
    if hu.shape[0] < MIN_SLICES:
        raise ValueError(f"hu has {hu.shape[0]} slice; a CT volume needs at least {MIN_SLICES} (shape {hu.shape})")
    if np.issubdtype(hu.dtype, np.floating):
        for start in range(0, hu.shape[0], 32):  # slab by slab: no volume-sized temporary
            if not np.isfinite(hu[start : start + 32]).all():
                raise ValueError(
                    f"hu holds NaN or infinite values (in slices {start}..{min(start + 32, hu.shape[0]) - 1})"
                )
    if len(volume.spacing) != 3:
        raise ValueError(f"spacing must have 3 values (x, y, z), got {volume.spacing!r}")
    for axis, s in zip("xyz", volume.spacing):
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise ValueError(f"spacing {axis} = {s!r} is not a number")
        if not np.isfinite(s) or s <= 0 or s > MAX_SPACING_MM:
            raise ValueError(f"spacing {axis} = {s!r} mm is not a plausible CT spacing (0, {MAX_SPACING_MM:g}]")
    try:
        origin = np.asarray(volume.origin, dtype=float)
        direction = np.asarray(volume.direction, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"origin and direction must be numbers, got {volume.origin!r}, {volume.direction!r}") from None
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise ValueError(f"origin must be 3 finite values, got {volume.origin!r}")
    if direction.shape != (9,) or not np.all(np.isfinite(direction)):
        raise ValueError(f"direction must have 9 finite values, got {volume.direction!r}")
    d = direction.reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        raise ValueError(f"direction {volume.direction!r} is not orthonormal")
