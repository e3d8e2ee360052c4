"""Training the demo weights on one lent GPU in minutes, and bringing the result home.

On the GPU machine (16 CPU cores beside the card), one command does everything::

    python -m train.demo_device run --out $OUT --minutes 7 --workers 12 \\
        --trainer a='{"patch_size": 128, "bag_size": 32, "bags_per_step": 8}' --trainer b='{}'

* a pool of ``--workers`` processes renders training phantoms
  (:func:`train.demo_phantoms.make_demo_phantom`, seeds from 0, two in five severe) and prepares
  them on the recipe's grid (:func:`train.prepared.prepare_case`) into a cache folder, for as long
  as training lasts;
* each ``--trainer NAME=JSON`` is a separate process training the ``gpu-demo`` preset
  (:data:`train.recipe.GPU_DEMO`) with those changes, side by side on the one card; it starts once
  ``--min-cases`` phantoms are ready and takes in the newly rendered ones at every epoch's end;
* each trainer leaves snapshots ``OUT/NAME-K.pt`` (K = 1, 2, 3: at 55 % and 80 % of its time budget
  and at its end): the model in float16 with the recipe, the step, the history and a description of
  the cases it saw, so that a measured choice can be made at home.

At home, ``python -m train.demo_device unpack SNAPSHOT --out DIR`` turns a snapshot into a run
folder (``recipe.json``, ``checkpoint.pt``, ``run.json``) that ``train.demo measure --run`` and
``train.demo ship --run`` take, like a run trained here.

Everything it imports runs with numpy, scipy, torch and structlog (no DICOM stack), the packages a
bare GPU machine lacks aside.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


SNAPSHOT_FRACTIONS = (0.55, 0.8)  # and the end of the run
SNAPSHOT_FORMAT = "m2unet-training-snapshot"


# -- phantom pool ---------------------------------------------------------------------------------


def _render(task: tuple[int, str, float | None]) -> str:
    from train.demo_phantoms import make_demo_phantom
    from train.fit import preprocessing_config
    from train.prepared import prepare_case, save_prepared
    from train.recipe import GPU_DEMO

    seed, folder, spacing = task
    path = Path(folder) / f"phantom{seed:06d}.npz"
    if not path.exists():
        config = preprocessing_config(GPU_DEMO.replace(in_plane_spacing_mm=spacing))
        phantom = make_demo_phantom(seed, forced=True)
        case = prepare_case(f"phantom{seed:06d}", phantom.volume, phantom.class_map, phantom.severe, config)
        save_prepared(case, path)
    return path.name


class CaseFeed:
    """The prepared phantoms of a cache folder, loaded as they appear (ready files only: the
    writer renames a finished ``.npz`` into place)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cases: list = []
        self._seen: set[str] = set()

    def take_new(self, limit: int | None = None) -> int:
        from train.prepared import load_prepared

        fresh = sorted(p for p in self.folder.glob("phantom*.npz")
                       if p.name not in self._seen and not p.name.endswith(".tmp.npz"))
        if limit is not None:
            fresh = fresh[:limit]
        for path in fresh:
            self.cases.append(load_prepared(path))
            self._seen.add(path.name)
        return len(fresh)

    def description(self) -> str:
        from train.demo_phantoms import training_data_description

        return training_data_description(self.cases)


# -- one trainer ----------------------------------------------------------------------------------


