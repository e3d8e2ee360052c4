"""Deterministic UIDs and series numbers of the result objects.

Every UID is ``pydicom.uid.generate_uid(entropy_srcs=[...])`` over: the kind of object, the
source Series Instance UID, the sorted SOP Instance UIDs the node received for that series (its
content), the sha256 of the weights, and the series' ``version``. Hence

- a job re-run after a crash (or a restart that re-queued it) rebuilds objects with the same
  UIDs, and a PACS that receives an object twice keeps one;
- other weights or other received content give other UIDs (they are different results);
- a series re-sent after it was done (ingest re-opens it and bumps ``version``) gets new UIDs
  and higher series numbers: a new version of the results beside the old one, never a silent
  overwrite of an object the PACS already holds.

Series numbers: ``1000 * source series number + 100 + 10 * (version - 1) + kind`` where kind is
1 SEG, 2 SR, 3 summary image (versions above 90 share the last slot), so the results sort after
their source series and a newer version sorts after an older one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pydicom.uid import generate_uid


class ResultKind(IntEnum):
    SEG = 1
    SR = 2
    SUMMARY = 3


@dataclass(frozen=True)
class ResultIdentity:
    """Series Instance UID, SOP Instance UID and Series Number of one result object."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int


def result_identity(
    kind: ResultKind,
    source_series_uid: str,
    source_sop_instance_uids: list[str] | tuple[str, ...],
    weights_sha256: str,
    version: int = 1,
    source_series_number: int | None = None,
) -> ResultIdentity:
    if not source_series_uid:
        raise ValueError(f"source_series_uid must not be empty, got {source_series_uid!r}")
    if not source_sop_instance_uids:
        raise ValueError("source_sop_instance_uids must not be empty")
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version!r}")
    entropy = [
        "m2unet-node result",
        kind.name,
        source_series_uid,
        *sorted(source_sop_instance_uids),
        weights_sha256,
        str(int(version)),
    ]
    return ResultIdentity(
        series_instance_uid=generate_uid(entropy_srcs=[*entropy, "series"]),
        sop_instance_uid=generate_uid(entropy_srcs=[*entropy, "instance"]),
        series_number=series_number(kind, version, source_series_number),
    )


def series_number(kind: ResultKind, version: int, source_series_number: int | None) -> int:
    base = 1000 * min(max(int(source_series_number or 0), 0), 2_000_000)  # IS stays < 2^31
    return base + 100 + 10 * (min(int(version), 90) - 1) + int(kind)


def derived_uid(parent_uid: str, purpose: str) -> str:
    """A UID for a part of an object (e.g. its Dimension Organization), fixed by the object's UID."""
    return generate_uid(entropy_srcs=["m2unet-node", parent_uid, purpose])
