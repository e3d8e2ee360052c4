"""Volume reconstruction: a series' instance files -> a checked HU volume and its source instances.

Rules (each failure raises :class:`UnusableSeries`, a ``ValueError`` whose ``reason`` goes to
``status``):

- Selection first (:mod:`dicom_node.series.selection`): only axial ORIGINAL/PRIMARY CT frames on the
  series' majority image grid. More than ``MAX_DROPPED_SHARE`` (10 %) of the slices dropped for
  their geometry (another grid, not axial, ...) fails the series with that reason ("20 of 40
  instances excluded (more than 10 %): other orientation 20"); fewer are left out and stated
  (:meth:`ReconstructedSeries.exclusion_note`, ``exclusion_summary``). A gap that excluded slices
  leave is reported with them as its cause.
- Order: by position along the slice normal (``ImagePositionPatient`` . normal), ascending; never
  by Instance Number or arrival.
- Exact duplicates (same position, same stored pixels, same rescale) are dropped, keeping the
  smallest SOP Instance UID.
- Several acquisitions in one series: when they cover different positions they are merged; when
  they overlap, the acquisition with the most frames is kept (ties: the lowest Acquisition Number)
  and the others are excluded. Two different images left at one position: rejected.
- Spacing: every step between neighbouring slices must be within ``SPACING_TOLERANCE`` (10 %) of
  the median step; a missing slice (a gap) or uneven spacing is rejected, not resampled, since the
  segmentation must map one to one onto the source images.
- Gantry tilt: when slice origins drift in-plane from one slice to the next (a tilted gantry with
  the table moving along z), each slice is shifted in-plane (linear interpolation, air outside the
  field) onto an orthogonal grid; :meth:`ReconstructedSeries.to_source_grid` shifts a label map back
  onto the source images' grid.
- Pixels: ``pixel_array`` (signed or unsigned per Pixel Representation, any supported transfer
  syntax through pydicom's pylibjpeg plugins) times Rescale Slope plus Rescale Intercept, per
  frame. int16 when every frame's rescale is integral and the HU fit, else float32.

The volume is ``m2unet.volume.Volume`` (z, y, x) with spacing (column spacing, row spacing, slice
step), direction columns (row cosine, column cosine, normal) and the first slice's origin.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.series.frames import Frame, frames_of
from dicom_node.series.selection import DROPPED_SLICE_REASONS, MAX_DROPPED_SHARE, MIN_SLICES, Exclusion, select_frames
from m2unet.volume import Volume

SPACING_TOLERANCE = 0.10  # relative deviation of a slice step from the median step
POSITION_TOLERANCE_MM = 0.01  # frames closer than this along the normal share one position
TILT_TOLERANCE_MM = 0.01  # in-plane drift below this is not a tilt
AIR_HU = -1024.0
PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class UnusableSeries(ValueError):
    """The series cannot become a volume; ``reason`` is the short text shown by ``status``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceInstance:
    """The source image behind one slice of the volume (index ``z`` of ``volume.hu``)."""

    sop_class_uid: str
    sop_instance_uid: str
    path: Path
    frame_number: int | None  # for multi-frame instances; None for single-frame
    position: tuple[float, float, float]  # its Image Position (Patient)


