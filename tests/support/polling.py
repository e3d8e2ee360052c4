"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 30.0, step: float = 0.05):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` seconds pass; return its
    last value (falsy on timeout, for the caller's assert to say what was missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()
