"""``m2unet-node send-demo``: a synthetic chest CT C-STOREd to a node, as a scanner would.

The CT is the training phantom of ``seed`` (``m2unet.phantom.make_phantom``; ``--slices N`` asks
for N slices of 512 x 512 over the whole chest, else the phantom's own grid), written as CT Image
Storage files by ``m2unet.phantom_dicom.write_ct_series`` into a temporary folder and sent over
one association. Defaults come from the config: the node's port and AE title, host 127.0.0.1
when the node listens on all addresses, and the first ``[[sources]]`` AE title as calling AE
(else ``DEMO_SCANNER``), so that the node accepts it. Exit 0 when every instance was stored,
1 otherwise, 2 on a bad config.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path

from dicom_node.config.model import ConfigError, NodeConfig, load_config, resolve_config_path

DEFAULT_CALLING_AE = "DEMO_SCANNER"
DEMO_COLUMNS = 512


def _config(config_path) -> NodeConfig:
    path = resolve_config_path(config_path)
    if config_path is None and not path.exists():
        return NodeConfig()
    return load_config(path)


def write_demo_series(folder: Path, seed: int, slices: int | None) -> tuple[list[Path], str]:
    """Write the phantom of ``seed`` as a CT series; returns the files and its severity."""
    from m2unet.phantom import make_phantom
    from m2unet.phantom_dicom import write_ct_series

    shape = (int(slices), DEMO_COLUMNS, DEMO_COLUMNS) if slices else None
    phantom = make_phantom(seed, shape=shape)
    return list(write_ct_series(phantom, folder)), phantom.severity


def store_files(paths: list[Path], host: str, port: int, called_ae: str, calling_ae: str) -> tuple[int, list[str]]:
    """C-STORE ``paths`` over one association; returns (stored, problems)."""
    from pydicom import dcmread
    from pynetdicom import AE
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 30
    classes = sorted({str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID) for p in paths[:1]})
    syntaxes = sorted({str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in paths[:1]})
    for sop_class in classes:
        ae.add_requested_context(sop_class, [*syntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return 0, [f"association with {called_ae}@{host}:{port} refused or failed"]
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass
    stored, problems = 0, []
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            code = int(status.Status) if "Status" in status else None
            if code == 0x0000 or (code is not None and code & 0xF000 == 0xB000):
                stored += 1
            else:
                problems.append(f"{path.name}: status {'none' if code is None else f'0x{code:04X}'}")
                if code is None:
                    break
    finally:
        if assoc.is_established:
            assoc.release()
    return stored, problems


def send_demo(config_path, host=None, port=None, called_ae=None, calling_ae=None, seed=0, slices=None) -> int:
    try:
        config = _config(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    if slices is not None and slices < 1:
        print(f"--slices must be at least 1, got {slices}", file=sys.stderr)
        return 2
    node_host = config.node.host if config.node.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = host or node_host
    port = port or config.node.port
    called_ae = called_ae or config.node.ae_title
    calling_ae = calling_ae or (config.sources[0].ae_title if config.sources else DEFAULT_CALLING_AE)
    with tempfile.TemporaryDirectory(prefix="m2unet-demo-") as folder:
        started = time.perf_counter()
        try:
            paths, severity = write_demo_series(Path(folder), seed, slices)
        except ValueError as exc:
            print(f"send-demo: {exc}", file=sys.stderr)
            return 2
        made = time.perf_counter() - started
        started = time.perf_counter()
        stored, problems = store_files(paths, host, port, called_ae, calling_ae)
        sent = time.perf_counter() - started
    for problem in problems[:10]:
        print(problem, file=sys.stderr)
    print(
        f"send-demo: phantom seed {seed} ({severity}), {len(paths)} slices made in {made:.1f} s; "
        f"{stored}/{len(paths)} stored at {called_ae}@{host}:{port} as {calling_ae} in {sent:.1f} s"
    )
    return 0 if stored == len(paths) and not problems else 1
