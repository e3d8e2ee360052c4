import math

import pytest
import torch

from m2unet.gcp import GlobalContrastPooling
from m2unet.model import M2UNet


def test_gcp_against_hand_computation():
    gcp = GlobalContrastPooling(in_features=2, num_concepts=2)
    with torch.no_grad():
        gcp.concepts.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    # one bag of three instances
    bag = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])
    # cosine similarities: concept (1,1): 1/sqrt2, 1/sqrt2, -1/sqrt2 -> max 1/sqrt2
    #                      concept (1,0): 1, 0, -1                  -> max 1
    sims = gcp.similarity(bag)
    expected_sims = torch.tensor([[[1 / math.sqrt(2), 1.0], [1 / math.sqrt(2), 0.0], [-1 / math.sqrt(2), -1.0]]])
    torch.testing.assert_close(sims, expected_sims)
    torch.testing.assert_close(gcp(bag), torch.tensor([[1 / math.sqrt(2), 1.0]]))


def test_gcp_is_scale_invariant_and_bagwise():
    torch.manual_seed(0)
    gcp = GlobalContrastPooling(in_features=8, num_concepts=3)
    bags = torch.randn(2, 5, 8)
    out = gcp(bags)
    assert out.shape == (2, 3)
    torch.testing.assert_close(gcp(bags * 7.5), out)  # cosine: independent of feature scale
    torch.testing.assert_close(gcp(bags[1:]), out[1:])  # each bag pooled on its own
    torch.testing.assert_close(gcp(bags[:, torch.randperm(5)]), out)  # order of instances irrelevant
    assert torch.all(out <= 1 + 1e-6) and torch.all(out >= -1 - 1e-6)


def test_gradients_reach_the_concepts():
    torch.manual_seed(0)
    gcp = GlobalContrastPooling(in_features=4, num_concepts=3)
    bags = torch.randn(2, 6, 4, requires_grad=True)
    gcp(bags).sum().backward()
    assert gcp.concepts.grad is not None and torch.all(gcp.concepts.grad.abs().sum(1) > 0)
    assert bags.grad.abs().sum() > 0


def test_gradients_reach_the_concepts_through_m2unet():
    model = M2UNet("cls_only").train()
    torch.manual_seed(0)
    out = model(torch.rand(1, 3, 1, 32, 32) * 255)
    torch.nn.functional.cross_entropy(out.severity_logits, torch.tensor([1])).backward()
    for mil in (model.embedding_level_mil, model.image_level_mil):
        grad = mil.gcp.concepts.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gcp_refuses_wrong_shapes():
    gcp = GlobalContrastPooling(4, 2)
    with pytest.raises(ValueError, match="instances must be"):
        gcp(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="positive"):
        GlobalContrastPooling(0, 2)
