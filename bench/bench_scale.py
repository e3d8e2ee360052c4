"""Throughput of the Celery executor: studies per hour with 1, 2, ... local workers.

Starts what the scale-out tests start, at a size chosen here: Debian's ``redis-server`` (AOF on), the
node (``m2unet-node run`` with ``[pipeline] executor = "celery"``, no destination: the results stay
in data_dir) and N ``m2unet-node worker`` processes on the CPU (or ``--device cuda:N``, one worker
per listed device). ``--studies`` small phantom series are C-STOREd with DCMTK ``storescu`` at once;
the clock runs from the first C-STORE until every series is ``done``. Printed per worker count:
``studies``, ``seconds``, ``studies_per_hour`` and the mean job time from the workers' logs.

Usage (from the repository root):
    .venv/bin/python bench/bench_scale.py [--workers 1 2] [--studies 8] [--slices 24] [--size 64]
        [--weights PATH] [--devices cpu cpu]

On a machine with fewer cores than workers the workers share the cores, and the figure says how
much the scale-out costs there rather than what it gains; measure on the machines it is for.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2unet.weights import random_weights  # noqa: E402
from tests.support.ct_series import phantom_hu, write_ct_series  # noqa: E402
from tests.support.dcmtk import storescu  # noqa: E402
from tests.support.node_process import NodeProcess  # noqa: E402
from tests.support.polling import wait_until  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402


def _job_seconds(node: NodeProcess) -> list[float]:
    seconds = []
    for log in node.folder.glob("worker-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "job_done" and "seconds" in event:
                    seconds.append(float(event["seconds"]))
    return seconds


def run(workers: int, studies: int, slices: int, size: int, weights: Path, devices: list[str], folder: Path) -> dict:
    import os
    import subprocess

    with RedisServer(folder / "redis") as redis:
        node = NodeProcess(
            {
                "sources": [{"ae_title": "SCANNER"}],
                "model": {"weights": str(weights), "device": "cpu"},
                "pipeline": {"executor": "celery", "broker_url": redis.url, "worker_timeout": 30},
            },
            folder,
        ).start()
        procs = []
        try:
            for i in range(workers):
                device = devices[i % len(devices)]
                log = open(node.folder / f"worker-{i}.log", "ab")
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "dicom_node.cli", "--config", str(node.config_path), "worker",
                     "--device", device, "--name", f"bench-{i}"],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                ))
                log.close()
            assert wait_until(lambda: len(node.status_json().get("workers", [])) == workers, timeout=180, step=0.5)
            series = []
            for k in range(studies):
                files = write_ct_series(folder / f"series-{k}", phantom_hu(n=slices, size=size, seed=k))
                series.append(files)
            started = time.monotonic()
            for files in series:
                sent = storescu(node.port, files, calling_ae="SCANNER", called_ae=node.ae_title)
                assert sent.successes == len(files), sent.output[-1000:]

            def all_done() -> bool:
                counts = node.status_json()["counts"]
                return counts.get("done", 0) + counts.get("failed", 0) >= studies

            assert wait_until(all_done, timeout=3600, step=0.5), node.status_json()["counts"]
            seconds = time.monotonic() - started
            jobs = _job_seconds(node)
            return {
                "workers": workers,
                "studies": studies,
                "slices": slices,
                "size": size,
                "seconds": round(seconds, 1),
                "studies_per_hour": round(3600.0 * studies / seconds, 1),
                "mean_job_s": round(sum(jobs) / len(jobs), 2) if jobs else None,
                "failed": node.status_json()["counts"].get("failed", 0),
            }
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(120)
            node.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        weights = args.weights or random_weights(Path(tmp) / "random.pt", seed=0)
        for n in args.workers:
            print(json.dumps(run(n, args.studies, args.slices, args.size, weights, args.devices, Path(tmp) / f"w{n}")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
