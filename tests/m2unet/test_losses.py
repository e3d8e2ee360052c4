import math

import pytest
import torch

from m2unet.losses import LAMBDA, dice_loss, m2unet_loss, mil_loss, segmentation_loss
from m2unet.model import M2UNet, M2UNetOutput


def test_lambda_is_the_papers():
    assert LAMBDA == 0.01


def test_mil_loss_hand_computed():
    # bag 1: logits (0, 0) -> p(severe) = 1/2; bag 2: logits (0, ln 3) -> p(severe) = 3/4
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    loss = mil_loss(logits, torch.tensor([1, 1]))
    assert loss.item() == pytest.approx((math.log(2) - math.log(0.75)) / 2, abs=1e-6)
    # label non-severe for bag 2: -ln(1/4)
    assert mil_loss(logits[1:], torch.tensor([0])).item() == pytest.approx(math.log(4), abs=1e-6)


def test_mil_loss_refuses_bad_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        mil_loss(torch.zeros(1, 2), torch.tensor([2]))
    with pytest.raises(ValueError, match="labels for"):
        mil_loss(torch.zeros(2, 2), torch.tensor([1]))


def test_segmentation_loss_hand_computed():
    # one patch of 1 x 2 pixels, 2 classes, uniform prediction p = 1/2 everywhere, labels (0, 1):
    # cross-entropy ln 2; per class Dice 2 * 0.5 / (1 + 1) = 0.5; loss ln 2 + (1 - 0.5)
    logits = torch.zeros(1, 2, 1, 2)
    masks = torch.tensor([[[0, 1]]])
    assert segmentation_loss(logits, masks).item() == pytest.approx(math.log(2) + 0.5, abs=1e-5)


def test_dice_ignores_classes_absent_from_ground_truth():
    # labels (0, 0): class 0 Dice = 2 * 1 / (1 + 2) = 2/3; class 1 is absent and not averaged
    logits = torch.zeros(1, 2, 1, 2)
    masks = torch.tensor([[[0, 0]]])
    assert dice_loss(logits, masks).item() == pytest.approx(1 / 3, abs=1e-5)
    assert segmentation_loss(logits, masks).item() == pytest.approx(math.log(2) + 1 / 3, abs=1e-5)


def test_perfect_segmentation_has_zero_loss():
    masks = torch.tensor([[[0, 1], [2, 1]]])
    logits = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 50
    assert segmentation_loss(logits, masks).item() == pytest.approx(0, abs=1e-5)


def test_segmentation_loss_refuses_bad_masks():
    with pytest.raises(ValueError, match="do not fit"):
        segmentation_loss(torch.zeros(1, 7, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0\.\.6"):
        segmentation_loss(torch.zeros(1, 7, 4, 4), torch.full((1, 4, 4), 7))


def _output(batch=2, n=1, requires_grad=True):
    torch.manual_seed(0)
    sev = torch.randn(batch, 2, requires_grad=requires_grad)
    seg = torch.randn(batch, n, 3, 2, 2, requires_grad=requires_grad)
    return M2UNetOutput(severity_logits=sev, segmentation_logits=seg)


def test_total_is_lambda_mil_plus_seg_over_annotated_cases_only():
    out = _output()
    severity = torch.tensor([0, 1])
    masks = torch.tensor([[[[0, 1], [2, 2]]], [[[1, 1], [1, 1]]]])
    losses = m2unet_loss(out, severity, masks, has_mask=torch.tensor([True, False]))
    expected_seg = segmentation_loss(out.segmentation_logits[0], masks[0])
    assert losses.segmentation.item() == pytest.approx(expected_seg.item(), abs=1e-6)
    assert losses.mil.item() == pytest.approx(mil_loss(out.severity_logits, severity).item(), abs=1e-6)
    assert losses.total.item() == pytest.approx(0.01 * losses.mil.item() + expected_seg.item(), abs=1e-6)
    losses.total.backward()
    assert torch.all(out.segmentation_logits.grad[1] == 0)  # the unannotated case adds nothing
    assert torch.any(out.segmentation_logits.grad[0] != 0)


@pytest.mark.parametrize("masks", [None, torch.zeros(2, 1, 2, 2, dtype=torch.long)])
def test_batch_without_any_mask_is_lambda_mil(masks):
    out = _output()
    out.segmentation_logits.data[0, 0, 0, 0, 0] = float("inf")  # must not turn into NaN
    losses = m2unet_loss(out, torch.tensor([1, 0]), masks, has_mask=torch.tensor([False, False]))
    assert losses.segmentation.item() == 0.0
    assert torch.isfinite(losses.total)
    assert losses.total.item() == pytest.approx(0.01 * losses.mil.item(), abs=1e-7)
    losses.total.backward()
    assert torch.isfinite(out.severity_logits.grad).all()


def test_ablation_variants_use_their_own_loss():
    sev_only = M2UNetOutput(severity_logits=torch.zeros(1, 2), segmentation_logits=None)
    losses = m2unet_loss(sev_only, torch.tensor([1]))
    assert losses.segmentation is None and losses.total.item() == pytest.approx(math.log(2))
    seg_only = M2UNetOutput(severity_logits=None, segmentation_logits=torch.zeros(1, 1, 2, 1, 2, requires_grad=True))
    losses = m2unet_loss(seg_only, None, torch.tensor([[[[0, 1]]]]))
    assert losses.mil is None and losses.total.item() == pytest.approx(math.log(2) + 0.5, abs=1e-5)
    empty = m2unet_loss(seg_only, None, None)
    assert empty.total.item() == 0.0
    empty.total.backward()  # no error: the zero is on the graph


def test_missing_labels_are_refused():
    with pytest.raises(ValueError, match="severity labels are required"):
        m2unet_loss(_output(), None)
    with pytest.raises(ValueError, match="masks is None"):
        m2unet_loss(_output(), torch.tensor([0, 1]), None, has_mask=torch.tensor([True, False]))


def test_gradients_of_the_full_loss_reach_every_block():
    model = M2UNet().train()
    torch.manual_seed(1)
    bags = torch.rand(2, 2, 1, 32, 32) * 255
    masks = torch.randint(0, 7, (2, 2, 32, 32))
    losses = m2unet_loss(model(bags), torch.tensor([0, 1]), masks, torch.tensor([True, False]))
    losses.total.backward()
    for name in ("embedding_level_mil.gcp.concepts", "image_level_mil.gcp.concepts", "classifier.weight",
                 "decoding_block1.weight", "encoding_block1.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@pytest.mark.parametrize("has_mask", [[True, True], [True, False]])
def test_loss_on_a_device_reads_nothing_back(has_mask):
    """Tensors on the meta device hold no values: any read of one (a label check, a boolean index)
    raises, so the loss on a device costs no host sync per step; has_mask stays on the host."""
    out = M2UNetOutput(severity_logits=torch.randn(2, 2, device="meta"),
                       segmentation_logits=torch.randn(2, 3, 7, 4, 4, device="meta"))
    masks = torch.zeros(2, 3, 4, 4, dtype=torch.long, device="meta")
    losses = m2unet_loss(out, torch.zeros(2, dtype=torch.long, device="meta"), masks, torch.tensor(has_mask))
    assert losses.total.device.type == "meta" and losses.total.shape == ()


def test_dice_averages_over_present_classes_without_indexing():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = 50.0  # confident and right on both pixels
    masks = torch.tensor([[[0, 1]]])
    assert dice_loss(logits, masks).item() == pytest.approx(0.0, abs=1e-5)  # class 2 absent: not counted
