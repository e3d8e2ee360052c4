"""How much of ``data_dir`` each area uses, and how much room its file system has left (for
``m2unet-node status``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dicom_node.state import db
from dicom_node.delivery.outbox import OUTBOX_DIR
from dicom_node.ops.recovery import QUARANTINE_DIRNAME
from dicom_node.results.records import RESULTS_DIR
from dicom_node.ingest.spool import SPOOL_DIRNAME


def disk_use(data_dir: str | Path) -> dict:
    """Bytes used under ``data_dir`` per area (hard links counted once) and the file system's
    free and total bytes."""
    data_dir = Path(data_dir)
    seen: set[tuple[int, int]] = set()
    areas = {SPOOL_DIRNAME: 0, RESULTS_DIR: 0, OUTBOX_DIR: 0, QUARANTINE_DIRNAME: 0, "database": 0, "other": 0}
    if data_dir.is_dir():
        for root, _dirs, files in os.walk(data_dir):
            rel = Path(root).relative_to(data_dir).parts
            for name in files:
                try:
                    st = os.lstat(Path(root) / name)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                if rel and rel[0] in areas:
                    area = rel[0]
                elif not rel and name.startswith(db.DB_FILENAME):
                    area = "database"
                else:
                    area = "other"
                areas[area] += st.st_size
    out = {f"{area}_bytes": n for area, n in areas.items()}
    out["used_bytes"] = sum(areas.values())
    try:
        usage = shutil.disk_usage(data_dir if data_dir.exists() else data_dir.parent)
        out["free_bytes"], out["total_bytes"] = usage.free, usage.total
    except OSError:
        out["free_bytes"] = out["total_bytes"] = None
    return out
