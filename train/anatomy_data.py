"""Training and held-out data rendered from the real lobe annotations (:mod:`m2unet.phantoms`).

Three sets, fixed from the start and never mixed:

- **training**: the 32 annotations outside :data:`m2unet.phantoms.HELD_OUT`, each rendered many
  times (seed ``1000 * i + k`` for the ``i``-th annotation in name order, ``k`` = 0, 1, ...), two
  in five forced severe, lesion looks from the training families only; prepared once on the
  recipe's grid and cached as ``OUT/cache/anatomy-<i>-<k>.npz``.
- **held-out anatomy** (``holdout-anatomy``): the 8 held-out annotations, rendered with seeds
  ``HOLDOUT_SEED + 10 * j + r`` (appearance draws training never made), severity as the generator
  draws it; native volumes in ``OUT/holdout-anatomy/``. Per-lobe Dice and checkpoint choice.
- **held-out look** (``holdout-look``): the held-out annotations with the held-out lesion family
  (crazy paving) at involvement from none to most of the lung; native volumes in
  ``OUT/holdout-look/``. Whether the probability of severe rises with involvement on a look
  never trained on.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from m2unet.preprocessing import PreprocessingConfig
from m2unet.volume import Volume

HOLDOUT_SEED = 700_000
LOOK_SEED = 800_000
SEVERE_SHARE = 0.4


def training_seed(index: int, k: int) -> int:
    return 1000 * index + k


def forced_severity(seed: int, share: float = SEVERE_SHARE) -> str:
    rng = np.random.default_rng([seed, 0x5E, 0xA7])
    return "severe" if rng.random() < share else "non-severe"


def annotation_index() -> list[tuple[int, Path, bool]]:
    """(index in name order, path, held out?) of every annotation."""
    from m2unet.phantoms import HELD_OUT, annotation_name, annotation_paths

    return [(i, p, annotation_name(p) in HELD_OUT) for i, p in enumerate(annotation_paths())]


def layout_consistent(names: set[str]) -> set[str]:
    """Those of the annotation ``names`` whose label map passes
    :func:`m2unet.phantoms.annotations.layout_problems`."""
    from m2unet.phantoms import annotation_name

    return {annotation_name(p) for _, p, _ in annotation_index() if annotation_name(p) in names and _layout_passes(p)}


@functools.lru_cache(maxsize=None)
def _layout_passes(path: Path) -> bool:
    """One read of each label map per process (``compare`` summarises several results files)."""
    from m2unet.phantoms import load_annotation
    from m2unet.phantoms.annotations import layout_problems

    return not layout_problems(load_annotation(path))


def render_training(
    out: Path, per_annotation: int, config: PreprocessingConfig, first: int = 0,
    severe_share: float = SEVERE_SHARE, log=print,
) -> int:
    """Render ``per_annotation`` cases (k = first .. first + per_annotation - 1) of each training
    annotation into the cache, round-robin over annotations so that a partial cache covers all
    chests; ``severe_share`` of them (by seed) are forced severe. Returns the number written."""
    from m2unet.phantoms import load_annotation, make_anatomy_phantom
    from train.prepared import prepare_case, save_prepared

    folder = out / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    entries = [(i, p) for i, p, held in annotation_index() if not held]
    cache: dict[int, object] = {}
    written = 0
    for k in range(first, first + per_annotation):
        for i, path in entries:
            target = folder / f"anatomy-{i:02d}-{k:03d}.npz"
            if target.exists():
                continue
            started = time.monotonic()
            annotation = cache.get(i) or load_annotation(path)
            cache[i] = annotation  # 32 decoded chests: about 4 GB
            seed = training_seed(i, k)
            phantom = make_anatomy_phantom(annotation, seed, severity=forced_severity(seed, severe_share))
            case = prepare_case(target.stem, phantom.volume, phantom.class_map, phantom.severe, config)
            save_prepared(case, target)
            written += 1
            log(f"{target.name} {phantom.severity} score {phantom.ct_severity_score} {phantom.lesions.family} "
                f"{phantom.appearance.thickness_mm} mm {phantom.volume.shape} {time.monotonic() - started:.1f}s")
    return written


def _save_native(path: Path, phantom, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    v = phantom.volume
    np.savez_compressed(
        tmp, hu=v.hu, spacing=np.array(v.spacing), origin=np.array(v.origin), direction=np.array(v.direction),
        class_map=phantom.class_map, severe=np.array(phantom.severe), score=np.array(phantom.ct_severity_score),
        involvement=np.array([phantom.involvement_percent[lobe] for lobe in sorted(phantom.involvement_percent)]),
        family=np.array(phantom.lesions.family), annotation=np.array(phantom.annotation),
        thickness=np.array(phantom.appearance.thickness_mm), **extra,
    )
    tmp.replace(path)


def render_holdout(out: Path, per_annotation: int, look_per_annotation: int, log=print) -> None:
    """Render the held-out anatomy and held-out look sets (native volumes)."""
    from m2unet.phantoms import HELD_OUT_FAMILY, load_annotation, make_anatomy_phantom

    held = [(i, p) for i, p, h in annotation_index() if h]
    for j, (i, path) in enumerate(held):
        annotation = None
        for r in range(per_annotation):
            target = out / "holdout-anatomy" / f"anatomy-{i:02d}-{r:02d}.npz"
            if not target.exists():
                annotation = annotation or load_annotation(path)
                phantom = make_anatomy_phantom(annotation, HOLDOUT_SEED + 10 * j + r)
                _save_native(target, phantom)
                log(f"holdout {target.name} {phantom.severity} {phantom.lesions.family} {phantom.volume.shape}")
        for r in range(look_per_annotation):
            target = out / "holdout-look" / f"look-{i:02d}-{r:02d}.npz"
            if not target.exists():
                annotation = annotation or load_annotation(path)
                severity = "severe" if r % 2 else "non-severe"
                phantom = make_anatomy_phantom(annotation, LOOK_SEED + 10 * j + r, severity=severity, family=HELD_OUT_FAMILY)
                _save_native(target, phantom)
                log(f"look {target.name} {phantom.severity} score {phantom.ct_severity_score} {phantom.volume.shape}")


def load_native(path: Path) -> dict:
    """A held-out case: ``volume``, ``lobe_map``, ``severe``, ``score``, ``involvement`` ..."""
    from m2unet.labels import to_lobe_map

    with np.load(path) as d:
        volume = Volume(hu=d["hu"], spacing=tuple(d["spacing"]), origin=tuple(d["origin"]), direction=tuple(d["direction"]))
        return {
            "name": path.stem, "volume": volume, "lobe_map": to_lobe_map(d["class_map"]), "severe": bool(d["severe"]),
            "score": int(d["score"]), "involvement": d["involvement"].tolist(), "family": str(d["family"]),
            "annotation": str(d["annotation"]), "thickness": float(d["thickness"]),
        }


def native_cases(folder: Path) -> Iterator[dict]:
    for path in sorted(folder.glob("*.npz")):
        if not path.name.endswith(".tmp.npz"):
            yield load_native(path)


def cache_paths(out: Path) -> list[Path]:
    return sorted((out / "cache").glob("anatomy-*.npz"))


def new_cases_loader(out: Path) -> Callable[[set[str]], list]:
    """A function that loads the cached training cases not yet in ``seen`` (names)."""
    from train.prepared import load_prepared

    def load(seen: set[str]) -> list:
        fresh = []
        for path in cache_paths(out):
            if path.stem in seen or path.name.endswith(".tmp.npz"):
                continue
            try:
                fresh.append(load_prepared(path))
            except (OSError, ValueError, KeyError):
                continue  # still being written
            seen.add(path.stem)
        return fresh

    return load
