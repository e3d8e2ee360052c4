"""The classifier-head stage: only the classification sub-network learns, on frozen encoder features."""

import torch

from m2unet.model import M2UNet
from train.fit import fit, preprocessing_config
from train.head import encoder_features, fit_classifier_head
from train.recipe import SMOKE


def test_head_training_changes_only_the_classifier(tiny):
    torch.manual_seed(0)
    model = M2UNet()
    config = preprocessing_config(SMOKE, inference=True)
    features = encoder_features(model, tiny, config, bags_per_case=2, bag_size=3)
    assert features.embeddings.shape[:2] == (8, 3) and features.embeddings.dtype == torch.float16
    assert features.severe.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]  # tiny cases alternate non-severe, severe
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = fit_classifier_head(model, features, steps=5, bags_per_step=4)
    assert len(losses) == 5
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"embedding_level_mil", "image_level_mil", "classifier"}
    assert not model.training


def test_fit_can_start_from_earlier_weights(tmp_path, tiny):
    first = fit(SMOKE, tiny, tmp_path / "a", progress=False)
    recipe = SMOKE.replace(init_from=str(tmp_path / "a"), learning_rate=1e-12, momentum=0.0, weight_decay=0.0)
    second = fit(recipe, tiny, tmp_path / "b", progress=False)
    a, b = first.model.state_dict(), second.model.state_dict()
    weight = "encoding_block1.0.weight"
    assert torch.allclose(a[weight], b[weight], atol=1e-6)  # a vanishing step from the same start
