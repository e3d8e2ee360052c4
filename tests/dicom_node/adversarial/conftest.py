"""The adversarial corpus: one test per way a hostile or careless site broke the node.

Each test drives a real node (``NodeProcess``: ``m2unet-node run`` in a subprocess) or the node's
receiving half (``InProcessSCP``) with DCMTK's storescu / echoscu or real pynetdicom associations,
so that the next attacker finds new breaks, not these. Shared inputs live here.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from m2unet.weights import random_weights
from tests.support.ct_series import phantom_hu, write_ct_series
from tests.support.dcmtk import have_dcmtk

needs_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu/echoscu) not installed")


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """Untrained weights: the pipeline runs end to end in seconds on a CPU."""
    return random_weights(tmp_path_factory.mktemp("adversarial-weights") / "random.pt", seed=0)


def node_config(weights: Path, **extra) -> dict:
    config = {
        "node": {"log_format": "json"},
        "model": {"weights": str(weights), "device": "cpu"},
        "sources": [{"ae_title": "CT_1"}],
    }
    config.update(extra)
    return config


def edited_series(folder: Path, edit=None, n: int = 10, size: int = 32, **kwargs) -> list[Path]:
    """A small CT series; ``edit(ds, k)`` changes each dataset before it is written back."""
    files = write_ct_series(folder, phantom_hu(n=n, size=size), **kwargs)
    if edit is not None:
        for k, path in enumerate(files):
            ds = pydicom.dcmread(path)
            edit(ds, k)
            ds.save_as(path, enforce_file_format=True)
    return files


def series_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def database_text(data_dir: Path) -> str:
    """Every value of every table of the node's database, as one text (for leak searches)."""
    import sqlite3

    conn = sqlite3.connect(data_dir / "state.sqlite3")
    try:
        parts = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                parts.append(" ".join(str(v) for v in row))
        return "\n".join(parts)
    finally:
        conn.close()


def c_store(port: int, datasets, calling_ae: str = "SCANNER", called_ae: str = "M2UNET") -> list:
    """C-STORE each pydicom dataset over one pynetdicom association; the response status datasets
    (``Status``, and ``ErrorComment`` when the node sent one), in order."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, [str(datasets[0].file_meta.TransferSyntaxUID)])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "association not established"
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()
        ae.shutdown()
