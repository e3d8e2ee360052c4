"""Transient resource errors: a full disk, a quota, too many open files, memory.

Such an error says nothing about the series being processed: the same job succeeds once space,
descriptors or memory are back. The pipeline therefore waits and retries instead of failing the
series (:mod:`dicom_node.pipeline.worker`); ingest answers 0xA700 "out of resources" for the same reasons.

:func:`transient_resource_error` looks through an exception and the ones it was raised from
(``__cause__``, ``__context__``), since a library may wrap the ``OSError`` of a failed write.
"""

from __future__ import annotations

import errno
import sqlite3

# errno -> what it means to an operator
TRANSIENT_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
    errno.ENOMEM: "out of memory",
    errno.ENOBUFS: "out of buffer space",
}
SQLITE_FULL = 13  # "database or disk is full"
SQLITE_NOMEM = 7
_CHAIN_DEPTH = 8


def _describe(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return f"{TRANSIENT_ERRNOS[exc.errno]} ({errno.errorcode[exc.errno]})"
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == SQLITE_FULL or "database or disk is full" in str(exc):
            return "disk full (database)"
        if code == SQLITE_NOMEM:
            return "out of memory (database)"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's CUDA OOM too
        return "out of memory"
    return None


def transient_resource_error(exc: BaseException) -> str | None:
    """What ran out ("disk full (ENOSPC)") when ``exc`` or an exception it was raised from is a
    transient resource error; None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    for _ in range(_CHAIN_DEPTH):
        if current is None or id(current) in seen:
            return None
        seen.add(id(current))
        what = _describe(current)
        if what is not None:
            return what
        current = current.__cause__ or current.__context__
    return None
