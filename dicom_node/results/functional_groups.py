"""The functional groups of a multi-frame source image, as the result objects need them.

An Enhanced CT (or Legacy Converted Enhanced CT) image describes each frame in the Shared and
Per-frame Functional Groups Sequences: a functional group applies to every frame when it sits in
the shared item, or to one frame when it sits in that frame's item.

- :func:`frame_position` is the Image Position (Patient) of one frame, from its Plane Position
  (Patient) functional group, per-frame first, then shared.
- :func:`share_identical_groups` moves the Pixel Measures and Plane Orientation (Patient) groups
  into the shared item when every frame holds the same one. highdicom reads both only from the
  shared item of a multi-frame source; scanners may repeat them in every frame, which the
  standard allows and which says the same thing. It works on a copy of the header (the result
  objects' input), never on the source file; a group whose value differs between frames stays
  where it is (highdicom then cannot use the source, and says so).
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

SHAREABLE_GROUPS = ("PixelMeasuresSequence", "PlaneOrientationSequence")


def number_of_frames(header: Dataset) -> int:
    value = header.get("NumberOfFrames")
    try:
        return int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise ValueError(f"NumberOfFrames: not a number ({value!r})") from None


def _group(holder: Dataset | None, keyword: str) -> Dataset | None:
    if holder is None:
        return None
    sequence = holder.get(keyword)
    return sequence[0] if sequence else None


def _shared_item(header: Dataset) -> Dataset | None:
    shared = header.get("SharedFunctionalGroupsSequence")
    return shared[0] if shared else None


def _per_frame_item(header: Dataset, frame_number: int) -> Dataset | None:
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    return per_frame[frame_number - 1] if 0 < frame_number <= len(per_frame) else None


def frame_position(header: Dataset, frame_number: int) -> tuple[float, float, float]:
    """Image Position (Patient) of frame ``frame_number`` (1-based) of a multi-frame image."""
    if not 1 <= frame_number <= number_of_frames(header):
        raise ValueError(f"ReferencedFrameNumber: frame {frame_number} is not in 1..{number_of_frames(header)}")
    plane = _group(_per_frame_item(header, frame_number), "PlanePositionSequence") or _group(
        _shared_item(header), "PlanePositionSequence"
    )
    position = plane.get("ImagePositionPatient") if plane is not None else None
    if position is None or len(position) != 3:
        raise ValueError(f"PlanePositionSequence: frame {frame_number} has no Image Position (Patient)")
    return tuple(float(v) for v in position)


def share_identical_groups(header: Dataset) -> Dataset:
    """Move each of ``SHAREABLE_GROUPS`` that every frame repeats identically into the shared
    item (in place; pass a copy). Returns ``header``."""
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return header
    if not header.get("SharedFunctionalGroupsSequence"):
        header.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    shared = header.SharedFunctionalGroupsSequence[0]
    for keyword in SHAREABLE_GROUPS:
        if keyword in shared or not all(keyword in item for item in per_frame):
            continue
        first = per_frame[0][keyword].value
        if any(item[keyword].value != first for item in per_frame[1:]):
            continue
        setattr(shared, keyword, first)
        for item in per_frame:
            delattr(item, keyword)
    return header
