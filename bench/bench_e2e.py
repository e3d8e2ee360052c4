"""End-to-end latency of the node: last C-STORE of a series -> SEG and SR acknowledged by the PACS.

Sets up what the tests use, at full size: a phantom series (default 300 slices of 512 x 512) sent
by DCMTK ``storescu`` to ``m2unet-node run`` (a subprocess), which sends its results to Orthanc.
Measured from the moment storescu has its last C-STORE response (the series is complete from the
scanner's view) until Orthanc holds both the SEG and the SR of the series, minus the configured
quiet period (``series_timeout``), which is waiting by design. Reported:

- ``latency_s``: that interval, wall clock;
- ``node_cpu_s``: CPU seconds (user + system, all threads) the node process spent in it;
- ``engine_s``: the predictor's own time for the series (from the node's ``job_done`` log event),
  and ``overhead_s`` = latency - engine: reconstruction, quantification, SEG/SR/summary building,
  writing, outbox and sending (the target is under 10 s);
- ``ingest_s``: how long storescu took to send the series (not part of the latency).

Usage (from the repository root):
    .venv/bin/python bench/bench_e2e.py [--slices 300] [--size 512] [--weights PATH] [--device cpu]
        [--series-timeout 2] [--seed 11] [--no-summary]
Without ``--weights`` the shipped weights are used when present, else random-init weights
(the same network and cost, meaningless answers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.node_process import NodeProcess  # noqa: E402
from tests.support.orthanc import OrthancServer  # noqa: E402

STORESCU = "/usr/bin/storescu"  # DCMTK's


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def results_present(pacs: OrthancServer, study_uid: str, known: set[str]) -> set[str]:
    """Modalities of result objects Orthanc holds in ``study_uid`` (looking only at new instances)."""
    found = set()
    for orthanc_id in pacs.instances():
        if orthanc_id in known:
            continue
        tags = pacs.instance_tags(orthanc_id)
        if tags.get("Modality") == "CT":
            known.add(orthanc_id)
            continue
        if tags.get("StudyInstanceUID") == study_uid:
            found.add(tags.get("Modality"))
    return found


def weights_path(arg: str | None, folder: Path) -> Path:
    if arg:
        return Path(arg)
    from m2unet.weights import default_weights_path, random_weights

    shipped = default_weights_path()
    if shipped.exists():
        return shipped
    return random_weights(folder / "random.pt", seed=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--series-timeout", type=float, default=2.0)
    parser.add_argument("--no-summary", action="store_true", help="[results] summary_image = false")
    args = parser.parse_args()

    from m2unet.phantom import make_phantom
    from m2unet.phantom_dicom import write_ct_series

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        phantom = make_phantom(args.seed, shape=(args.slices, args.size, args.size))
        files = write_ct_series(phantom, tmp / "series")
        print(f"phantom: {len(files)} slices of {args.size} x {args.size} in {time.perf_counter() - t:.1f} s", flush=True)
        import pydicom

        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        study_uid = str(first.StudyInstanceUID)
        weights = weights_path(args.weights, tmp)

        with OrthancServer(tmp / "orthanc") as pacs:
            config = {
                "node": {"series_timeout": args.series_timeout},
                "sources": [{"ae_title": "SCANNER"}],
                "destinations": [{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}],
                "model": {"weights": str(weights), "device": args.device},
                "results": {"summary_image": not args.no_summary},
            }
            with NodeProcess(config, tmp) as node:
                time.sleep(2.0)  # let the node settle (weights load in the pipeline thread)
                t0 = time.perf_counter()
                sent = subprocess.run(
                    [STORESCU, "-aet", "SCANNER", "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, files)],
                    capture_output=True,
                    text=True,
                )
                t_last = time.perf_counter()
                cpu_last = cpu_seconds(node.proc.pid)
                if sent.returncode != 0:
                    print(sent.stdout + sent.stderr, file=sys.stderr)
                    return 1
                known: set[str] = set()
                found: set[str] = set()
                deadline = t_last + 3600
                while not {"SEG", "SR"} <= found and time.perf_counter() < deadline:
                    found |= results_present(pacs, study_uid, known)
                    if {"SEG", "SR"} <= found:
                        break
                    time.sleep(0.05)
                t_done = time.perf_counter()
                cpu_done = cpu_seconds(node.proc.pid)
                job = next((e for e in node.log_events() if e.get("event") == "job_done"), {})
        latency = t_done - t_last - args.series_timeout
        engine = float(job.get("predict_seconds", float("nan")))
        report = {
            "slices": len(files),
            "size": args.size,
            "device": args.device,
            "weights": str(weights.name),
            "ingest_s": round(t_last - t0, 2),
            "series_timeout_s": args.series_timeout,
            "latency_s": round(latency, 2),
            "node_cpu_s": round(cpu_done - cpu_last, 2),
            "engine_s": round(engine, 2),
            "overhead_s": round(latency - engine, 2),
            "job_s": job.get("seconds"),
            "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
