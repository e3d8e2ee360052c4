"""Validation of the config document: one :class:`Problem` per bad key (key, value, why).

Owned by the admin work; this first version checks only what parsing needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    key: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}: {self.reason}"


def validate_config(doc: dict) -> list[Problem]:
    problems: list[Problem] = []
    for i, s in enumerate(doc.get("sources", [])):
        if "ae_title" not in s:
            problems.append(Problem(f"sources[{i}].ae_title", None, "missing"))
    for i, d in enumerate(doc.get("destinations", [])):
        for key in ("name", "ae_title", "host", "port"):
            if key not in d:
                problems.append(Problem(f"destinations[{i}].{key}", None, "missing"))
    return problems
