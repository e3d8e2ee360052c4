"""The demo weights' phantoms: a fixed training set and two held-out sets, each from its own seeds.

Training phantoms (seeds from ``TRAIN_SEEDS_START``) are prepared once on the 2 mm grid of the
``cpu-demo`` preset (:data:`train.recipe.CPU_DEMO`) and cached as ``.npz`` (``OUT/cache``); two in
five are drawn severe (the generator's ``severity`` argument) so that a short run sees enough of
both classes. Each phantom gets its own in-plane spacing (0.586-0.984 mm) and slice spacing
(1-7.5 mm), its own anatomy, findings and scanner. Held-out phantoms, whose seeds training never
sees, keep the generator's own prevalence and stay native volumes (``OUT/holdout``): the selection
set (seeds from ``SELECTION_SEEDS_START``) fixes the decision threshold, the test set (seeds from
``TEST_SEEDS_START``) is only scored.

Everything here runs with numpy alone (and :mod:`m2unet.phantom` when rendering), so that
:mod:`train.demo_device` can render on a bare GPU machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from train.recipe import CPU_DEMO

TRAIN_SEEDS_START = 0
SELECTION_SEEDS_START = 500_000
TEST_SEEDS_START = 900_000
SLICE_SPACINGS_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5)


def phantom_grid(seed: int) -> tuple[float, float, float]:
    """The spacing (x, y, z) of a demo phantom: varied, but never the 0.4 mm x 700-slice extreme
    (which costs minutes to render and teaches a 2-D network nothing the 1 mm slices do not)."""
    rng = np.random.default_rng([seed, 0xD3])
    in_plane = float(rng.uniform(0.586, 0.984))
    return in_plane, in_plane, float(rng.choice(SLICE_SPACINGS_MM))


HOLDOUT_SLICE_SPACINGS_MM = (2.5, 3.0, 5.0, 7.5)


def holdout_grid(seed: int) -> tuple[float, float, float]:
    """The spacing of a held-out phantom: in-plane as in training, slices 2.5-7.5 mm apart (a
    sub-range of training's, which bounds the measuring time on a shared CPU)."""
    rng = np.random.default_rng([seed, 0xD4])
    in_plane = float(rng.uniform(0.586, 0.984))
    return in_plane, in_plane, float(rng.choice(HOLDOUT_SLICE_SPACINGS_MM))


def phantom_severity(seed: int, severe_share: float = 0.4) -> str:
    rng = np.random.default_rng([seed, 0x5E])
    return "severe" if rng.random() < severe_share else "non-severe"


def make_demo_phantom(seed: int, *, forced: bool):
    """A training phantom (``forced``: severity drawn two in five severe) or a held-out one (the
    generator's own prevalence, about one in five severe)."""
    from m2unet.phantom import make_phantom

    if forced:
        return make_phantom(seed, spacing=phantom_grid(seed), severity=phantom_severity(seed))
    return make_phantom(seed, spacing=holdout_grid(seed))


def training_data_description(cases) -> str:
    severe = sum(c.severe for c in cases)
    return (
        f"Synthetic chest CT phantoms only (m2unet.phantom), no patient data: {len(cases)} cases "
        f"({severe} severe by the phantom's rule, CT severity score >= 18 of 25; {len(cases) - severe} "
        "non-severe), every case with the 7-class lobe map; in-plane spacing 0.586-0.984 mm, slice spacing "
        "1-7.5 mm, varied anatomy, ground-glass and consolidation findings and five synthetic scanner profiles."
    )


# -- the training set: prepared once, cached ------------------------------------------------------


def cache_phantoms(out: Path, first: int, count: int) -> None:
    """Render and prepare training phantoms ``first .. first + count - 1`` into ``OUT/cache``
    (those already there are kept)."""
    from train.fit import preprocessing_config
    from train.prepared import prepare_case, save_prepared

    config = preprocessing_config(CPU_DEMO)
    folder = Path(out) / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first, first + count):
        path = folder / f"phantom{seed:06d}.npz"
        if path.exists():
            continue
        started = time.monotonic()
        phantom = make_demo_phantom(seed, forced=True)
        case = prepare_case(f"phantom{seed:06d}", phantom.volume, phantom.class_map, phantom.severe, config)
        save_prepared(case, path)
        print(f"seed {seed} {phantom.severity} {phantom.volume.shape} -> {case.image.shape} "
              f"{time.monotonic() - started:.1f}s", flush=True)


def load_cache(out: Path, limit: int | None = None):
    from train.prepared import load_prepared

    paths = sorted((out / "cache").glob("phantom*.npz"))
    if limit:
        paths = paths[:limit]
    if not paths:
        raise ValueError(f"{out / 'cache'}: no cached phantoms; run 'python -m train.demo cache' first")
    return [load_prepared(p) for p in paths]


# -- the held-out sets: native volumes --------------------------------------------------------------


def holdout_path(out: Path, seed: int) -> Path:
    return out / "holdout" / f"phantom{seed:06d}.npz"


def render_holdout(out: Path, selection: int, test: int) -> None:
    """Render the first ``selection`` selection and ``test`` test phantoms into ``OUT/holdout``
    ahead of measurement (those already there are kept)."""
    for seed in list(range(SELECTION_SEEDS_START, SELECTION_SEEDS_START + selection)) + list(
        range(TEST_SEEDS_START, TEST_SEEDS_START + test)
    ):
        path = holdout_path(out, seed)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        p = make_demo_phantom(seed, forced=False)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, hu=p.volume.hu, spacing=np.array(p.volume.spacing), origin=np.array(p.volume.origin),
                 direction=np.array(p.volume.direction), class_map=p.class_map, severe=np.array(p.severe),
                 score=np.array(p.ct_severity_score))
        tmp.replace(path)
        print(f"holdout {seed} {p.severity} {p.volume.shape}", flush=True)


def holdout_phantom(out: Path, seed: int) -> dict:
    """A held-out phantom (rendered ahead, or now): ``volume``, ``lobe_map``, ``severe``, ``score``."""
    from m2unet.labels import to_lobe_map
    from m2unet.volume import Volume

    path = holdout_path(out, seed)
    if path.exists():
        with np.load(path) as d:
            volume = Volume(hu=d["hu"], spacing=tuple(d["spacing"]), origin=tuple(d["origin"]), direction=tuple(d["direction"]))
            return {"volume": volume, "lobe_map": to_lobe_map(d["class_map"]), "severe": bool(d["severe"]),
                    "score": int(d["score"])}
    p = make_demo_phantom(seed, forced=False)
    return {"volume": p.volume, "lobe_map": p.lobe_map, "severe": bool(p.severe), "score": int(p.ct_severity_score)}
