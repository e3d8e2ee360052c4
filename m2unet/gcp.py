"""Global contrast pooling (GCP), Section III-D, Eq. (1)-(2).

A bag of instance features is summarised by its relation to ``p`` learned concepts: feature ``m``
of the bag is the largest cosine similarity between concept ``w_m`` and any instance of the bag.
The regulariser R(w_m) of Eq. (2) is the optimiser's weight decay.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GlobalContrastPooling(nn.Module):
    """Map bags ``[B, n, d]`` to bag features ``[B, p]`` (Eq. 1-2)."""

    def __init__(self, in_features: int, num_concepts: int, eps: float = 1e-6) -> None:
        super().__init__()
        if in_features < 1 or num_concepts < 1:
            raise ValueError(
                f"in_features and num_concepts must be positive, got {in_features}, {num_concepts}"
            )
        self.in_features = in_features
        self.num_concepts = num_concepts
        self.eps = eps
        self.concepts = nn.Parameter(torch.empty(num_concepts, in_features))
        nn.init.normal_(self.concepts, std=1.0 / in_features**0.5)

    def similarity(self, instances: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every instance with every concept: ``[B, n, p]``."""
        if instances.ndim != 3 or instances.shape[-1] != self.in_features:
            raise ValueError(
                f"instances must be [bags, n, {self.in_features}], got {tuple(instances.shape)}"
            )
        x = F.normalize(instances, dim=-1, eps=self.eps)
        w = F.normalize(self.concepts, dim=-1, eps=self.eps)
        return torch.matmul(x, w.t().to(x.dtype))

    def forward(self, instances: torch.Tensor) -> torch.Tensor:
        return self.similarity(instances).amax(dim=1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_concepts={self.num_concepts}"