def snapshot(model, recipe, record: dict, feed: CaseFeed, path: Path, history: list[dict], started: float) -> Path:
    """The model (float16) with what a run folder needs, in one file."""
    import torch

    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    payload = {
        "format": SNAPSHOT_FORMAT,
        "model": state,
        "recipe": recipe.to_dict(),
        "step": int(record.get("step", 0)),
        "history": history,
        "minutes": round((time.monotonic() - started) / 60.0, 2),
        "cases": len(feed.cases),
        "severe": sum(c.severe for c in feed.cases),
        "training_data": feed.description(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def cmd_train(args) -> int:
    import torch

    from train.fit import fit
    from train.recipe import GPU_DEMO

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(2)  # the phantom pool has the other cores
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    recipe = GPU_DEMO.replace(time_budget_minutes=args.minutes, **json.loads(args.changes or "{}"))
    feed = CaseFeed(Path(args.cache))
    while len(feed.cases) < args.min_cases:
        if not feed.take_new():
            time.sleep(1.0)
    out = Path(args.out)
    history: list[dict] = []
    started = time.monotonic()
    due = list(SNAPSHOT_FRACTIONS)

    def on_epoch_end(model, record: dict) -> None:
        history.append(dict(record))
        added = feed.take_new()
        elapsed = (time.monotonic() - started) / 60.0 / args.minutes
        print(f"[{args.name}] epoch {record['epoch']} step {record['step']} loss {record.get('loss', float('nan')):.4f} "
              f"mil {record.get('mil', float('nan')):.4f} seg {record.get('seg', float('nan')):.4f} "
              f"lr {record['lr']:.2e} {record['seconds']}s cases {len(feed.cases)} (+{added})", flush=True)
        if due and elapsed >= due[0]:
            k = len(SNAPSHOT_FRACTIONS) - len(due) + 1
            due.pop(0)
            snapshot(model, recipe, record, feed, out / f"{args.name}-{k}.pt", history, started)

    print(f"[{args.name}] {device}: {len(feed.cases)} cases to start; recipe {json.dumps(recipe.to_dict())}", flush=True)
    result = fit(recipe, feed.cases, Path(args.work) / args.name, device=device, progress=False, on_epoch_end=on_epoch_end)
    final = snapshot(result.model, recipe, {"step": result.steps}, feed, out / f"{args.name}-{len(SNAPSHOT_FRACTIONS) + 1}.pt",
                     history, started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    print(f"[{args.name}] done: {result.steps} steps, {len(feed.cases)} cases, peak GPU memory {peak:.1f} GiB "
          f"-> {final.name}", flush=True)
    return 0


# -- the whole run --------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from multiprocessing import get_context

    out, cache, work = Path(args.out), Path(args.work) / "cache", Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    pool = get_context("spawn").Pool(args.workers)
    tasks = [(seed, str(cache), args.in_plane_spacing_mm) for seed in range(args.first_seed, args.first_seed + args.max_cases)]
    rendering = pool.imap_unordered(_render, tasks)
    trainers = []
    for spec in args.trainer:
        name, _, changes = spec.partition("=")
        command = [sys.executable, "-m", "train.demo_device", "train", "--name", name, "--changes", changes or "{}",
                   "--cache", str(cache), "--out", str(out), "--work", str(work), "--minutes", str(args.minutes),
                   "--min-cases", str(args.min_cases)]
        trainers.append((name, subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})))
    failed = []
    try:
        rendered = 0
        while any(p.poll() is None for _, p in trainers):
            try:
                rendering.next(timeout=1.0)
                rendered += 1
            except StopIteration:
                time.sleep(1.0)
            except Exception as exc:  # a timeout, or a phantom that failed: say so and carry on
                if type(exc).__name__ != "TimeoutError":
                    print(f"phantom failed: {exc!r}", flush=True)
        failed = [name for name, p in trainers if p.returncode != 0]
        print(f"rendered {rendered} phantoms; trainers {[(n, p.returncode) for n, p in trainers]}", flush=True)
    finally:
        pool.terminate()
        for _, p in trainers:
            if p.poll() is None:
                p.kill()
    return 1 if failed else 0


# -- at home --------------------------------------------------------------------------------------


def cmd_unpack(args) -> int:
    """A snapshot -> a run folder (recipe.json, checkpoint.pt with the float32 model, run.json)."""
    import torch

    from train.fit import CHECKPOINT, RECIPE
    from train.recipe import Recipe

    payload = torch.load(args.snapshot, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != SNAPSHOT_FORMAT:
        raise SystemExit(f"{args.snapshot}: not a training snapshot of train.demo_device")
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    recipe = Recipe.from_dict(payload["recipe"])
    recipe.save(run / RECIPE)
    model = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["model"].items()}
    torch.save({"model": model, "recipe": recipe.to_dict(), "epoch": recipe.epochs, "step": payload["step"],
                "history": payload["history"]}, run / CHECKPOINT)
    info = {key: payload[key] for key in ("training_data", "cases", "severe", "step", "minutes", "device", "history")}
    info["steps"] = info.pop("step")
    (run / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "history"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.demo_device", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="render phantoms and run the trainers side by side (on the GPU machine)")
    p.add_argument("--out", type=Path, required=True, help="where the snapshots go")
    p.add_argument("--work", type=Path, default=Path("/tmp/m2unet-demo-device"), help="phantom cache and run folders")
    p.add_argument("--minutes", type=float, default=7.0, help="each trainer's wall-clock budget")
    p.add_argument("--workers", type=int, default=12, help="phantom rendering processes")
    p.add_argument("--trainer", action="append", default=[], metavar="NAME=JSON", help="a trainer and its recipe changes")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--max-cases", type=int, default=2000)
    p.add_argument("--min-cases", type=int, default=24, help="phantoms ready before training starts")
    p.add_argument("--in-plane-spacing-mm", type=float, default=2.0)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("train", help="one trainer (started by run)")
    p.add_argument("--name", required=True)
    p.add_argument("--changes", default="{}")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--min-cases", type=int, default=24)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("unpack", help="a snapshot -> a run folder for train.demo measure/ship")
    p.add_argument("snapshot", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_unpack)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
