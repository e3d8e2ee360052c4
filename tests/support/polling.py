"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 30.0, step: float = 0.05):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` seconds pass; return its
    last value (falsy on timeout, for the caller's assert to say what was missing).

    An exception raised by ``predicate`` ends the wait at once: raise from it to fail fast, for
    example when the process being waited on has exited. Every deadline loop of the tests is this
    one: for "nothing happened" checks, wait here for a sign that the component has done its
    work (a log event, a counted pass), then assert what must not have happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()