@dataclass(frozen=True)
class ReconstructedSeries:
    volume: Volume
    instances: list[SourceInstance]  # one per slice, in volume order
    datasets: list[Dataset]  # each distinct source instance's attributes (no pixel data), in volume order
    excluded: list[Exclusion] = field(default_factory=list)
    in_plane_shifts: np.ndarray | None = None  # (z, 2) pixel shifts (rows, columns) applied; None: no tilt
    gantry_tilt_deg: float = 0.0

    @property
    def reference_dataset(self) -> Dataset:
        """The first slice's source attributes (patient, study, series, frame of reference...)."""
        return self.datasets[0]

    @property
    def study_instance_uid(self) -> str:
        return str(self.reference_dataset.StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.reference_dataset.SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str | None:
        value = self.reference_dataset.get("FrameOfReferenceUID")
        return str(value) if value else None

    def stated_exclusions(self) -> list[Exclusion]:
        """Exclusions worth stating: all but exact duplicates (an identical image sent twice)."""
        return [e for e in self.excluded if e.reason != "exact_duplicate"]

    def exclusion_summary(self) -> dict | None:
        """``{"count", "of", "reasons": {reason: n}, "details": {detail: n}}`` of the stated
        exclusions (``of``: the slices used plus those), or None when nothing was left out."""
        stated = self.stated_exclusions()
        if not stated:
            return None
        return {
            "count": len(stated),
            "of": len(self.instances) + len(stated),
            "reasons": dict(Counter(e.reason for e in stated)),
            "details": dict(Counter(e.describe() for e in stated)),
        }

    def exclusion_note(self) -> str | None:
        """For ``status``: "1 instance excluded: other image size 128x128", or None."""
        stated = self.stated_exclusions()
        return describe_exclusions(stated) if stated else None

    def to_source_grid(self, array_zyx: np.ndarray, order: int = 0) -> np.ndarray:
        """Map an array on the volume's grid onto the source images' grids (undo the tilt shift)."""
        if self.in_plane_shifts is None:
            return array_zyx
        from scipy import ndimage

        out = np.empty_like(array_zyx)
        for z, (dr, dc) in enumerate(self.in_plane_shifts):
            out[z] = ndimage.shift(array_zyx[z], (-dr, -dc), order=order, mode="constant", cval=0)
        return out


@dataclass
class _Slice:
    frame: Frame
    pixels: np.ndarray  # stored values, before rescale
    digest: str
    distance: float = 0.0  # along the normal


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many kinds on broken files
        raise UnusableSeries(f"unreadable instance file {path.name}: {type(exc).__name__}") from exc


def _pixels(ds: Dataset, frame: Frame, cache: dict) -> np.ndarray:
    key = frame.sop_instance_uid
    if key not in cache:
        try:
            cache[key] = ds.pixel_array
        except Exception as exc:
            ts = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
            raise UnusableSeries(
                f"cannot decode pixel data of transfer syntax {ts} ({type(exc).__name__}); "
                "a decoder for it (for example python-gdcm) is not installed"
            ) from exc
    arr = cache[key]
    if frame.frame_number is None:
        return arr if arr.ndim == 2 else arr[0]
    return arr[frame.frame_number - 1]


def _remove_pixels(ds: Dataset) -> Dataset:
    for name in PIXEL_ELEMENTS:
        if name in ds:
            delattr(ds, name)
    return ds


def _resolve_positions(slices: list[_Slice], excluded: list[Exclusion]) -> list[_Slice]:
    """Drop exact duplicates, choose between overlapping acquisitions, reject conflicts."""

    def groups(items: list[_Slice]) -> list[list[_Slice]]:
        items = sorted(items, key=lambda s: (s.distance, s.frame.sort_key))
        out: list[list[_Slice]] = []
        for s in items:
            if out and abs(s.distance - out[-1][0].distance) <= POSITION_TOLERANCE_MM:
                out[-1].append(s)
            else:
                out.append([s])
        return out

    kept = []
    for group in groups(slices):
        seen: dict[tuple, _Slice] = {}
        for s in group:
            key = (s.digest, s.frame.slope, s.frame.intercept)
            if key in seen:
                excluded.append(Exclusion(s.frame.sop_instance_uid, s.frame.frame_number, "exact_duplicate"))
            else:
                seen[key] = s
        kept += seen.values()

    if any(len(g) > 1 for g in groups(kept)):
        counts = Counter(s.frame.acquisition_number for s in kept)
        if len(counts) > 1:
            best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] if kv[0] is not None else math.inf))[0][0]
            for s in kept:
                if s.frame.acquisition_number != best:
                    excluded.append(Exclusion(s.frame.sop_instance_uid, s.frame.frame_number, "other_acquisition"))
            kept = [s for s in kept if s.frame.acquisition_number == best]
    for g in groups(kept):
        if len(g) > 1:
            raise UnusableSeries(
                f"{len(g)} different images at one position ({g[0].distance:.2f} mm along the slice normal)"
            )
    return sorted(kept, key=lambda s: s.distance)


def describe_exclusions(excluded: list[Exclusion]) -> str:
    """ "2 instances excluded: other image size 128x128 1, localizer 1" (counts per description)."""
    unit = "frame" if any(e.frame_number is not None for e in excluded) else "instance"
    unit += "" if len(excluded) == 1 else "s"
    counts = Counter(e.describe() for e in excluded)
    if len(counts) == 1 and len(excluded) == 1:
        return f"1 {unit} excluded: {next(iter(counts))}"
    return f"{len(excluded)} {unit} excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _check_dropped_share(slices: list, excluded: list[Exclusion]) -> None:
    dropped = [e for e in excluded if e.reason in DROPPED_SLICE_REASONS]
    total = len(slices) + len(dropped)
    if dropped and len(dropped) > MAX_DROPPED_SHARE * total:
        unit = "frames" if any(e.frame_number is not None for e in dropped) else "instances"
        counts = Counter(e.describe() for e in dropped)
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        raise UnusableSeries(f"{len(dropped)} of {total} {unit} excluded (more than {MAX_DROPPED_SHARE:.0%}): {detail}")


def _check_spacing(distances: np.ndarray) -> float:
    """The slice step (mm); raises on gaps and uneven spacing."""
    steps = np.diff(distances)
    step = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - step)))
    if abs(steps[worst] - step) > SPACING_TOLERANCE * step:
        kind = "gap" if steps[worst] > step else "uneven spacing"
        raise UnusableSeries(
            f"{kind}: step of {steps[worst]:.3f} mm between slices {worst} and {worst + 1} "
            f"where the median step is {step:.3f} mm (tolerance {SPACING_TOLERANCE:.0%})"
        )
    return step


