"""Durable writes: a file is there whole, or the previous one (or none) is, never a torn one.

Every file the node must not lose or half-write goes through here: received instances (the spool),
result objects and findings, the outbox copies, and the edited config file.

:func:`atomic_write` writes to a temporary file beside the target, fsyncs it, renames it over the
target and, unless the caller batches several files, fsyncs the folder so the rename itself
survives a power cut. When anything fails (a full disk mid-write) the temporary file is removed
before the error goes on. :func:`link_or_copy` does the same for a file that already exists
elsewhere (a hard link when the file system allows, else a copy). :func:`sweep_temporary` removes
the temporary files a killed process left behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Union

TMP_SUFFIX = ".tmp"

Content = Union[bytes, str, Iterable[Union[bytes, memoryview]], Callable[[BinaryIO], None]]


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (files created, renamed or deleted in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(path: Path, suffix: str = TMP_SUFFIX, unique: bool = False) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path``; ``unique`` adds the process and
    thread, for targets that several writers may race to create."""
    if unique:
        return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident():x}{suffix}")
    return path.with_name(path.name + suffix)


def _write_content(handle: BinaryIO, content: Content) -> None:
    if callable(content):
        content(handle)
    elif isinstance(content, str):
        handle.write(content.encode("utf-8"))
    elif isinstance(content, (bytes, bytearray, memoryview)):
        handle.write(content)
    else:
        for chunk in content:
            handle.write(chunk)


def atomic_write(
    path: Path,
    content: Content,
    *,
    mode: int | None = None,
    sync_folder: bool = True,
    suffix: str = TMP_SUFFIX,
    unique: bool = False,
) -> None:
    """Replace ``path`` with ``content``: bytes, text (UTF-8), an iterable of chunks, or a callable
    that writes to the open binary handle. ``mode`` sets the file's permissions (else the umask's);
    ``sync_folder=False`` leaves the folder's fsync to a caller writing several files into it."""
    path = Path(path)
    tmp = temporary_path(path, suffix, unique)
    try:
        with open(tmp, "wb") as handle:
            _write_content(handle, content)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_folder:
        fsync_dir(path.parent)


def link_or_copy(source: Path, target: Path, *, sync_folder: bool = True) -> None:
    """Put ``source``'s content at ``target`` durably: a hard link where the file system allows
    (no bytes copied), else a copy fsynced before it is renamed into place."""
    target = Path(target)
    tmp = temporary_path(target)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        try:
            os.link(source, tmp)
        except OSError:
            with open(source, "rb") as src:
                atomic_write(target, lambda handle: _copy(src, handle), sync_folder=sync_folder)
            return
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_folder:
        fsync_dir(target.parent)


def _copy(src: BinaryIO, dst: BinaryIO, chunk: int = 1 << 20) -> None:
    while block := src.read(chunk):
        dst.write(block)


def sweep_temporary(folder: Path, suffix: str = TMP_SUFFIX) -> int:
    """Remove every ``*<suffix>`` file under ``folder``; returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.rglob(f"*{suffix}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed
