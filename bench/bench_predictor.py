"""Benchmark of the predictor on a synthetic chest CT (issue 2, item 9 and the Targets).

    .venv/bin/python bench/bench_predictor.py                      # 300 x 512 x 512, CPU
    .venv/bin/python bench/bench_predictor.py --slices 732 --reference-slices 0   # memory target
    .venv/bin/python bench/bench_predictor.py --device cuda        # on a lent GPU

Prints seconds per stage, the total and the peak RSS of the prediction, then times the plain
reference: eager forwards of the network (batch norm unfused, contiguous tensors, one whole
512 x 512 slice at a time) on ``--reference-slices`` slices spread over the lungs, extrapolated to
one forward per slice of the study, and the Dice of the fast lobe map against the reference's on
those slices (lobe maps before the clean-up, inside the lung mask, which both share). Random
weights unless ``--weights``. ``--json`` adds one JSON line with every figure.

Memory: the peak RSS during ``predict`` (the kernel's high-water mark, reset before the call) and
the process's lifetime peak (``resource.getrusage``); on CUDA the peak GPU memory allocated by
torch during ``predict`` (``torch.cuda.max_memory_allocated``).

The clean-up: the scipy version (:func:`m2unet.postprocess.postprocess` in
:func:`~m2unet.postprocess.network_lungs`, on the CPU) and the torch version
(:func:`m2unet.postprocess_torch.postprocess_tensor`, on ``--device``) are both run on the
prediction's raw label map, timed (the torch one twice: the first run includes CUDA's warm-up), and
compared: voxels that differ and the Dice per lobe (``--no-cleanup-check`` skips this).

``--compare-device cpu`` (with ``--device cuda``) predicts the same study on a second device and
prints its stages and the Dice per lobe of the two lobe maps (CPU against GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2unet.labels import Lobe, to_lobe_map  # noqa: E402
from m2unet.model import DOWNSAMPLING  # noqa: E402
from m2unet.predictor import InferenceOptions, Predictor  # noqa: E402
from m2unet.preprocessing import resample_in_plane, restore_in_plane_logits, window  # noqa: E402
from m2unet.volume import Volume  # noqa: E402


# -- memory -------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024.0


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024.0


def lifetime_peak_rss_mib() -> float:
    """The process's peak RSS since it started (``ru_maxrss``, KiB on Linux); cannot be reset."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_gpu(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


# -- the synthetic study ------------------------------------------------------------------------


def simple_chest(slices: int, size: int, seed: int = 0) -> Volume:
    """A chest CT of ``slices`` x ``size`` x ``size`` (int16 HU, 0.7 x 0.7 x 1 mm at 512): air around a
    body of fat and muscle, two lungs (-850 HU) over the middle 80 % of the slices that narrow towards
    apex and base, vessels, a trachea, a spine and a table. Generated a slice at a time."""
    rng = np.random.default_rng(seed)
    hu = np.empty((slices, size, size), dtype=np.int16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # 0..1
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.32) ** 2
    spine = ((xx - 0.5) / 0.05) ** 2 + ((yy - 0.74) / 0.05) ** 2 < 1
    table = (yy > 0.86) & (yy < 0.88)
    vessels = rng.uniform(0.25, 0.75, size=(40, 2)).astype(np.float32)
    for z in range(slices):
        t = z / max(slices - 1, 1)  # 0 = base, 1 = apex
        lung_t = (t - 0.1) / 0.8  # lungs over the middle 80 %
        s = np.full((size, size), -1000.0, dtype=np.float32)
        s[body < 1.0] = -100.0  # fat
        s[body < 0.85] = 40.0  # muscle and mediastinum
        if 0.0 <= lung_t <= 1.0:
            r = 0.35 + 0.65 * np.sin(np.pi * min(lung_t * 1.15, 1.0)) ** 0.7
            for cx in (0.32, 0.68):
                lung = ((xx - cx) / (0.14 * r)) ** 2 + ((yy - 0.48) / (0.22 * r)) ** 2 < 1
                s[lung] = -850.0
            for vy, vx in vessels:
                s[((xx - vx) ** 2 + (yy - vy) ** 2) < (0.006 + 0.004 * np.sin(9 * t + vx * 20)) ** 2] = 40.0
        if t > 0.6:
            s[((xx - 0.5) ** 2 + (yy - 0.4) ** 2) < 0.02**2] = -1000.0  # trachea
        s[spine] = 700.0
        s[table] = 200.0
        s += rng.normal(0.0, 15.0, size=s.shape).astype(np.float32)
        hu[z] = np.clip(s, -1024, 3000).astype(np.int16)
    return Volume(hu=hu, spacing=(0.7 * 512 / size, 0.7 * 512 / size, 1.0))


