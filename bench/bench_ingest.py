"""Ingest benchmark: a 300-slice 512 x 512 CT series over loopback into the node vs a minimal SCP.

    .venv/bin/python bench/bench_ingest.py [--slices 300] [--repeats 3] [--senders 4]

Runs, in one go, each receiver in its own process and the sender in this one:

- ``baseline``: a minimal pynetdicom SCP whose C-STORE handler only writes the raw received bytes
  (``event.encoded_dataset()``) to a file with fsync, TCP_NODELAY on its sockets;
- ``node``: ``m2unet-node run`` (SCP, spool, database, assembler, and whatever pipeline and sender
  are installed, idle);
- ``node-scp-untuned``: the node's SCP alone without its socket tuning (TCP_NODELAY, TCP_QUICKACK,
  large reads: :mod:`dicom_node.ingest.socket_tuning`), i.e. pynetdicom's own socket handling (an ablation).

The sender is pynetdicom streaming the files as stored (no decoding), with TCP_NODELAY. Then four
senders (processes) send four different series to the node at once; every instance must be
acknowledged with success and found in the node's database.

Target (issue 3): node time <= 1.2 x baseline time for the single series.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CALLED_AE = "M2UNET"


def write_series(folder: Path, slices: int, size: int, seed: int) -> list[Path]:
    from pydicom.uid import generate_uid

    from tests.support.ct_series import write_ct_series

    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 1500, size=(slices, size, size), dtype=np.int16)
    return write_ct_series(folder, hu, spacing=(0.7, 0.7, 1.0), study_uid=generate_uid(), series_uid=generate_uid())


def _nodelay(event) -> None:
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def send_series(port: int, files: list[str], calling_ae: str) -> tuple[float, list[int]]:
    """Send ``files`` in one association; returns (seconds, statuses)."""
    from pynetdicom import AE, _config, evt
    from pynetdicom.sop_class import CTImageStorage
    from pydicom.uid import ExplicitVRLittleEndian

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = 0
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED_AE, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if not assoc.is_established:
        raise RuntimeError(f"association to port {port} failed")
    statuses = []
    for f in files:
        rsp = assoc.send_c_store(Path(f))
        statuses.append(int(rsp.Status) if rsp else -1)
    assoc.release()
    return time.perf_counter() - t0, statuses


def _send_job(args) -> tuple[float, list[int]]:
    return send_series(*args)


# -- the baseline receiver (run as a subprocess of this script) --


def baseline_scp(port: int, folder: Path) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(10**9))

    def on_store(event) -> int:
        path = folder / f"{next(counter)}.dcm"
        with open(path, "wb") as fh:
            fh.write(event.encoded_dataset())
            fh.flush()
            os.fsync(fh.fileno())
        return 0x0000

    ae = AE(ae_title=CALLED_AE)
    ae.maximum_pdu_size = 0
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context("1.2.840.10008.1.1")
    ae.start_server(
        ("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, _nodelay)]
    )


def node_scp_only(port: int, data_dir: Path, tuned: bool) -> None:
    from dicom_node.config.model import NodeConfig, NodeSettings
    from dicom_node.state.db import connect
    from dicom_node.ingest.receive import Receiver
    from dicom_node.ingest.scp import StorageSCP
    from dicom_node.ingest.spool import Spool

    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    config = NodeConfig(
        node=NodeSettings(host="127.0.0.1", port=port, data_dir=data_dir, reject_unknown_sources=False)
    )
    conn = connect(data_dir)
    scp = StorageSCP(lambda: config, Receiver(conn, Spool(data_dir), "1.2.3.4", "BENCH"), tune_sockets=tuned)
    scp.start()
    while True:
        time.sleep(1)


def storage_only(files: list[Path], folder: Path) -> tuple[float, float]:
    """Seconds per instance for the storage path alone, no network: the baseline's write + fsync
    vs the node's check, spool (temporary file, fsync, rename, folder fsync) and database record."""
    from pydicom.filereader import read_file_meta_info

    from dicom_node.state.db import connect
    from dicom_node.ingest.receive import Receiver as NodeReceiver
    from dicom_node.ingest.spool import Spool

    payloads = []
    for f in files:
        meta = read_file_meta_info(f)
        raw = f.read_bytes()
        payloads.append((raw, 132 + 12 + int(meta.FileMetaInformationGroupLength), meta))
    base_dir = folder / "raw"
    base_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    for i, (raw, _, _) in enumerate(payloads):
        with open(base_dir / f"{i}.dcm", "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    base = (time.perf_counter() - t0) / len(payloads)
    conn = connect(folder / "node")
    receiver = NodeReceiver(conn, Spool(folder / "node"), "1.2.3.4", "BENCH")
    t0 = time.perf_counter()
    for raw, start, meta in payloads:
        result = receiver.receive(
            raw[start:], meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID, "BENCH", False
        )
        assert result.status == 0
    node = (time.perf_counter() - t0) / len(payloads)
    conn.close()
    return base, node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


class Receiver:
    def __init__(self, name: str, argv: list[str] | None, port: int, node=None) -> None:
        self.name, self.port, self.node = name, port, node
        self.proc = subprocess.Popen(argv, cwd=REPO) if argv else None
        if node is None:
            _wait_port(port)

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--baseline-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--node-scp", nargs=3, metavar=("PORT", "DIR", "TUNED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_scp:
        baseline_scp(int(args.baseline_scp[0]), Path(args.baseline_scp[1]))
        return 0
    if args.node_scp:
        node_scp_only(int(args.node_scp[0]), Path(args.node_scp[1]), args.node_scp[2] == "1")
        return 0

    from tests.support.node_process import NodeProcess

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        series = [write_series(tmp / f"series{i}", args.slices, args.size, seed=i) for i in range(max(1, args.senders))]
        size_mb = sum(p.stat().st_size for p in series[0]) / 1e6
        print(f"series: {args.slices} slices of {args.size}x{args.size}, {size_mb:.0f} MB per series "
              f"(written in {time.perf_counter() - t0:.1f} s)")
        os.sync()  # start every timed run with no dirty pages from the set-up
        base_s, node_s = storage_only(series[0], tmp / "storage-only")
        print(f"storage path only, no network (ms per instance): baseline write+fsync {base_s * 1e3:.2f}, "
              f"node check+spool+record {node_s * 1e3:.2f}")
        sources = [{"ae_title": f"SCANNER{i}"} for i in range(max(1, args.senders))]
        node = NodeProcess({"sources": sources, "node": {"series_timeout": 2}}, tmp, name="node").start()
        receivers = {
            "baseline": Receiver("baseline", [sys.executable, __file__, "--baseline-scp", str(p := _free_port()), str(tmp / "baseline")], p),
            "node": Receiver("node", None, node.port, node=node),
            "node-scp-untuned": Receiver(
                "node-scp-untuned", [sys.executable, __file__, "--node-scp", str(q := _free_port()), str(tmp / "untuned"), "0"], q
            ),
        }
        files = [str(f) for f in series[0]]
        times: dict[str, list[float]] = {k: [] for k in receivers}
        try:
            send_series(receivers["baseline"].port, files[:5], "WARMUP")
            names = list(receivers)
            for r in range(args.repeats):
                for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
                    rec = receivers[name]
                    os.sync()
                    seconds, statuses = send_series(rec.port, files, "SCANNER0")
                    bad = [s for s in statuses if s != 0]
                    if bad:
                        print(f"  {name}: {len(bad)} failure statuses: {sorted(set(bad))}")
                    times[name].append(seconds)
            print(f"\none series, {args.repeats} repeats (seconds; median [min..max], MB/s at the median):")
            for name, ts in times.items():
                med = statistics.median(ts)
                print(f"  {name:<16} {med:6.2f} [{min(ts):.2f}..{max(ts):.2f}]  {size_mb / med:6.0f} MB/s")
            ratio = statistics.median(times["node"]) / statistics.median(times["baseline"])
            print(f"  node / baseline: {ratio:.2f} (target <= 1.20)")

            if args.senders > 1:
                jobs = [(node.port, [str(f) for f in s], f"SCANNER{i}") for i, s in enumerate(series)]
                ctx = mp.get_context("spawn")
                os.sync()
                t0 = time.perf_counter()
                with ctx.Pool(len(jobs)) as pool:
                    results = pool.map(_send_job, jobs)
                wall = time.perf_counter() - t0
                statuses = [s for _, st in results for s in st]
                failures = sum(1 for s in statuses if s != 0)
                from pydicom import dcmread

                from dicom_node.state import db

                conn = db.connect(node.data_dir)
                stored = {}
                for s in series:
                    uid = str(dcmread(s[0], stop_before_pixels=True).SeriesInstanceUID)
                    stored[uid] = len(db.series_instance_paths(conn, uid))
                conn.close()
                sent = len(series) * args.slices
                print(f"\n{len(jobs)} senders at once into the node: {wall:.2f} s wall for {sent} instances "
                      f"({len(jobs) * size_mb / wall:.0f} MB/s); failure statuses: {failures}; "
                      f"instances in the database: {sum(stored.values())} of {sent}")
                lost = sent - sum(stored.values())
                if failures or lost:
                    print("  FAIL: instances lost or refused")
                    return 1
        finally:
            for rec in receivers.values():
                rec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
