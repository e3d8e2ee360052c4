"""Training the classification sub-network alone on a frozen encoder's features (a CPU shortcut).

Batch norm makes the joint recipe slow to teach the classifier on a CPU budget: with one bag per
step, every batch-norm layer normalises over the patches of one case, which removes exactly the
case-level shift (diffuse ground-glass everywhere) that tells severe from non-severe. With the
encoder frozen, its encoding-block-5 outputs of many bags can be computed once (forward only) and
the small classification sub-network (embedding-level MIL, image-level MIL, classifier) trained on
batches of many bags of both labels, so its batch norm sees several cases at once. The segmentation
sub-network is untouched. Bags are drawn as the predictor draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from m2unet.model import M2UNet
from m2unet.preprocessing import PreprocessingConfig, sample_bag
from train.prepared import PreparedCase


@dataclass
class BagFeatures:
    """``embeddings`` float16 ``[N, n, 512, h, w]`` (encoding block 5 of each bag's patches),
    ``severe`` ``[N]`` and the case index of each bag."""

    embeddings: torch.Tensor
    severe: torch.Tensor
    case_index: torch.Tensor


@torch.no_grad()
def encoder_features(
    model: M2UNet,
    cases: list[PreparedCase],
    config: PreprocessingConfig,
    bags_per_case: int,
    bag_size: int,
    seed: int = 0,
) -> BagFeatures:
    """Encode ``bags_per_case`` random bags of every case with the model in eval mode."""
    model.eval()
    rng = np.random.default_rng([seed, 17])
    embeddings, severe, index = [], [], []
    for i, case in enumerate(cases):
        for _ in range(bags_per_case):
            bag = sample_bag(case.image, case.box, config, rng, bag_size=bag_size)
            e5 = model.encode(torch.from_numpy(bag.patches))[-1]
            embeddings.append(e5.to(torch.float16))
            severe.append(int(case.severe))
            index.append(i)
    return BagFeatures(torch.stack(embeddings), torch.tensor(severe), torch.tensor(index))


def classify_embeddings(model: M2UNet, embeddings: torch.Tensor) -> torch.Tensor:
    """Severity logits ``[B, 2]`` of bags of encoder outputs ``[B, n, 512, h, w]``."""
    batch, bag_size = embeddings.shape[:2]
    return model.classify(embeddings.flatten(0, 1).float(), bag_size)


def fit_classifier_head(
    model: M2UNet,
    features: BagFeatures,
    *,
    steps: int = 400,
    bags_per_step: int = 8,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> list[float]:
    """Train the classification sub-network on ``features`` (balanced batches: half severe);
    returns the loss of each step. The encoder and decoder are left as they are."""
    head = [model.embedding_level_mil, model.image_level_mil, model.classifier]
    parameters = [p for module in head for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    positives = torch.nonzero(features.severe == 1).flatten()
    negatives = torch.nonzero(features.severe == 0).flatten()
    if not len(positives) or not len(negatives):
        raise ValueError("the classifier needs bags of both labels")
    for module in head:
        module.train()
    losses = []
    half = max(1, bags_per_step // 2)
    for step in range(steps):
        lr = learning_rate * (1 - step / steps) ** 0.75
        for group in optimizer.param_groups:
            group["lr"] = lr
        picks = torch.cat([
            positives[torch.randint(len(positives), (half,), generator=generator)],
            negatives[torch.randint(len(negatives), (bags_per_step - half,), generator=generator)],
        ])
        logits = classify_embeddings(model, features.embeddings[picks])
        loss = F.cross_entropy(logits, features.severe[picks])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
