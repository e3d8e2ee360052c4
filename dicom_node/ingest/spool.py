"""The spool: received instances on disk, exactly as they arrived, written durably.

Layout: ``data_dir/spool/<study>/<series>/<instance>.dcm`` where each part is the first 32 hex
digits of the SHA-256 of the UID. A UID never goes raw into a path, so a hostile UID such as
``../../x`` cannot escape ``data_dir``. Each file is the DICOM File Format (preamble, file meta,
then the dataset bytes as the peer encoded them: nothing is decoded on receipt).

Durability: the bytes go to a temporary file in the target folder, which is fsynced, renamed over
the final name and followed by an fsync of the folder. Only then may the C-STORE success status go
out: a process killed at any instant leaves either the previous file or the new one, never a torn
one. Leftover ``*.part`` files of writes that never finished are removed by :meth:`Spool.sweep`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dicom_node.durable import atomic_write, fsync_dir, sweep_temporary

SPOOL_DIRNAME = "spool"
PART_SUFFIX = ".part"


def uid_key(uid: str) -> str:
    """The path-safe name for a UID: 32 hex digits of its SHA-256."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:32]


def content_digest(data: bytes | memoryview) -> str:
    """SHA-256 of the dataset bytes: what decides whether a repeated instance is the same."""
    return hashlib.sha256(data).hexdigest()


class Spool:
    """Durable file storage for received instances under ``data_dir/spool``."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.root = Path(data_dir) / SPOOL_DIRNAME
        self._known_dirs: set[Path] = set()
        self._ensure_dir(self.root)

    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        return self.root / uid_key(study_uid) / uid_key(series_uid) / f"{uid_key(sop_instance_uid)}.dcm"

    def _ensure_dir(self, folder: Path) -> None:
        """Create ``folder`` (and parents) durably: each new entry's parent is fsynced."""
        if folder in self._known_dirs:
            return
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                pass
            fsync_dir(d.parent)
        self._known_dirs.add(folder)

    def write(self, path: Path, chunks: list[bytes | memoryview]) -> None:
        """Write ``chunks`` to ``path`` atomically and durably (raises ``OSError`` on failure)."""
        self._ensure_dir(path.parent)
        atomic_write(path, chunks, mode=0o640, suffix=PART_SUFFIX, unique=True)

    def sweep(self) -> int:
        """Remove the temporary files of writes that a crash interrupted; returns how many."""
        return sweep_temporary(self.root, PART_SUFFIX)
