"""One fixed creation time for every object of a result set.

highdicom stamps objects with the wall clock (Instance Creation, Content, Date of Secondary
Capture, Contribution DateTime). A re-run after a crash must rebuild identical objects, so the
pipeline records when a job first started and :func:`stamp` writes that time over the clock's.
"""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import Dataset

_DATES = ("InstanceCreationDate", "ContentDate", "DateOfSecondaryCapture")
_TIMES = ("InstanceCreationTime", "ContentTime", "TimeOfSecondaryCapture")


def stamp(dataset: Dataset, when: datetime) -> None:
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    for keyword in _DATES:
        if keyword in dataset:
            setattr(dataset, keyword, date)
    for keyword in _TIMES:
        if keyword in dataset:
            setattr(dataset, keyword, time)
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