def make_study(slices: int, size: int, seed: int) -> tuple[Volume, str]:
    """The phantom of ``m2unet.phantom`` when it is there, else the simple chest above."""
    try:
        from m2unet.phantom import make_phantom
    except ImportError:
        return simple_chest(slices, size, seed), "simple synthetic chest (bench)"
    phantom = make_phantom(seed, shape=(slices, size, size))
    hu = np.asarray(phantom.volume.hu)
    if hu.dtype != np.int16 and np.issubdtype(hu.dtype, np.floating):
        hu = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    volume = Volume(hu=hu, spacing=phantom.volume.spacing, origin=phantom.volume.origin, direction=phantom.volume.direction)
    return volume, "m2unet.phantom.make_phantom"


# -- the plain reference ------------------------------------------------------------------------


def reference_class_maps(predictor: Predictor, model: torch.nn.Module, volume: Volume, slices: list[int]) -> tuple[np.ndarray, float]:
    """Plain eager forwards, one whole slice at a time; returns class maps and seconds per slice.

    For weights trained at another pixel spacing (``in_plane_spacing_mm``) the whole slice is
    resampled first and the logits brought back to the source grid, as the predictor does."""
    hu = volume.hu
    height, width = hu.shape[1:]
    target = predictor.preprocessing.in_plane_spacing_mm
    spacing_xy = (float(volume.spacing[0]), float(volume.spacing[1]))
    out = np.zeros((len(slices), height, width), dtype=np.uint8)
    device = predictor.device
    model = model.to(device).eval()
    seconds = 0.0
    with torch.no_grad():
        for i, z in enumerate([slices[0], *slices]):  # the first forward warms up, untimed
            start = time.perf_counter()
            image = window(hu[z], predictor.preprocessing)
            if target is not None:
                image = resample_in_plane(image, spacing_xy, target)
            h, w = image.shape
            padded = np.zeros((1, 1, -(-h // DOWNSAMPLING) * DOWNSAMPLING, -(-w // DOWNSAMPLING) * DOWNSAMPLING), dtype=np.float32)
            padded[0, 0, :h, :w] = image
            logits = model.segment(torch.from_numpy(padded).to(device))[:, :, :h, :w]
            if target is not None:
                logits = restore_in_plane_logits(logits.float(), (height, width))
            labels = logits[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:
                out[i - 1] = labels
                seconds += time.perf_counter() - start
    return out, seconds / max(len(slices), 1)


def dice(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Per-lobe Dice and the overall (label-weighted) Dice of two lobe maps."""
    result, inter_sum, size_sum = {}, 0, 0
    for lobe in Lobe:
        x, y = a == lobe, b == lobe
        inter, size = int(np.logical_and(x, y).sum()), int(x.sum() + y.sum())
        inter_sum, size_sum = inter_sum + inter, size_sum + size
        if size:
            result[lobe.name] = 2 * inter / size
    result["overall"] = 2 * inter_sum / size_sum if size_sum else 1.0
    return result


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="in-plane size (rows = columns)")
    parser.add_argument("--weights", type=Path, help="weights file (default: random weights, untrained)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--bags", type=int, default=None, help="at most this many bags (default: the predictor's)")
    parser.add_argument("--all-bags", action="store_true", help="always draw --bags bags (no bag_margin)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic study")
    parser.add_argument("--reference-slices", type=int, default=8,
                        help="slices timed with the plain reference and compared (0: skip; -1: every slice)")
    parser.add_argument("--repeat", type=int, default=1, help="predictions timed (the figures of the last)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--crop-margin", type=int, default=None, help="-1: whole slices")
    parser.add_argument("--decoder-margin", type=int, default=None, help="-1: decoder over the whole crop")
    parser.add_argument("--no-skip", action="store_true", help="segment slices without lung too")
    parser.add_argument("--no-fuse", action="store_true", help="keep batch norm unfused")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--runtime", default=None, help="auto | torch | onnxruntime")
    parser.add_argument("--bfloat16-trunk", action="store_true", help="CPU: the trunk in bfloat16")
    parser.add_argument("--lung-reach-mm", type=float, default=None,
                        help="how far beyond the HU lung mask the decoder runs (default: the predictor's)")
    parser.add_argument("--compare-device", default=None,
                        help="also predict on this device (e.g. cpu with --device cuda): its stages and the lobe Dice")
    parser.add_argument("--no-cleanup-check", action="store_true",
                        help="skip the scipy-vs-torch clean-up comparison")
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from m2unet.device import resolve_device
    from m2unet.weights import load_weights, random_weights

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or random_weights(Path(tmp) / "random.pt", seed=0)
        loaded = load_weights(weights, "cpu")
    options = options_for(device, args)
    predictor = make_predictor(loaded, device, options, args)

    t0 = time.perf_counter()
    volume, source = make_study(args.slices, args.size, args.seed)
    print(f"study: {source}, shape {volume.shape}, dtype {volume.hu.dtype}, spacing {tuple(round(s, 3) for s in volume.spacing)}, "
          f"made in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {predictor.device}, weights {'random (untrained)' if args.weights is None else args.weights}", flush=True)
    print(f"options: {options}, bags {predictor.bags}, runner {predictor.runner.name}, "
          f"preprocessing {predictor.preprocessing}", flush=True)

    prediction, run = timed_prediction(predictor, volume, args.repeat)
    t = prediction.timings
    print(f"lung slices {prediction.lung_slices} of {volume.shape[0]}; probability_severe {prediction.probability_severe}, "
          f"per bag {[round(p, 4) for p in prediction.bag_probabilities]}", flush=True)

    figures = {
        "slices": volume.shape[0], "size": args.size, "source": source, "device": str(predictor.device),
        "threads": torch.get_num_threads(), "timings": t, "peak_rss_mib": run["peak_rss_mib"],
        "rss_before_mib": run["rss_before_mib"], "peak_gpu_mib": run["peak_gpu_mib"],
        "lung_slices": prediction.lung_slices, "bag_probabilities": list(prediction.bag_probabilities),
    }
    if not args.no_cleanup_check and prediction.raw_class_map is not None:
        figures["cleanup"] = compare_clean_ups(prediction.raw_class_map, volume, predictor.device)
    if args.compare_device:
        other_device = resolve_device(args.compare_device)
        other = make_predictor(loaded, other_device, options_for(other_device, args), args)
        other_prediction, other_run = timed_prediction(other, volume, 1)
        figures["compare"] = {"device": str(other_device), "timings": other_prediction.timings, **other_run}
        if prediction.lobe_map is not None and other_prediction.lobe_map is not None:
            d = dice(prediction.lobe_map, other_prediction.lobe_map)
            print(f"Dice {predictor.device} vs {other_device} (lobe maps after the clean-up): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in d.items()), flush=True)
            figures["compare"]["dice"] = d
        if prediction.probability_severe is not None:
            figures["compare"]["probability_severe"] = other_prediction.probability_severe
            print(f"probability_severe {predictor.device} {prediction.probability_severe:.4f}, "
                  f"{other_device} {other_prediction.probability_severe:.4f}", flush=True)
        del other, other_prediction
    n = args.reference_slices
    if n and prediction.raw_class_map is not None:
        lung = _lung_mask_of(volume)
        candidates = np.flatnonzero(lung.any(axis=(1, 2)))
        if n < 0 or n >= len(candidates):
            chosen = [int(z) for z in candidates]
        else:
            chosen = [int(candidates[i]) for i in np.linspace(0, len(candidates) - 1, n).round().astype(int)]
        reference, per_slice = reference_class_maps(predictor, loaded.model, volume, chosen)
        ref_lobes = to_lobe_map(reference) * lung[chosen]
        fast_lobes = to_lobe_map(prediction.raw_class_map[chosen]) * lung[chosen]
        d = dice(fast_lobes, ref_lobes)
        reference_total = per_slice * volume.shape[0]
        ratio = t["total"] / reference_total
        print(f"reference: plain eager {per_slice:.3f} s per whole slice ({len(chosen)} slices timed), "
              f"x {volume.shape[0]} slices = {reference_total:.1f} s; fast total / reference = {ratio:.3f}", flush=True)
        print("Dice fast vs reference (lobes inside the lungs, before clean-up): "
              + ", ".join(f"{k} {v:.4f}" for k, v in d.items()), flush=True)
        figures.update(reference_seconds_per_slice=per_slice, reference_total=reference_total,
                       ratio=ratio, dice=d, reference_slices=len(chosen))
    figures["lifetime_peak_rss_mib"] = round(lifetime_peak_rss_mib(), 1)
    print(f"lifetime peak RSS of the process (getrusage) {figures['lifetime_peak_rss_mib']:.0f} MiB", flush=True)
    if args.json:
        print(json.dumps(figures))
    return 0


def options_for(device: torch.device, args: argparse.Namespace) -> InferenceOptions:
    """The device's default options, overridden by the command line."""
    defaults = InferenceOptions.for_device(device)
    runtime = args.runtime or defaults.runtime
    if device.type == "cuda" and runtime == "onnxruntime":
        runtime = "torch"  # ONNX Runtime is a CPU option
    return InferenceOptions(
        crop_margin=defaults.crop_margin if args.crop_margin is None else (None if args.crop_margin < 0 else args.crop_margin),
        decoder_margin=defaults.decoder_margin if args.decoder_margin is None else (None if args.decoder_margin < 0 else args.decoder_margin),
        skip_empty_slices=not args.no_skip,
        batch_size=args.batch_size or defaults.batch_size,
        fuse_batch_norm=not args.no_fuse,
        channels_last=not args.no_channels_last,
        patch_batch=defaults.patch_batch,
        runtime=runtime,
        bfloat16_trunk=args.bfloat16_trunk and device.type == "cpu",
        lung_reach_mm=defaults.lung_reach_mm if args.lung_reach_mm is None else args.lung_reach_mm,
    )


def make_predictor(loaded, device: torch.device, options: InferenceOptions, args: argparse.Namespace) -> Predictor:
    kwargs = {} if args.bags is None else {"bags": args.bags}
    if args.all_bags:
        kwargs["bag_margin"] = None
    return Predictor(loaded.model, loaded.metadata, loaded.sha256, device, options=options, **kwargs)


def timed_prediction(predictor: Predictor, volume: Volume, repeat: int):
    """``repeat`` predictions (the figures of the last) with the memory they took."""
    device = predictor.device
    before = rss_mib()
    reset_peak_rss()
    reset_peak_gpu(device)
    for _ in range(repeat):
        prediction = predictor.predict(volume, seed=1, keep_raw=True)
    peak, gpu = peak_rss_mib(), peak_gpu_mib(device)
    t = prediction.timings
    print(f"[{device}] stage seconds: " + ", ".join(f"{k} {t[k]:.2f}" for k in t), flush=True)
    print(f"[{device}] peak RSS {peak:.0f} MiB (RSS before predict {before:.0f} MiB, volume {volume.hu.nbytes / 2**20:.0f} MiB)"
          + ("" if gpu is None else f", peak GPU memory {gpu:.0f} MiB"), flush=True)
    return prediction, {"peak_rss_mib": round(peak, 1), "rss_before_mib": round(before, 1),
                        "peak_gpu_mib": None if gpu is None else round(gpu, 1)}


def compare_clean_ups(raw: np.ndarray, volume: Volume, device: torch.device) -> dict:
    """The scipy clean-up on the CPU against the torch clean-up on ``device``, on one raw map."""
    from m2unet.postprocess import network_lungs, postprocess
    from m2unet.postprocess_torch import postprocess_tensor

    start = time.perf_counter()
    expected = postprocess(raw, network_lungs(raw), volume.spacing)
    scipy_seconds = time.perf_counter() - start
    seconds = []
    reset_peak_gpu(device)
    for _ in range(2):
        start = time.perf_counter()
        got = postprocess_tensor(torch.from_numpy(raw).to(device), volume.spacing).cpu().numpy()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    gpu = peak_gpu_mib(device)
    differing = int((got != expected).sum())
    d = dice(to_lobe_map(got), to_lobe_map(expected))
    print(f"clean-up: scipy (CPU) {scipy_seconds:.2f} s; torch ({device}) {seconds[0]:.2f} s first, {seconds[1]:.2f} s second"
          + ("" if gpu is None else f", peak GPU memory {gpu:.0f} MiB")
          + f"; voxels differing {differing} of {raw.size} ({int((expected != raw).sum())} changed by the clean-up)", flush=True)
    print("Dice torch vs scipy clean-up: " + ", ".join(f"{k} {v:.4f}" for k, v in d.items()), flush=True)
    return {"scipy_seconds": scipy_seconds, "torch_seconds": seconds, "torch_device": str(device),
            "peak_gpu_mib": None if gpu is None else round(gpu, 1), "voxels_differing": differing,
            "voxels_changed_by_cleanup": int((expected != raw).sum()), "dice": d}


def _lung_mask_of(volume: Volume) -> np.ndarray:
    from m2unet.lungs import lung_mask

    return lung_mask(volume)


if __name__ == "__main__":
    raise SystemExit(main())