def _to_hu(slices: list[_Slice], rows: int, columns: int, dtype) -> np.ndarray | None:
    """Stored values times slope plus intercept, slice by slice; None if int16 cannot hold them."""
    hu = np.empty((len(slices), rows, columns), dtype=dtype)
    work = np.int32 if dtype == np.int16 else np.float32
    for z, s in enumerate(slices):
        values = s.pixels.astype(work) * work(s.frame.slope) + work(s.frame.intercept)
        if dtype == np.int16 and (values.min() < -32768 or values.max() > 32767):
            return None
        hu[z] = values
    return hu


def reconstruct_series(paths: list[str | Path], min_slices: int = MIN_SLICES) -> ReconstructedSeries:
    """Build the HU volume of one series from its instance files (see the module's rules)."""
    if not paths:
        raise UnusableSeries("no instances")
    datasets: dict[Path, Dataset] = {}
    frames: list[Frame] = []
    for p in paths:
        p = Path(p)
        ds = _read(p)
        datasets[p] = ds
        frames += frames_of(ds, p)
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets.values()}
    if len(series_uids) != 1:
        raise UnusableSeries(f"instances of {len(series_uids)} series given; expected one")

    selection = select_frames(frames, min_slices=1)
    excluded = list(selection.excluded)
    if not selection.usable:
        raise UnusableSeries(selection.skip_reason or "no usable slices")
    normal = selection.usable[0].normal
    cache: dict[str, dict] = defaultdict(dict)
    slices = []
    for f in selection.usable:
        pixels = _pixels(datasets[f.path], f, cache[str(f.path)])
        digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        slices.append(_Slice(f, pixels, digest, float(np.dot(f.position, normal))))
    cache.clear()
    slices = _resolve_positions(slices, excluded)
    _check_dropped_share(slices, excluded)
    if len(slices) < min_slices:
        raise UnusableSeries(f"too few usable slices: {len(slices)} < {min_slices}")

    first = slices[0].frame
    row_cos, col_cos = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    row_spacing, col_spacing = first.pixel_spacing
    distances = np.array([s.distance for s in slices])
    if len(slices) > 1:
        try:
            step = _check_spacing(distances)
        except UnusableSeries as exc:
            dropped = [e for e in excluded if e.reason in DROPPED_SLICE_REASONS]
            if not dropped:
                raise
            # the slice that is missing is most likely one that was left out: name it as the cause
            raise UnusableSeries(f"{describe_exclusions(dropped)}, which leaves the series incomplete ({exc.reason})") from exc
    else:
        step = float(datasets[first.path].get("SliceThickness") or 1.0)

    origin0 = np.asarray(first.position)
    drift = np.array([np.asarray(s.frame.position) - origin0 - (s.distance - distances[0]) * normal for s in slices])
    shifts = np.stack([drift @ col_cos / row_spacing, drift @ row_cos / col_spacing], axis=1)
    tilted = bool(np.abs(drift).max() > TILT_TOLERANCE_MM)
    tilt_deg = 0.0
    if tilted and len(slices) > 1:
        travel = np.asarray(slices[-1].frame.position) - origin0
        tilt_deg = math.degrees(math.acos(min(1.0, abs(travel @ normal) / np.linalg.norm(travel))))

    integral = all(float(s.frame.slope).is_integer() and float(s.frame.intercept).is_integer() for s in slices)
    hu = _to_hu(slices, first.rows, first.columns, np.int16) if integral and not tilted else None
    if hu is None:
        hu = _to_hu(slices, first.rows, first.columns, np.float32)
    if tilted:
        from scipy import ndimage

        for z, (dr, dc) in enumerate(shifts):
            hu[z] = ndimage.shift(hu[z], (dr, dc), order=1, mode="constant", cval=AIR_HU)

    direction = np.stack([row_cos, col_cos, normal], axis=1)
    volume = Volume(
        hu=hu,
        spacing=(float(col_spacing), float(row_spacing), float(step)),
        origin=tuple(float(v) for v in origin0),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    instances = [
        SourceInstance(
            sop_class_uid=s.frame.sop_class_uid,
            sop_instance_uid=s.frame.sop_instance_uid,
            path=s.frame.path,
            frame_number=s.frame.frame_number,
            position=tuple(s.frame.position),
        )
        for s in slices
    ]
    ordered: list[Dataset] = []
    seen_paths: set[Path] = set()
    for s in slices:
        if s.frame.path not in seen_paths:
            seen_paths.add(s.frame.path)
            ordered.append(_remove_pixels(datasets[s.frame.path]))
    return ReconstructedSeries(
        volume=volume,
        instances=instances,
        datasets=ordered,
        excluded=excluded,
        in_plane_shifts=shifts if tilted else None,
        gantry_tilt_deg=tilt_deg,
    )
