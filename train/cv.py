"""Five-fold cross-validation with an inner split for selection (Section IV-C).

"The whole dataset is first randomly partitioned into five subsets (with approximately equal sample
size). We then iteratively treat each subset as the test set, while the remaining four subsets are
combined to construct the training set. An inner CV strategy is further applied on each training set
for parameter selection." Here the partition is stratified by label (so every fold holds severe
cases); in each fold a stratified ``validation_fraction`` of the training set is held out as the
inner split, which selects the epoch (``recipe.selection``) and the decision threshold (Youden's J
on its probabilities); the model is then scored once on the fold's test set. With several variants
(M2UNet, Cls. Only, Seg. Only: the paper's ablation) every variant sees the same folds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
import torch

from train.distributed import SINGLE, DistributedContext
from train.evaluate import CaseScore, score_cases, summarize
from train.fit import fit, preprocessing_config
from train.metrics import best_threshold
from train.prepared import PreparedCase
from train.recipe import Recipe

log = structlog.get_logger()


def stratified_folds(severe: list[bool], folds: int, seed: int) -> list[list[int]]:
    """Test indices of each fold: each class shuffled and dealt round-robin, so folds differ in
    size by at most one case per class."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if len(severe) < folds:
        raise ValueError(f"{len(severe)} cases cannot be split into {folds} folds")
    rng = np.random.default_rng([seed, 5])
    out: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for label in (True, False):
        members = np.array([i for i, s in enumerate(severe) if s == label], dtype=np.int64)
        rng.shuffle(members)
        for k, index in enumerate(members):
            out[(k + offset) % folds].append(int(index))
        offset += len(members)
    return [sorted(f) for f in out]


def inner_split(indices: list[int], severe: list[bool], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, selection) indices: a stratified ``fraction`` of ``indices`` for selection, at
    least one case of each class present (when the class has two or more cases)."""
    rng = np.random.default_rng([seed, 13])
    train, select = [], []
    for label in (True, False):
        members = np.array([i for i in indices if severe[i] == label], dtype=np.int64)
        rng.shuffle(members)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        select += [int(i) for i in members[:count]]
        train += [int(i) for i in members[count:]]
    return sorted(train), sorted(select)


@dataclass
class FoldResult:
    variant: str
    fold: int
    threshold: float
    selected_epoch: int | None
    metrics: dict[str, float]
    scores: list[CaseScore] = field(default_factory=list)


@dataclass
class CrossValidation:
    folds: list[list[int]]
    results: list[FoldResult]

    def by_variant(self) -> dict[str, list[FoldResult]]:
        out: dict[str, list[FoldResult]] = {}
        for result in self.results:
            out.setdefault(result.variant, []).append(result)
        return out


def cross_validate(
    recipe: Recipe,
    cases: list[PreparedCase],
    out_dir: str | Path,
    *,
    folds: int = 5,
    variants: tuple[str, ...] = ("m2unet",),
    device: torch.device | str = "cpu",
    world: DistributedContext = SINGLE,
    progress: bool = True,
) -> CrossValidation:
    """Run the cross-validation; each fold's run lives in ``out_dir/<variant>/fold<k>`` (resumable)."""
    out_dir = Path(out_dir)
    severe = [c.severe for c in cases]
    partition = stratified_folds(severe, folds, recipe.seed)
    inference = preprocessing_config(recipe, inference=True)

    def validate(model, selection, rc):
        return summarize(score_cases(model, selection, inference))

    results: list[FoldResult] = []
    for variant in variants:
        variant_recipe = recipe.replace(variant=variant)
        for k, test in enumerate(partition):
            rest = [i for i in range(len(cases)) if i not in set(test)]
            train, select = inner_split(rest, severe, recipe.validation_fraction, recipe.seed + k)
            run_dir = out_dir / variant / f"fold{k + 1}"
            fitted = fit(
                variant_recipe,
                [cases[i] for i in train],
                run_dir,
                validation=[cases[i] for i in select] or None,
                validate=validate,
                device=device,
                world=world,
                progress=progress,
            )
            if not world.is_main:
                continue
            threshold = recipe.decision_threshold
            selection_scores = score_cases(fitted.model, [cases[i] for i in select], inference) if select else []
            probabilities = [s.probability_severe for s in selection_scores if s.probability_severe is not None]
            if probabilities:
                threshold = best_threshold([s.severe for s in selection_scores], probabilities)
            test_scores = score_cases(fitted.model, [cases[i] for i in test], inference)
            metrics = summarize(test_scores, threshold)
            result = FoldResult(variant, k + 1, threshold, fitted.selected_epoch, metrics, test_scores)
            results.append(result)
            (run_dir / "fold.json").write_text(json.dumps(fold_record(result), indent=2) + "\n")
            log.info("fold_done", variant=variant, fold=k + 1, **{m: round(v, 4) for m, v in metrics.items() if "_" not in m})
    return CrossValidation(folds=partition, results=results)


def fold_record(result: FoldResult) -> dict:
    return {
        "variant": result.variant,
        "fold": result.fold,
        "threshold": result.threshold,
        "selected_epoch": result.selected_epoch,
        "metrics": {k: (None if v != v else v) for k, v in result.metrics.items()},
        "cases": [
            {"case": s.case_id, "severe": s.severe, "probability_severe": s.probability_severe, "segmentation": s.segmentation}
            for s in result.scores
        ],
    }
