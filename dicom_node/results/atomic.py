"""Result files written whole or not at all.

:func:`write_atomically` writes to ``<name>.tmp`` beside the target, fsyncs it and renames it over
the target; when anything fails (a full disk mid-write) the ``.tmp`` file is removed before the
error goes on, so a failed write leaves the previous file or none, never a torn one. The caller
fsyncs the folder once its files are written. :func:`sweep_temporary` removes ``.tmp`` files a
killed process left (at start-up, before the pipeline runs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(handle)`` into a temporary file, then fsync and rename it to ``path``."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def sweep_temporary(folder: Path) -> int:
    """Remove every ``*.tmp`` file under ``folder``; returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.rglob(f"*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed
